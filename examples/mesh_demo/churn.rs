//! Upstream churn: a new upstream key every few seconds, as pods are
//! replaced. Each key gets its own breaker in a keyed layer (named after
//! the key, `service="pod-N"`), takes traffic until the next key comes,
//! then idles and is evicted; its series leave /metrics after the
//! recorder's series expiry.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use tokio::sync::watch;
use tower::ServiceExt;
use tower_breaker::keyed::ByHeader;

use crate::mesh::{self, HttpClient, X_UPSTREAM};

/// Requests per second to the current key.
const RATE: u64 = 10;

/// Runs until `stop`: every `every`, a new key `pod-N` for calls to the
/// healthy upstream at `upstream`.
pub(crate) async fn run(
    upstream: SocketAddr,
    client: HttpClient,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let keyed = mesh::breaker("churn")
        .keyed(ByHeader::new(X_UPSTREAM))
        .max_keys(64)
        .idle_timeout(every * 2)
        .build()?;
    let hop = mesh::hop(keyed, client);
    let mut ticks = tokio::time::interval(Duration::from_millis(1000 / RATE));
    let started = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stop.changed() => return Ok(()),
        }
        let pod = started.elapsed().as_millis() / every.as_millis().max(1);
        let request = Request::get(format!("http://{upstream}/churn"))
            .header(X_UPSTREAM, format!("pod-{pod}"))
            .body(Full::<Bytes>::default())?;
        let hop = hop.clone();
        tokio::spawn(async move {
            if let Ok(res) = hop.oneshot(request).await {
                let _ = res.into_body().collect().await;
            }
        });
    }
}
