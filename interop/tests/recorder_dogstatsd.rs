//! The breaker's series through metrics-exporter-dogstatsd, as the global
//! `metrics` recorder (one per process, hence a test binary of its own),
//! sending DogStatsD datagrams to a UDP socket of the test's own on
//! 127.0.0.1. The lines are parsed and added up: the exporter aggregates
//! and sends counters as deltas per flush, and a datagram may carry any
//! number of lines, so no test expects a datagram or a flush to look one
//! way.

#[path = "../../tests/support/recorded.rs"]
mod recorded;
#[path = "support/trip.rs"]
mod trip;

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::UdpSocket;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_dogstatsd::DogStatsDBuilder;

use recorded::one_hot;
use trip::Tripped;

/// How long a test waits for what it expects to arrive.
const PATIENCE: Duration = Duration::from_secs(10);

/// The tags of a line, in the order they came (`service` first).
type Tags = Vec<(String, String)>;

/// What arrived so far: counters added up, gauges at their last value,
/// distribution samples in order, by name and tags.
#[derive(Debug, Default)]
struct Seen {
    counters: BTreeMap<(String, Tags), u64>,
    gauges: BTreeMap<(String, Tags), f64>,
    distributions: BTreeMap<(String, Tags), Vec<f64>>,
    /// Every line, for the failure messages.
    lines: Vec<String>,
}

impl Seen {
    /// Takes one line: `name:value[:value...]|type[|@rate][|#k:v,...][|T...]`.
    fn line(&mut self, line: &str) {
        self.lines.push(line.to_owned());
        let (head, rest) = line.split_once('|').unwrap_or_else(|| panic!("{line}"));
        let (name, values) = head.split_once(':').unwrap_or_else(|| panic!("{line}"));
        let mut fields = rest.split('|');
        let kind = fields.next().unwrap_or_default();
        let mut tags = Tags::new();
        for field in fields {
            if let Some(list) = field.strip_prefix('#') {
                for tag in list.split(',') {
                    let (k, v) = tag.split_once(':').unwrap_or_else(|| panic!("{line}"));
                    tags.push((k.to_owned(), v.to_owned()));
                }
            }
        }
        let key = (name.to_owned(), tags);
        let mut values = values.split(':');
        match kind {
            "c" => {
                let v: u64 = values.next().unwrap().parse().expect("a count");
                *self.counters.entry(key).or_default() += v;
            }
            "g" => {
                let v: f64 = values.next().unwrap().parse().expect("a value");
                self.gauges.insert(key, v);
            }
            "d" | "h" => self
                .distributions
                .entry(key)
                .or_default()
                .extend(values.map(|v| v.parse::<f64>().expect("a sample"))),
            other => panic!("unknown type {other:?} in {line}"),
        }
    }

    fn counter(&self, name: &str, tags: &[(&str, &str)]) -> Option<u64> {
        self.counters.get(&key(name, tags)).copied()
    }

    fn samples(&self, name: &str, tags: &[(&str, &str)]) -> usize {
        self.distributions.get(&key(name, tags)).map_or(0, Vec::len)
    }

    /// The one-hot state gauge of `service`, by state.
    fn states(&self, service: &str) -> BTreeMap<String, f64> {
        self.gauges
            .iter()
            .filter(|((name, tags), _)| {
                name == "circuit_breaker_state" && tags.first() == Some(&tag("service", service))
            })
            .map(|((_, tags), v)| (tags[1].1.clone(), *v))
            .collect()
    }
}

fn tag(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

fn key(name: &str, tags: &[(&str, &str)]) -> (String, Tags) {
    (
        name.to_owned(),
        tags.iter().map(|(k, v)| tag(k, v)).collect(),
    )
}

/// The socket the exporter sends to, and what it has received so far.
struct Agent {
    socket: UdpSocket,
    seen: Seen,
}

/// Binds the socket and installs the exporter, once for the binary.
fn agent() -> &'static Mutex<Agent> {
    static AGENT: OnceLock<Mutex<Agent>> = OnceLock::new();
    AGENT.get_or_init(|| {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap().to_string();
        DogStatsDBuilder::default()
            .with_remote_address(addr)
            .expect("an address")
            .with_flush_interval(Duration::from_millis(100))
            .with_telemetry(false)
            .install()
            .expect("the only recorder of this binary");
        Mutex::new(Agent {
            socket,
            seen: Seen::default(),
        })
    })
}

/// Expectations on what arrived, noted rather than asserted, so that they
/// can be tried again as more arrives.
struct Checks {
    failed: Vec<String>,
}

impl Checks {
    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, got: T, want: T) {
        if got != want {
            self.failed
                .push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }
}

