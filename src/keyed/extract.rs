//! Key extractors: how a request names the upstream its breaker stands for.

use std::borrow::Cow;
use std::fmt;
#[cfg(feature = "http")]
use std::sync::Arc;

/// Finds the key of a request: the upstream its breaker stands for.
///
/// The key may borrow from the request or from the extractor, so the built-in
/// extractors allocate nothing for a key that is already a clean label.
/// `None` sends the request to the fallback key
/// ([`KeyedBuilder::fallback_key`](super::KeyedBuilder::fallback_key)).
///
/// ```
/// use std::borrow::Cow;
/// use tower_breaker::KeyExtractor;
///
/// /// Keys `"shard-N"` requests by their shard.
/// struct ByShard;
///
/// impl KeyExtractor<(u8, String)> for ByShard {
///     fn key<'a>(&'a self, req: &'a (u8, String)) -> Option<Cow<'a, str>> {
///         Some(Cow::Owned(format!("shard-{}", req.0)))
///     }
/// }
/// assert_eq!(ByShard.key(&(3, "get".into())).as_deref(), Some("shard-3"));
/// ```
pub trait KeyExtractor<Req> {
    /// The key of `req`, or `None` for the fallback key.
    fn key<'a>(&'a self, req: &'a Req) -> Option<Cow<'a, str>>;
}

/// Keys HTTP requests by authority: the URI's (client side, absolute URIs),
/// else the `Host` header (server side). The default for a mesh.
///
/// The key is lowercased and any `user:password@` part is dropped, so
/// credentials never reach a label; the port is kept.
///
/// ```
/// use tower_breaker::{keyed::ByAuthority, KeyExtractor};
///
/// let req = http::Request::get("http://user:pw@Orders.svc:8080/list").body(()).unwrap();
/// assert_eq!(ByAuthority.key(&req).as_deref(), Some("orders.svc:8080"));
/// let req = http::Request::get("/list").header("host", "billing.svc").body(()).unwrap();
/// assert_eq!(ByAuthority.key(&req).as_deref(), Some("billing.svc"));
/// ```
#[cfg(feature = "http")]
#[derive(Clone, Copy, Debug, Default)]
pub struct ByAuthority;

#[cfg(feature = "http")]
impl<B> KeyExtractor<http::Request<B>> for ByAuthority {
    fn key<'a>(&'a self, req: &'a http::Request<B>) -> Option<Cow<'a, str>> {
        let raw = match req.uri().authority() {
            Some(authority) => authority.as_str(),
            None => req.headers().get(http::header::HOST)?.to_str().ok()?,
        };
        let host = raw.rsplit_once('@').map_or(raw, |(_, host)| host).trim();
        if host.is_empty() {
            None
        } else if host.bytes().any(|b| b.is_ascii_uppercase()) {
            Some(Cow::Owned(host.to_ascii_lowercase()))
        } else {
            Some(Cow::Borrowed(host))
        }
    }
}

/// Keys HTTP requests by the value of a header (for example one a router
/// sets to name the upstream). A missing, empty or non-ASCII value gives no
/// key.
///
/// ```
/// use http::HeaderName;
/// use tower_breaker::{keyed::ByHeader, KeyExtractor};
///
/// let by = ByHeader::new(HeaderName::from_static("x-upstream"));
/// let req = http::Request::get("/").header("x-upstream", "ledger").body(()).unwrap();
/// assert_eq!(by.key(&req).as_deref(), Some("ledger"));
/// ```
#[cfg(feature = "http")]
#[derive(Clone, Debug)]
pub struct ByHeader {
    name: http::HeaderName,
}

#[cfg(feature = "http")]
impl ByHeader {
    /// Keys by the value of header `name`.
    pub fn new(name: http::HeaderName) -> Self {
        ByHeader { name }
    }
}

#[cfg(feature = "http")]
impl<B> KeyExtractor<http::Request<B>> for ByHeader {
    fn key<'a>(&'a self, req: &'a http::Request<B>) -> Option<Cow<'a, str>> {
        let value = req.headers().get(&self.name)?.to_str().ok()?.trim();
        (!value.is_empty()).then_some(Cow::Borrowed(value))
    }
}

