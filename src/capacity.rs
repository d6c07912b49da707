//! Capacity thresholds, as Envoy has them beside outlier detection: a cap
//! on the calls in flight through one breaker
//! ([`Builder::max_concurrent_calls`](crate::Builder::max_concurrent_calls)),
//! and a cap on the share of a keyed layer's keys that may refuse at once
//! ([`KeyedBuilder::max_open_share`](crate::keyed::KeyedBuilder::max_open_share)).
//!
//! # The concurrency limit
//!
//! A call takes a slot when it is admitted (at `call`, after the breaker's
//! own decision: an open breaker refuses as open, not as full) and gives it
//! back when its outcome is recorded or its record is dropped: the response
//! future completing, failing or dropped, or a streaming body
//! (`body::GrpcBody`, feature `grpc`) ending or dropped. A call that finds
//! every slot taken is refused at once with a [`CircuitOpen`](crate::CircuitOpen) whose
//! [`is_capacity`](crate::CircuitOpen::is_capacity) is true; it never
//! waits. The count is exact: slots are taken with a compare-and-swap, so
//! the inner service never sees more than the limit in flight.
//!
//! The overrides that let every call pass keep that promise: in Disabled
//! and MetricsOnly a call that finds every slot taken passes without one
//! (in MetricsOnly it counts as a shadow refusal,
//! `rejections_total{state="metrics_only"}`), so the inner service may then
//! see more than the limit. ForcedOpen refuses as open before any slot is
//! looked at.
//!
//! # The open share
//!
//! A keyed layer with `max_open_share(f)` counts its live keys and those
//! refusing (Open, HalfOpen or ForcedOpen). A trip policy may open one more
//! key only if the keys refusing would then be at most
//! `max(1, floor(f × live keys))`: as Envoy's `max_ejection_percent`, one
//! key may always open. A trip refused this way leaves the key Closed (its
//! calls keep flowing, still judged) and counts one
//! `trips_suppressed_total`; the policy asks again with the key's next
//! judged call. Forcing a key open by hand is never refused, but counts. A
//! key stops counting when it is evicted.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use metrics::Gauge;

use crate::State;

/// A breaker's concurrency limit: the calls in flight and the cap.
#[derive(Debug)]
pub(crate) struct Capacity {
    limit: u32,
    in_flight: AtomicU32,
}

impl Capacity {
    pub(crate) fn new(limit: u32) -> Self {
        Capacity {
            limit,
            in_flight: AtomicU32::new(0),
        }
    }

    pub(crate) fn limit(&self) -> u32 {
        self.limit
    }

    pub(crate) fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes a slot if one is free.
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a slot back.
    #[inline]
    pub(crate) fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// Whether a state refuses calls, for the open share.
pub(crate) fn refuses(state: State) -> bool {
    matches!(state, State::Open | State::HalfOpen | State::ForcedOpen)
}

/// The keys of one keyed layer, and how many of them refuse.
#[derive(Debug)]
pub(crate) struct FleetGuard {
    share: f64,
    live: AtomicUsize,
    refusing: AtomicUsize,
    /// The keyed layer's name, the `service` label of its gauge.
    pub(crate) name: Arc<str>,
    /// The open-share gauge, per recorder it was set in: held, so the
    /// series lives as long as the layer.
    gauges: Mutex<Vec<(usize, Gauge)>>,
}

impl FleetGuard {
    pub(crate) fn new(share: f64, name: Arc<str>) -> Self {
        FleetGuard {
            share,
            live: AtomicUsize::new(0),
            refusing: AtomicUsize::new(0),
            name,
            gauges: Mutex::new(Vec::new()),
        }
    }

    /// Sets the open-share gauge in the current recorder, registering it
    /// with `register` the first time.
    pub(crate) fn publish(&self, recorder: usize, register: impl FnOnce() -> Gauge) {
        let mut gauges = self.gauges.lock().unwrap_or_else(|p| p.into_inner());
        let at = match gauges.iter().position(|(r, _)| *r == recorder) {
            Some(at) => at,
            None => {
                gauges.push((recorder, register()));
                gauges.len() - 1
            }
        };
        gauges[at].1.set(self.open_share());
    }

