//! A small service mesh in one process, every hop behind a tower-breaker
//! circuit breaker, with Prometheus metrics and the dependency graph.
//!
//! ```sh
//! cargo run --example mesh_demo --all-features
//! cargo run --example mesh_demo --all-features -- --duration-secs 120 --phase-secs 15 --token s3cret-s3cret-s3cret
//! ```
//!
//! Everything listens on 127.0.0.1:
//!
//! - **metrics** on port 9464 (`--port`): `/metrics`, `/dependencies.json`,
//!   `/dependencies.dot`, behind a bearer token with `--token`;
//! - **gateway** on port 9465 (`--gateway-port`): `/orders` goes to a flaky
//!   upstream, `/catalog` to a healthy one, each through its own breaker
//!   (one `KeyedCircuitBreakerLayer` keyed by an `x-upstream` header;
//!   service `orders` and `catalog`, caller `gateway`);
//!   `/admin/faults` reads (GET) or sets (POST
//!   `?failure_rate=0.9&latency_ms=100`, or `?schedule=resume`) the faults;
//! - **a cascade** A -> B -> C: `frontend` calls `checkout` which calls the
//!   flaky `payments`, each call through a breaker (on free ports);
//! - **a concurrency limit**: a slow `inventory` upstream (20 to 150 ms)
//!   behind a breaker with `max_concurrent_calls(4)`, which bursts of 6
//!   calls every 2 s go past: the extra calls get a 503 with
//!   `x-envoy-overloaded: true`, counted in
//!   `rejections_total{service="inventory",state="capacity"}`;
//! - **a load generator**: 200 requests per second (`--rate`) spread over
//!   gateway/orders, gateway/catalog and frontend, stopping with the demo.
//!
//! The flaky upstreams (orders and payments) follow a schedule, each phase
//! 20 s (`--phase-secs`), repeating: **healthy** (1% errors), **failing**
//! (errors climb from 10% to 90%, then stay), **recovering** (errors fall
//! from 20% to 1%). Expect, in the log: early warnings while the failure
//! rate climbs; `circuit breaker opened` for `orders`, `payments` and then
//! `checkout` (frontend sees checkout's fast 503s); `catalog` never opens;
//! probes and `circuit breaker state changed ... to="closed"` while
//! recovering; a status line every 5 s. Runs until Ctrl-C, or
//! `--duration-secs N`. Point Prometheus at it with `deploy/prometheus.yml`
//! and import the Grafana dashboard in `deploy/grafana/` (see the README's
//! "Try it").

mod churn;
mod cli;
mod faults;
mod load;
mod mesh;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tower_breaker::dependency::DependencyGraph;
use tower_breaker::exporter::{self, MetricsEndpoint};

use crate::cli::{Args, USAGE};
use crate::faults::Faults;
use crate::load::{Target, Totals};