/// Keys HTTP requests by a prefix of their path: the first `n` segments, or
/// the longest of a list of known prefixes.
///
/// For gRPC, `ByPath::segments(1)` keys by service (`/pkg.Service`).
/// Segments of a path are chosen by the client: prefer a list of prefixes
/// when paths carry ids, or rely on `max_keys`.
///
/// ```
/// use tower_breaker::{keyed::ByPath, KeyExtractor};
///
/// let req = http::Request::get("/api/users/42?x=1").body(()).unwrap();
/// assert_eq!(ByPath::segments(2).key(&req).as_deref(), Some("/api/users"));
/// let routes = ByPath::prefixes(["/api", "/api/users", "/static"]);
/// assert_eq!(routes.key(&req).as_deref(), Some("/api/users"));
/// let other = http::Request::get("/apis").body(()).unwrap();
/// assert_eq!(routes.key(&other), None); // no prefix matches on a segment boundary
/// ```
#[cfg(feature = "http")]
#[derive(Clone, Debug)]
pub struct ByPath {
    rule: PathRule,
}

#[cfg(feature = "http")]
#[derive(Clone, Debug)]
enum PathRule {
    Segments(usize),
    /// Longest first.
    Prefixes(Arc<[Box<str>]>),
}

#[cfg(feature = "http")]
impl ByPath {
    /// Keys by the first `n` path segments (at least 1): with 2,
    /// `/api/users/42` is keyed `/api/users`.
    pub fn segments(n: usize) -> Self {
        ByPath {
            rule: PathRule::Segments(n.max(1)),
        }
    }

    /// Keys by the longest of `prefixes` the path starts with, on a segment
    /// boundary (`/api` matches `/api` and `/api/x`, not `/apis`). A path
    /// matching none gives no key.
    pub fn prefixes<I>(prefixes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        let mut list: Vec<Box<str>> = prefixes
            .into_iter()
            .map(|p| p.into().into_boxed_str())
            .filter(|p| !p.is_empty())
            .collect();
        list.sort_by_key(|p| std::cmp::Reverse(p.len()));
        ByPath {
            rule: PathRule::Prefixes(list.into()),
        }
    }
}

#[cfg(feature = "http")]
impl<B> KeyExtractor<http::Request<B>> for ByPath {
    fn key<'a>(&'a self, req: &'a http::Request<B>) -> Option<Cow<'a, str>> {
        let path = req.uri().path();
        match &self.rule {
            PathRule::Segments(n) => {
                let end = path
                    .match_indices('/')
                    .map(|(i, _)| i)
                    .filter(|&i| i > 0)
                    .nth(n - 1)
                    .unwrap_or(path.len());
                Some(Cow::Borrowed(&path[..end]))
            }
            PathRule::Prefixes(list) => list
                .iter()
                .find(|p| {
                    path.strip_prefix(&***p).is_some_and(|rest| {
                        rest.is_empty() || rest.starts_with('/') || p.ends_with('/')
                    })
                })
                .map(|p| Cow::Borrowed(&**p)),
        }
    }
}

/// Keys requests with a closure returning `Option<T>`, where `T` is a
/// `String` or a `&'static str`. Made by [`key_fn`].
#[derive(Clone, Copy)]
pub struct KeyFn<F> {
    f: F,
}

/// Keys requests with a closure: `Some(key)`, or `None` for the fallback key.
/// A closure returning a `String` allocates it on every call; return
/// `&'static str` from a fixed set where you can.
///
/// ```
/// use tower_breaker::{keyed::key_fn, KeyExtractor};
///
/// let by_tenant = key_fn(|req: &(u32, &str)| Some(if req.0 < 100 { "small" } else { "large" }));
/// assert_eq!(by_tenant.key(&(7, "get")).as_deref(), Some("small"));
/// ```
pub fn key_fn<F>(f: F) -> KeyFn<F> {
    KeyFn { f }
}

impl<F> fmt::Debug for KeyFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFn").finish_non_exhaustive()
    }
}

impl<Req, F, T> KeyExtractor<Req> for KeyFn<F>
where
    F: Fn(&Req) -> Option<T>,
    T: Into<Cow<'static, str>>,
{
    fn key<'a>(&'a self, req: &'a Req) -> Option<Cow<'a, str>> {
        (self.f)(req).map(Into::into)
    }
}