/// Reads datagrams until every expectation of `check` holds for what
/// arrived, or fails once [`PATIENCE`] runs out, with the expectations that
/// did not hold and every line received.
fn expect(check: impl Fn(&Seen, &mut Checks)) {
    let mut agent = agent().lock().unwrap_or_else(|p| p.into_inner());
    let deadline = Instant::now() + PATIENCE;
    let mut buf = [0u8; 65_536];
    loop {
        let mut checks = Checks { failed: Vec::new() };
        check(&agent.seen, &mut checks);
        if checks.failed.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "after {PATIENCE:?}:\n{}\nlines received: {:#?}",
            checks.failed.join("\n"),
            agent.seen.lines
        );
        match agent.socket.recv(&mut buf) {
            Ok(n) => {
                let datagram = std::str::from_utf8(&buf[..n]).expect("UTF-8").to_owned();
                for line in datagram.lines().filter(|l| !l.is_empty()) {
                    agent.seen.line(line);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
}

const REQUESTS: &str = "circuit_breaker_requests_total";
const TRANSITIONS: &str = "circuit_breaker_transitions_total";
const DURATION: &str = "circuit_breaker_request_duration_seconds";
const RECOVERY: &str = "circuit_breaker_recovery_duration_seconds";
const REJECTIONS: &str = "circuit_breaker_rejections_total";
const FAILURES: &str = "circuit_breaker_failures_total";

fn transition<'a>(
    service: &'a str,
    from: &'a str,
    to: &'a str,
    reason: &'a str,
) -> [(&'a str, &'a str); 4] {
    [
        ("service", service),
        ("from", from),
        ("to", to),
        ("reason", reason),
    ]
}

#[tokio::test]
async fn state_transitions_and_requests_arrive_as_tagged_lines() {
    agent();
    let svc = "dsd-inventory";
    let mut breaker = Tripped::new(svc);
    let requests = |status| [("service", svc), ("status", status)];
    let trip = transition(svc, "closed", "open", "consecutive_failures");
    let half_open = transition(svc, "open", "half_open", "timeout_elapsed");
    let closed = transition(svc, "half_open", "closed", "probe_succeeded");
    let reopened = transition(svc, "half_open", "open", "probe_failed");

    // From construction: the one-hot state, and counters at zero.
    expect(|seen, c| {
        c.eq("state", seen.states(svc), one_hot("closed"));
        c.eq("trip", seen.counter(TRANSITIONS, &trip), Some(0));
        c.eq(
            "probe failed",
            seen.counter(TRANSITIONS, &reopened),
            Some(0),
        );
        c.eq(
            "ignored",
            seen.counter(REQUESTS, &requests("ignored")),
            Some(0),
        );
    });

    breaker.trip().await;
    expect(|seen, c| {
        c.eq("state", seen.states(svc), one_hot("open"));
        c.eq("trip", seen.counter(TRANSITIONS, &trip), Some(1));
        for (status, n) in [
            ("success", 2),
            ("failure", 3),
            ("rejected", 1),
            ("ignored", 0),
        ] {
            c.eq(status, seen.counter(REQUESTS, &requests(status)), Some(n));
        }
        c.eq(
            "rejections by open",
            seen.counter(REJECTIONS, &[("service", svc), ("state", "open")]),
            Some(1),
        );
        c.eq(
            "failures of kind error",
            seen.counter(FAILURES, &[("service", svc), ("kind", "error")]),
            Some(3),
        );
        c.eq(
            "timed successes",
            seen.samples(DURATION, &requests("success")),
            2,
        );
        c.eq(
            "timed failures",
            seen.samples(DURATION, &requests("failure")),
            3,
        );
        // The wire format itself, for one line: name, delta, type, tags.
        let line = format!(
            "{TRANSITIONS}:1|c|#service:{svc},from:closed,to:open,reason:consecutive_failures"
        );
        c.eq("the trip's line", seen.lines.contains(&line), true);
    });

    breaker.recover().await;
    expect(|seen, c| {
        c.eq("state", seen.states(svc), one_hot("closed"));
        c.eq("half-open", seen.counter(TRANSITIONS, &half_open), Some(1));
        c.eq("closed", seen.counter(TRANSITIONS, &closed), Some(1));
        c.eq(
            "probe failed",
            seen.counter(TRANSITIONS, &reopened),
            Some(0),
        );
        c.eq(
            "successes",
            seen.counter(REQUESTS, &requests("success")),
            Some(3),
        );
        c.eq(
            "recoveries timed",
            seen.samples(RECOVERY, &[("service", svc)]),
            1,
        );
    });
}

/// Each line of ours has the right DogStatsD type for its family, and
/// `service` as its first tag.
#[tokio::test]
async fn every_family_has_its_type_and_the_service_tag() {
    agent();
    let svc = "dsd-ledger";
    let mut breaker = Tripped::new(svc);
    breaker.trip().await;
    breaker.recover().await;
    let expected = BTreeMap::from([
        ("circuit_breaker_state", "g"),
        ("circuit_breaker_transitions_total", "c"),
        ("circuit_breaker_requests_total", "c"),
        ("circuit_breaker_rejections_total", "c"),
        ("circuit_breaker_failures_total", "c"),
        ("circuit_breaker_error_rate", "g"),
        ("circuit_breaker_slow_call_rate", "g"),
        ("circuit_breaker_trip_risk", "g"),
        ("circuit_breaker_request_duration_seconds", "d"),
        ("circuit_breaker_recovery_duration_seconds", "d"),
    ]);
    expect(|seen, c| {
        let mut types: BTreeMap<&str, &str> = BTreeMap::new();
        let keys = seen
            .counters
            .keys()
            .map(|k| (k, "c"))
            .chain(seen.gauges.keys().map(|k| (k, "g")))
            .chain(seen.distributions.keys().map(|k| (k, "d")));
        for ((name, tags), kind) in keys {
            if !tags.iter().any(|t| *t == tag("service", svc)) {
                continue;
            }
            c.eq(name, tags[0].0.as_str(), "service");
            if *types.entry(name.as_str()).or_insert(kind) != kind {
                c.eq(name, "two types", "one");
            }
        }
        c.eq("families", types, expected.clone());
    });
}