/// How often the demo logs a status line.
const STATUS_EVERY: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(e) => {
            eprintln!("mesh_demo: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if args.help {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    // Two workers are plenty for 200 requests per second.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh_demo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // Metrics first: the recorder must be there before the breakers.
    let recorder = exporter::RecorderBuilder::new()
        .native_histograms(args.native_histograms)
        .series_expiry(args.series_expiry);
    let mut endpoint = MetricsEndpoint::builder(recorder.install()?)
        .bind(SocketAddr::from(([127, 0, 0, 1], args.port)))
        .dependency_routes()
        .status_page();
    if let Some(token) = &args.token {
        endpoint = endpoint.bearer_token(token.clone());
    }
    for (token, scope) in &args.viewers {
        endpoint = endpoint.viewer(token.clone(), scope.clone());
    }
    let metrics = endpoint.build()?.serve().await?;
    let metrics_addr = metrics.local_addr();

    let client = mesh::client();
    let faults = Arc::new(Faults::new());

    // Upstreams: two flaky ones sharing the faults, one healthy.
    let orders = mesh::serve(0, mesh::flaky(faults.clone())).await?;
    let payments = mesh::serve(0, mesh::flaky(faults.clone())).await?;
    let catalog = mesh::serve(0, mesh::healthy()).await?;
    // The cascade: A (frontend) -> B (checkout) -> C (payments).
    let checkout = mesh::serve(
        0,
        mesh::proxy("checkout", "payments", payments, client.clone())?,
    )
    .await?;
    let frontend = mesh::serve(
        0,
        mesh::proxy("frontend", "checkout", checkout, client.clone())?,
    )
    .await?;
    // A slow upstream behind a breaker with a concurrency limit of 4, which
    // bursts of 6 calls every 2 s go past.
    let inventory = mesh::serve(0, mesh::slow()).await?;
    let inventory =
        mesh::serve(0, mesh::limited("inventory", inventory, client.clone(), 4)?).await?;
    // The gateway, with one breaker per upstream (a keyed layer).
    let gateway_router = mesh::gateway(
        &[("orders", orders), ("catalog", catalog)],
        client.clone(),
        faults.clone(),
        args.token.clone(),
    )?;
    let gateway = mesh::serve(args.gateway_port(), gateway_router).await?;

    print_banner(&args, metrics_addr, gateway, frontend);

    let started = Instant::now();
    let schedule = tokio::spawn({
        let faults = faults.clone();
        async move { faults::run_schedule(&faults, started, args.phase).await }
    });
    let targets: Arc<[Target]> = Arc::from(vec![
        Target::new("orders", format!("http://{gateway}/orders")),
        Target::new("catalog", format!("http://{gateway}/catalog")),
        Target::new("frontend", format!("http://{frontend}/")),
    ]);
    let (stop, stopped) = watch::channel(false);
    if let Some(every) = args.churn {
        let (client, stopped) = (client.clone(), stopped.clone());
        tokio::spawn(async move {
            if let Err(e) = churn::run(catalog, client, every, stopped).await {
                tracing::error!("churn stopped: {e}");
            }
        });
    }
    let bursty = Arc::new(Target::new("inventory", format!("http://{inventory}/")));
    let bursts = tokio::spawn(load::bursts(
        bursty.clone(),
        6,
        Duration::from_secs(2),
        client.clone(),
        stopped.clone(),
    ));
    let load = tokio::spawn(load::run(targets.clone(), args.rate, client, stopped));
    let status = tokio::spawn(report(targets.clone(), faults.clone()));

    match args.duration {
        Some(duration) => tokio::select! {
            _ = tokio::time::sleep(duration) => tracing::info!("{} s are up, stopping", duration.as_secs()),
            _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C, stopping"),
        },
        None => {
            tokio::signal::ctrl_c().await?;
            tracing::info!("Ctrl-C, stopping");
        }
    }

    stop.send_replace(true);
    let _ = load.await;
    let _ = bursts.await;
    status.abort();
    schedule.abort();
    for target in targets.iter() {
        let t = target.stats.totals();
        println!(
            "{:>9}: {} ok, {} failed, {} rejected by a breaker, {} errors, {} skipped",
            target.name, t.ok, t.failed, t.rejected, t.errors, t.skipped
        );
    }
    let t = bursty.stats.totals();
    println!(
        "inventory (bursts of 6, limit 4): {} ok, {} refused for capacity, {} failed, {} errors",
        t.ok, t.rejected, t.failed, t.errors
    );
    metrics.shutdown().await;
    Ok(())
}

fn print_banner(args: &Args, metrics: SocketAddr, gateway: SocketAddr, frontend: SocketAddr) {
    let auth = match &args.token {
        Some(_) => " -H \"Authorization: Bearer $TOKEN\"",
        None => "",
    };
    // A browser sends the token as the password of HTTP Basic auth.
    let login = match &args.token {
        Some(_) => "   (log in with any user name, the token as password)",
        None => "",
    };
    let phase = args.phase.as_secs();
    let runs = match args.duration {
        Some(d) => format!("for {} s", d.as_secs()),
        None => "until Ctrl-C".to_owned(),
    };
    println!(
        "\
mesh_demo: a service mesh on 127.0.0.1, every hop behind a circuit breaker (runs {runs})

  status page   http://{metrics}/breakers{login}   (live tiles and the dependency graph)
  metrics       curl{auth} http://{metrics}/metrics
  dependencies  curl{auth} http://{metrics}/dependencies.json
                curl{auth} http://{metrics}/dependencies.dot | dot -Tsvg > deps.svg
  gateway       curl -i http://{gateway}/orders      (flaky upstream, breaker service=\"orders\")
                curl -i http://{gateway}/catalog     (healthy upstream, breaker service=\"catalog\")
  cascade       curl -i http://{frontend}/      (frontend -> checkout -> payments, payments is flaky)
  faults        curl{auth} http://{gateway}/admin/faults
                curl{auth} -X POST 'http://{gateway}/admin/faults?failure_rate=0.9&latency_ms=100'
                curl{auth} -X POST 'http://{gateway}/admin/faults?schedule=resume'

  load          {rate} req/s over gateway/orders, gateway/catalog and frontend
  phases        {phase} s each, repeating: healthy (1% errors) -> failing (10% -> 90%) -> recovering (20% -> 1%)
  expect        early warnings, then the orders, payments and checkout breakers open while failing
                (catalog stays closed), and close again while recovering
  prometheus    prometheus --config.file=deploy/prometheus.yml --web.listen-address=127.0.0.1:9090 \\
                  --storage.tsdb.path=/tmp/tower-breaker-prometheus   (then import deploy/grafana/)
",
        rate = args.rate,
    );
}

/// Logs a status line every few seconds: the phase, each breaker (from the
/// dependency graph) and what the load generator got since the last line.
async fn report(targets: Arc<[Target]>, faults: Arc<Faults>) {
    let mut ticks = tokio::time::interval(STATUS_EVERY);
    ticks.tick().await;
    let mut before: Vec<Totals> = targets.iter().map(|t| t.stats.totals()).collect();
    loop {
        ticks.tick().await;
        let graph = DependencyGraph::snapshot();
        let breakers: Vec<String> = graph
            .edges()
            .iter()
            .map(|e| format!("{}->{} {}", e.caller, e.upstream, e.state.as_str()))
            .collect();
        let traffic: Vec<String> = targets
            .iter()
            .zip(before.iter_mut())
            .map(|(target, before)| {
                let now = target.stats.totals();
                let d = now.minus(*before);
                *before = now;
                format!(
                    "{} {}ok/{}fail/{}rej/{}err",
                    target.name, d.ok, d.failed, d.rejected, d.errors
                )
            })
            .collect();
        tracing::info!(
            "status: phase {} ({:.0}% errors) | {} | last {} s: {}",
            faults.phase(),
            faults.failure_rate() * 100.0,
            breakers.join(", "),
            STATUS_EVERY.as_secs(),
            traffic.join(", ")
        );
    }
}
