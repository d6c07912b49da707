//! The exporter's error type.

use std::fmt;
use std::io;
use std::net::SocketAddr;

/// Error from installing the recorder or building / starting a
/// [`MetricsEndpoint`](super::MetricsEndpoint). Its message names the
/// setting at fault.
#[derive(Debug)]
pub struct ExporterError {
    kind: ErrorKind,
}

#[derive(Debug)]
pub(super) enum ErrorKind {
    RecorderInstalled,
    EmptyToken,
    InvalidToken,
    ShortToken { min: usize },
    InvalidPath { field: &'static str, value: String },
    DuplicatePath(String),
    InvalidContentType { path: String },
    InvalidNetwork { value: String, reason: &'static str },
    InsecurePublicBind(SocketAddr),
    CatchAllOnly(SocketAddr),
    Setting { field: &'static str, reason: String },
    Scope { token_index: usize, reason: String },
    DuplicateToken,
    Bind { addr: SocketAddr, source: io::Error },
}

impl ExporterError {
    pub(super) fn new(kind: ErrorKind) -> Self {
        Self { kind }
    }

    pub(super) fn setting(field: &'static str, reason: impl Into<String>) -> Self {
        Self::new(ErrorKind::Setting {
            field,
            reason: reason.into(),
        })
    }
}

impl fmt::Display for ExporterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::RecorderInstalled => {
                f.write_str("a global metrics recorder is already installed")
            }
            ErrorKind::EmptyToken => f.write_str("bearer_token must not be empty"),
            ErrorKind::InvalidToken => {
                f.write_str("bearer_token must be visible ascii without whitespace")
            }
            ErrorKind::ShortToken { min } => write!(
                f,
                "bearer_token must be at least {min} bytes: a short token can be guessed"
            ),
            ErrorKind::InvalidPath { field, value } => {
                write!(
                    f,
                    "{field} must start with '/' and contain no whitespace, '?' or '#': {value:?}"
                )
            }
            ErrorKind::DuplicatePath(path) => write!(f, "route path {path:?} is already served"),
            ErrorKind::InvalidContentType { path } => {
                write!(
                    f,
                    "route content_type for {path:?} is not a valid header value"
                )
            }
            ErrorKind::InvalidNetwork { value, reason } => {
                write!(f, "invalid allow_network {value:?}: {reason}")
            }
            ErrorKind::InsecurePublicBind(addr) => write!(
                f,
                "refusing to bind metrics endpoint to non-loopback address {addr} without a \
                 bearer_token or an allowlist: anyone who can reach it could read the metrics; \
                 set one, or call allow_insecure_public_bind() to opt in"
            ),
            ErrorKind::CatchAllOnly(addr) => write!(
                f,
                "refusing to bind metrics endpoint to non-loopback address {addr} guarded only \
                 by a catch-all allow_network (wider than an IPv4 /8 or an IPv6 /16), which \
                 admits nearly everyone: set a bearer_token, a narrower network, or call \
                 allow_insecure_public_bind() to opt in"
            ),
            ErrorKind::Setting { field, reason } => write!(f, "{field} {reason}"),
            ErrorKind::Scope {
                token_index,
                reason,
            } => write!(f, "viewer #{token_index} (counted from 1): {reason}"),
            ErrorKind::DuplicateToken => {
                f.write_str("viewer tokens must differ from each other and from bearer_token")
            }
            ErrorKind::Bind { addr, .. } => write!(f, "failed to bind metrics endpoint to {addr}"),
        }
    }
}

impl std::error::Error for ExporterError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ErrorKind::Bind { source, .. } => Some(source),
            _ => None,
        }
    }
}
