//! A hyper-util client (`legacy::Client`) with a circuit breaker, against a
//! local flaky server.
//!
//! ```sh
//! cargo run --example hyper_client --all-features
//! ```
//!
//! The example starts a hyper server on 127.0.0.1 (a free port) that
//! answers `503` with `Retry-After: 1` to its first 6 requests and `200`
//! afterwards, then sends 40 requests through
//! `CircuitBreaker<Timeout<Client>>` with an `HttpClassifier`, 100 ms apart.
//! Expect: five `503` answers from the server, then the breaker opens
//! (5 consecutive failures) and calls are refused locally
//! (`rejected: circuit open`, the server is not reached) for the second the
//! server asked for (longer than the breaker's own 500 ms); then a probe goes
//! through, meets the server's last 503 and reopens the breaker; a second
//! later the next probe gets `200` and the breaker closes. It ends by printing
//! how many requests the server saw, far fewer than the client sent. Runs
//! about 4 seconds.

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tower::{ServiceBuilder, ServiceExt};
use tower_breaker::classify::HttpClassifier;
use tower_breaker::{Backoff, CircuitBreakerLayer, CircuitOpen};

/// How many requests the server fails before it is healthy.
const FAILING_REQUESTS: usize = 6;

/// Starts the flaky server on 127.0.0.1:0; returns its address and a
/// counter of the requests it answered.
async fn flaky_server() -> std::io::Result<(std::net::SocketAddr, Arc<AtomicUsize>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            let service = hyper::service::service_fn(move |_req: Request<_>| {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let response = if n < FAILING_REQUESTS {
                    Response::builder()
                        .status(StatusCode::SERVICE_UNAVAILABLE)
                        .header("retry-after", "1")
                        .body(Full::new(Bytes::from("overloaded")))
                } else {
                    Response::builder().body(Full::new(Bytes::from("ok")))
                };
                async move { Ok::<_, Infallible>(response.expect("a valid response")) }
            });
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((addr, seen))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tower::BoxError> {
    let (addr, seen) = flaky_server().await?;

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let breaker = CircuitBreakerLayer::builder()
        .name("flaky-http")
        .classifier(HttpClassifier::new()) // 5xx and 429 fail; Retry-After is honoured
        .consecutive_failures(5)
        .half_open_permits(1)
        .open_duration(Backoff::fixed(Duration::from_millis(500)))
        .build()?;
    let handle = breaker.handle();
    // The timeout sits inside the breaker, so a slow server counts as a
    // failure of kind `timeout`.
    let svc = ServiceBuilder::new()
        .layer(breaker)
        .timeout(Duration::from_secs(2))
        .service(client);

    for i in 1..=40 {
        let req = Request::get(format!("http://{addr}/"))
            .body(Full::default())
            .expect("a valid request");
        match svc.clone().oneshot(req).await {
            Ok(res) => {
                let status = res.status();
                let body = res.into_body().collect().await?.to_bytes();
                println!("{i:2}: {status} {body:?}   breaker {:?}", handle.state());
            }
            Err(e) if e.is::<CircuitOpen>() => {
                let open = e.downcast_ref::<CircuitOpen>().expect("checked");
                println!(
                    "{i:2}: rejected: circuit open (retry after {:?})",
                    open.retry_after()
                );
            }
            Err(e) => println!("{i:2}: error: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "server saw {} of 40 requests; breaker {:?}",
        seen.load(Ordering::SeqCst),
        handle.state()
    );
    Ok(())
}
