//! The breaker's metrics as DogStatsD lines, through metrics-exporter-dogstatsd.
//!
//! ```sh
//! cargo run -p tower-breaker-interop --example dogstatsd                  # prints what an agent would get
//! cargo run -p tower-breaker-interop --example dogstatsd 127.0.0.1:8125   # sends to your Datadog Agent
//! ```
//!
//! With no argument, a UDP socket on 127.0.0.1 stands in for the Datadog
//! Agent and the example prints the lines it receives, in order, each line
//! once. The exporter is the global `metrics` recorder and flushes every
//! 500 ms. A breaker named `inventory` trips on three failures and refuses a
//! call; a flush later it recovers (its open duration passes on a manual
//! clock). Expect the first flush to carry
//! `circuit_breaker_state:1.0|g|#service:inventory,state:open`,
//! `circuit_breaker_transitions_total:1|c|#service:inventory,from:closed,to:open,reason:consecutive_failures`
//! and `circuit_breaker_requests_total:2|c|#service:inventory,status:success`,
//! with the other series at 0, and the next ones the recovery:
//! `state:1.0` for `closed`, the transitions to half_open and closed, the
//! recovery time as a distribution (`|d`). Counters are sent as the increase
//! since the last flush (a counter that stops moving sends one more `0`,
//! then nothing until it moves); gauges at their value at each flush.

use std::collections::HashSet;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use metrics_exporter_dogstatsd::DogStatsDBuilder;
use tower::{service_fn, Layer, Service, ServiceExt};
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock};

const FLUSH: Duration = Duration::from_millis(500);

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), tower::BoxError> {
    // The agent: yours, or a local socket that prints what it gets.
    let (agent, local) = match std::env::args().nth(1) {
        Some(addr) => (addr, None),
        None => {
            let socket = UdpSocket::bind("127.0.0.1:0")?;
            (socket.local_addr()?.to_string(), Some(socket))
        }
    };
    DogStatsDBuilder::default()
        .with_remote_address(&agent)?
        .with_flush_interval(FLUSH)
        .with_telemetry(false)
        .install()?;

    let (clock, time) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("inventory")
        .clock(clock)
        .consecutive_failures(3)
        .half_open_permits(1)
        .open_duration(Backoff::fixed(Duration::from_secs(5)))
        .build()?;
    let mut svc = layer.layer(service_fn(|fail: bool| async move {
        if fail {
            Err(std::io::Error::other("inventory unavailable"))
        } else {
            Ok("in stock")
        }
    }));
    for fail in [false, false, true, true, true, false] {
        let result = svc.ready().await?.call(fail).await;
        println!("call(fail = {fail}) -> {result:?}");
    }
    // Let a flush go out while the breaker is open.
    std::thread::sleep(FLUSH + FLUSH / 2);
    time.advance(Duration::from_secs(5));
    println!("after 5 s: {:?}", svc.ready().await?.call(false).await);
    println!("state: {:?}", layer.handle().state());

    let Some(socket) = local else {
        // Give the exporter's thread two flushes before the process ends.
        std::thread::sleep(2 * FLUSH);
        println!("sent to {agent}");
        return Ok(());
    };
    // Reads until two flushes after the recovery have come in.
    println!("\nreceived on {agent}:");
    socket.set_read_timeout(Some(FLUSH))?;
    let until = Instant::now() + 3 * FLUSH;
    let mut buf = [0u8; 65_536];
    let mut printed = HashSet::new();
    while Instant::now() < until {
        if let Ok(n) = socket.recv(&mut buf) {
            for line in String::from_utf8_lossy(&buf[..n]).lines() {
                if printed.insert(line.to_owned()) {
                    println!("{line}");
                }
            }
        }
    }
    Ok(())
}
