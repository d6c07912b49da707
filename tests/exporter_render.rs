//! The endpoint's renders: off the runtime's workers, and in the protobuf
//! format with native histograms for the scrapers that ask for it.
#![cfg(feature = "prometheus")]

use std::net::SocketAddr;
use std::time::Duration;

use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tower::{Layer, Service, ServiceExt};
use tower_breaker::exporter::{self, MetricsEndpoint, MetricsHandle, RecorderBuilder};
use tower_breaker::{CircuitBreakerLayer, MetricsLevel};

/// `n` breakers at Full that saw successes and failures, in `recorder`.
fn breakers(recorder: &exporter::BreakerRecorder, prefix: &str, n: usize) {
    metrics::with_local_recorder(recorder, || {
        for i in 0..n {
            let layer = CircuitBreakerLayer::builder()
                .name(format!("{prefix}-{i}"))
                .metrics_level(MetricsLevel::Full)
                .build()
                .unwrap();
            let mut svc = layer.layer(tower::service_fn(|fail: bool| async move {
                if fail {
                    Err(std::io::Error::other("down"))
                } else {
                    Ok(())
                }
            }));
            for fail in [false, false, true, false] {
                let ready = svc.ready().now_or_never().unwrap().unwrap();
                let _ = ready.call(fail).now_or_never().unwrap();
            }
        }
    });
}

/// Sends a GET and reads the whole answer: (head, body).
async fn get(addr: SocketAddr, path: &str, accept: Option<&str>) -> (String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(accept) = accept {
        head.push_str(&format!("Accept: {accept}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.expect("read");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("complete head");
    let head = String::from_utf8(raw[..split].to_vec()).unwrap();
    (head, raw[split + 4..].to_vec())
}

/// Renders run on the blocking pool: a timer on the same two workers keeps
/// its beat while 16 scrapes of 1,000 breakers each render (sharing is off,
/// so every scrape renders), and while 16 requests hit a route whose
/// handler takes 50 ms of CPU (on the workers, that alone would hold the
/// timer back by 400 ms).
#[test]
fn renders_stay_off_the_runtime() {
    let (recorder, handle) = exporter::recorder();
    breakers(&recorder, "offload", 1_000);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let endpoint = MetricsEndpoint::builder(handle)
            .bind("127.0.0.1:0".parse().unwrap())
            .render_sharing(Duration::ZERO)
            .max_connections_per_ip(32)
            .max_connections(64)
            .route(
                "/slow",
                "text/plain",
                std::sync::Arc::new(|| {
                    let start = std::time::Instant::now();
                    let mut spins = 0u64;
                    while start.elapsed() < Duration::from_millis(50) {
                        spins = std::hint::black_box(spins + 1);
                    }
                    format!("{spins}")
                }),
            )
            .build()
            .unwrap()
            .serve()
            .await
            .unwrap();
        let addr = endpoint.local_addr();
        let (done, mut finished) = tokio::sync::watch::channel(false);
        let timer = tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(1));
            let mut worst = Duration::ZERO;
            loop {
                tokio::select! {
                    due = ticks.tick() => worst = worst.max(due.elapsed()),
                    _ = finished.changed() => return worst,
                }
            }
        });
        let scrapes: Vec<_> = (0..16)
            .map(|_| tokio::spawn(async move { get(addr, "/metrics", None).await }))
            .collect();
        let slow: Vec<_> = (0..16)
            .map(|_| tokio::spawn(async move { get(addr, "/slow", None).await }))
            .collect();
        for scrape in scrapes {
            let (head, body) = scrape.await.unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
            let text = String::from_utf8(body).unwrap();
            assert!(text.contains("service=\"offload-999\""));
        }
        for request in slow {
            let (head, _) = request.await.unwrap();
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
        done.send(true).unwrap();
        let worst = timer.await.unwrap();
        assert!(
            worst <= Duration::from_millis(100),
            "a 1 ms timer was late by {worst:?} while scrapes rendered"
        );
        endpoint.shutdown().await;
    });
}