    /// The most keys that may refuse now.
    fn allowed(&self) -> usize {
        let live = self.live.load(Ordering::Acquire);
        ((self.share * live as f64).floor() as usize).max(1)
    }

    /// The share of live keys refusing now (0 with no key).
    pub(crate) fn open_share(&self) -> f64 {
        let live = self.live.load(Ordering::Acquire);
        if live == 0 {
            return 0.0;
        }
        (self.refusing.load(Ordering::Acquire) as f64 / live as f64).min(1.0)
    }

    pub(crate) fn joined(&self) {
        self.live.fetch_add(1, Ordering::AcqRel);
    }

    fn left(&self) {
        let _ = self
            .live
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Counts one more refusing key if the share allows it.
    fn try_open(&self) -> bool {
        let allowed = self.allowed();
        self.refusing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < allowed).then_some(n + 1)
            })
            .is_ok()
    }

    fn opened(&self) {
        self.refusing.fetch_add(1, Ordering::AcqRel);
    }

    fn closed(&self) {
        let _ = self
            .refusing
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// One key's place in its layer's [`FleetGuard`].
#[derive(Debug)]
pub(crate) struct FleetMember {
    pub(crate) guard: Arc<FleetGuard>,
    /// Whether this key is counted as refusing.
    refusing: AtomicBool,
    /// Evicted: counts no more.
    left: AtomicBool,
}

impl FleetMember {
    pub(crate) fn new(guard: Arc<FleetGuard>) -> Self {
        guard.joined();
        FleetMember {
            guard,
            refusing: AtomicBool::new(false),
            left: AtomicBool::new(false),
        }
    }

    /// Whether a trip policy may open this key (called under the breaker's
    /// transition lock): counts it as refusing if so.
    pub(crate) fn may_open(&self) -> bool {
        if self.left.load(Ordering::Acquire) || self.refusing.load(Ordering::Acquire) {
            return true;
        }
        if self.guard.try_open() {
            self.refusing.store(true, Ordering::Release);
            true
        } else {
            false
        }
    }

    /// Follows a transition (under the breaker's transition lock): `to` is
    /// the state calls now see.
    pub(crate) fn moved(&self, refusing: bool) {
        if self.left.load(Ordering::Acquire) {
            return;
        }
        match (self.refusing.swap(refusing, Ordering::AcqRel), refusing) {
            (false, true) => self.guard.opened(),
            (true, false) => self.guard.closed(),
            _ => {}
        }
    }

    /// The key was evicted: it counts no more.
    pub(crate) fn leave(&self) {
        if self.left.swap(true, Ordering::AcqRel) {
            return;
        }
        if self.refusing.swap(false, Ordering::AcqRel) {
            self.guard.closed();
        }
        self.guard.left();
    }
}

impl Drop for FleetMember {
    fn drop(&mut self) {
        self.leave();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_exact() {
        let c = Capacity::new(2);
        assert!(c.try_acquire() && c.try_acquire());
        assert!(!c.try_acquire());
        c.release();
        assert!(c.try_acquire());
        c.release();
        c.release();
        c.release(); // never below zero
        assert_eq!(c.in_flight(), 0);
    }

    #[test]
    fn the_share_caps_refusing_keys_but_one_may_always_open() {
        let guard = Arc::new(FleetGuard::new(0.5, "layer".into()));
        let members: Vec<_> = (0..10).map(|_| FleetMember::new(guard.clone())).collect();
        let opened = members.iter().filter(|m| m.may_open()).count();
        assert_eq!(opened, 5);
        assert_eq!(guard.open_share(), 0.5);
        // One closes: another may open.
        members[0].moved(false);
        assert!(members[9].may_open() || members[8].may_open());
        // Evicting a refusing key frees its place and shrinks the fleet.
        members[1].leave();
        assert_eq!(guard.live.load(Ordering::Acquire), 9);

        let lone = Arc::new(FleetGuard::new(0.1, "lone".into()));
        let only = FleetMember::new(lone.clone());
        assert!(only.may_open(), "one key may always open");
    }
}
