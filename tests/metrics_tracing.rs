//! `tracing` events on every transition, read with a capturing subscriber.
#![cfg(feature = "tracing")]

#[path = "support/traffic.rs"]
mod traffic;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tower::Layer;
use tower_breaker::{Backoff, CircuitBreakerLayer, Clock};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

use traffic::{ms, send, upstream, Call, Sent};

/// One captured event: its level and fields, values as text.
#[derive(Debug, Clone)]
struct Captured {
    level: Level,
    fields: BTreeMap<String, String>,
}

impl Captured {
    fn field(&self, name: &str) -> &str {
        self.fields
            .get(name)
            .unwrap_or_else(|| panic!("no field {name} in {self:?}"))
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<Captured>>>);

impl Capture {
    fn take(&self) -> Vec<Captured> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.target().starts_with("tower_breaker")
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = BTreeMap::new();
        event.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Captured {
            level: *event.metadata().level(),
            fields,
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

fn transition(e: &Captured) -> (Level, &str, &str, &str) {
    (e.level, e.field("from"), e.field("to"), e.field("reason"))
}

#[test]
fn every_transition_is_logged_warn_on_open_info_otherwise() {
    let capture = Capture::default();
    let (clock, manual) = Clock::manual();
    let layer = CircuitBreakerLayer::builder()
        .name("traced")
        .consecutive_failures(2)
        .open_duration(Backoff::fixed(Duration::from_secs(5)))
        .half_open_permits(1)
        .clock(clock)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(upstream(manual.clone()));

    tracing::subscriber::with_default(capture.clone(), || {
        futures::executor::block_on(async {
            send(&svc, Call::Ok(ms(1))).await;
            send(&svc, Call::Fail(ms(1))).await;
            send(&svc, Call::Fail(ms(1))).await;
            let trip = capture.take();
            assert_eq!(trip.len(), 1, "{trip:?}");
            let e = &trip[0];
            assert_eq!(
                transition(e),
                (Level::WARN, "closed", "open", "consecutive_failures")
            );
            assert_eq!(e.field("service"), "traced");
            // Two failures among three calls.
            let rate: f64 = e.field("error_rate").parse().unwrap();
            assert!((rate - 2.0 / 3.0).abs() < 1e-9, "{rate}");

            // Rejections log nothing.
            assert_eq!(send(&svc, Call::Ok(ms(1))).await, Sent::Rejected);
            assert!(capture.take().is_empty());

            // The probe fails: half-open, then open again (warn).
            manual.advance(Duration::from_secs(5));
            send(&svc, Call::Fail(ms(1))).await;
            let events = capture.take();
            let seen: Vec<_> = events.iter().map(transition).collect();
            assert_eq!(
                seen,
                [
                    (Level::INFO, "open", "half_open", "timeout_elapsed"),
                    (Level::WARN, "half_open", "open", "probe_failed"),
                ]
            );

            // The next probe succeeds: closed (info), with the recovery time.
            manual.advance(Duration::from_secs(5));
            send(&svc, Call::Ok(ms(1))).await;
            let events = capture.take();
            let seen: Vec<_> = events.iter().map(transition).collect();
            assert_eq!(
                seen,
                [
                    (Level::INFO, "open", "half_open", "timeout_elapsed"),
                    (Level::INFO, "half_open", "closed", "probe_succeeded"),
                ]
            );
            // The fields describe the breaker just before the transition:
            // probes do not feed the window, which still holds the trip.
            assert_eq!(events[1].field("error_rate"), (2.0f64 / 3.0).to_string());
            assert_eq!(events[1].field("recovery"), "10.002");

            // Manual overrides: forced open warns, the rest inform.
            handle.force_open();
            handle.force_closed();
            handle.disable();
            let events = capture.take();
            let seen: Vec<_> = events.iter().map(transition).collect();
            assert_eq!(
                seen,
                [
                    (Level::WARN, "closed", "forced_open", "manual"),
                    (Level::INFO, "forced_open", "closed", "manual"),
                    (Level::INFO, "closed", "disabled", "manual"),
                ]
            );
            for e in &events {
                assert_eq!(e.field("service"), "traced");
                assert!(e.fields.contains_key("error_rate"));
            }
        });
    });
}

/// A second live breaker under a name already in use (two unnamed layers
/// share `default`) is logged at warn, once per such breaker; a name freed
/// by a dropped breaker may be taken again quietly.
#[test]
fn a_second_breaker_with_the_same_name_is_a_warning() {
    let capture = Capture::default();
    tracing::subscriber::with_default(capture.clone(), || {
        let first = CircuitBreakerLayer::builder()
            .name("dup_name")
            .build()
            .unwrap();
        assert!(capture.take().is_empty(), "the first one is quiet");
        let second = CircuitBreakerLayer::builder()
            .name("dup name")
            .build()
            .unwrap();
        let events = capture.take();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].level, Level::WARN);
        assert_eq!(events[0].field("service"), "dup_name");
        assert_eq!(events[0].field("name"), "dup name");
        let _ = (first, second);
        let other = CircuitBreakerLayer::builder()
            .name("dup-other")
            .build()
            .unwrap();
        assert!(capture.take().is_empty());
        drop(other);
        let again = CircuitBreakerLayer::builder()
            .name("dup-other")
            .build()
            .unwrap();
        assert!(capture.take().is_empty(), "its name was free again");
        drop(again);
    });
}