/// A minimal protobuf reader: the fields of one message.
fn fields(mut b: &[u8]) -> Vec<(u32, Vec<u8>)> {
    fn varint(b: &mut &[u8]) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        loop {
            let byte = b[0];
            *b = &b[1..];
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let key = varint(&mut b);
        let value = match key & 7 {
            0 => varint(&mut b).to_le_bytes().to_vec(),
            1 => {
                let v = b[..8].to_vec();
                b = &b[8..];
                v
            }
            2 => {
                let len = varint(&mut b) as usize;
                let v = b[..len].to_vec();
                b = &b[len..];
                v
            }
            wire => panic!("wire type {wire}"),
        };
        out.push(((key >> 3) as u32, value));
    }
    out
}

/// The length-delimited messages of a protobuf exposition.
fn families(mut body: &[u8]) -> Vec<Vec<(u32, Vec<u8>)>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let (mut len, mut shift, mut used) = (0usize, 0, 0);
        loop {
            let byte = body[used];
            used += 1;
            len |= usize::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
            shift += 7;
        }
        out.push(fields(&body[used..used + len]));
        body = &body[used + len..];
    }
    out
}

const PROTOBUF_ACCEPT: &str = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3";

#[tokio::test]
async fn native_histograms_for_scrapers_that_ask_for_protobuf() {
    let (recorder, handle): (_, MetricsHandle) = RecorderBuilder::new()
        .native_histograms(true)
        .build()
        .unwrap();
    breakers(&recorder, "native", 3);
    metrics::with_local_recorder(&recorder, || {
        metrics::counter!("app_other_total", "route" => "/x").increment(2);
    });
    assert!(handle.native_histograms());
    let endpoint = MetricsEndpoint::builder(handle)
        .bind("127.0.0.1:0".parse().unwrap())
        .build()
        .unwrap()
        .serve()
        .await
        .unwrap();
    let addr = endpoint.local_addr();

    let (head, body) = get(addr, "/metrics", Some(PROTOBUF_ACCEPT)).await;
    assert!(
        head.to_ascii_lowercase().contains(
            "content-type: application/vnd.google.protobuf; proto=io.prometheus.client.metricfamily; encoding=delimited"
        ),
        "{head}"
    );
    let families = families(&body);
    let named = |name: &str| {
        families
            .iter()
            .find(|f| f[0] == (1, name.as_bytes().to_vec()))
            .unwrap_or_else(|| panic!("no family {name}"))
    };
    // The application's own metric is there too, re-encoded.
    assert_eq!(named("app_other_total")[1].0, 3);
    let duration = named("circuit_breaker_request_duration_seconds");
    let kind = duration.iter().find(|(f, _)| *f == 3).unwrap();
    assert_eq!(kind.1[0], 4, "HISTOGRAM");
    let metrics: Vec<_> = duration.iter().filter(|(f, _)| *f == 4).collect();
    assert!(!metrics.is_empty());
    for (_, metric) in metrics {
        let metric = fields(metric);
        let histogram = fields(&metric.iter().find(|(f, _)| *f == 7).unwrap().1);
        let field = |n: u32| histogram.iter().find(|(f, _)| *f == n);
        // A native series: schema, zero threshold, positive spans and deltas.
        assert!(field(5).is_some(), "schema");
        assert!(field(6).is_some(), "zero threshold");
        let count = u64::from_le_bytes(field(1).unwrap().1.clone().try_into().unwrap());
        if count > 0 {
            assert!(field(12).is_some() && field(13).is_some(), "spans, deltas");
        }
    }

    // Everyone else still gets text with classic buckets.
    let (head, body) = get(addr, "/metrics", None).await;
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let text = String::from_utf8(body).unwrap();
    assert!(text.contains("circuit_breaker_request_duration_seconds_bucket{service=\"native-0\",status=\"success\",le=\"0.0005\"}"));
    endpoint.shutdown().await;
}
