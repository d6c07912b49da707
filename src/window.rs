//! Lock-free sliding windows of call outcomes.
//!
//! # The window maths
//!
//! Both windows answer one question: over the recent past, how many calls
//! were there, how many failed and how many were slow? The failure rate is
//! `failures / calls` and the slow-call rate `slow / calls`, evaluated only
//! once `calls` reaches the policy's minimum.
//!
//! **Count window** (the last `N` calls): a ring of `N` one-byte slots and a
//! cursor. Recording takes the next cursor value `i`, swaps the new sample
//! into slot `i mod N` and adjusts three running totals by the difference
//! between the new sample and the one it replaced. Every change to a slot is
//! paired with exactly its own delta, so the totals always converge to the
//! sum of the slots, whatever the interleaving; a reader racing a writer can
//! be one call off for an instant, never more. A success replacing a success
//! (the steady state) changes no total at all: one `fetch_add` and one
//! `swap`. Totals are signed and read clamped at zero, so a transient `-1`
//! never shows as a huge count.
//!
//! **Time window** (the last `D` of wall time): `B` buckets of width `D / B`,
//! bucket `k = now / width` living in slot `k mod B` and stamped with `k`.
//! A writer that finds a stale stamp claims the slot with a compare-exchange
//! and zeroes it; readers sum the slots whose stamp lies in
//! `(k - B, k]`. Memory is `B` buckets whatever the traffic; recording is
//! O(1), reading O(B). A count racing the rollover of its own slot may land
//! in the neighbouring bucket or be lost: the window is approximate at its
//! trailing edge by at most the calls of one such race.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};

use crate::padded::CachePadded;

/// One call's sample: whether it failed and whether it was slow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sample {
    pub(crate) failure: bool,
    pub(crate) slow: bool,
}

impl Sample {
    /// A call that succeeded in time.
    pub(crate) const SUCCESS: Sample = Sample {
        failure: false,
        slow: false,
    };

    fn encode(self) -> u8 {
        PRESENT | if self.failure { FAILURE } else { 0 } | if self.slow { SLOW } else { 0 }
    }
}

const PRESENT: u8 = 1;
const FAILURE: u8 = 2;
const SLOW: u8 = 4;

/// Totals over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

impl Counts {
    pub(crate) fn failure_rate(&self) -> f64 {
        ratio(self.failures, self.calls)
    }

    pub(crate) fn slow_call_rate(&self) -> f64 {
        ratio(self.slow, self.calls)
    }
}

fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part.min(whole) as f64) / (whole as f64)
    }
}

/// The window a breaker evaluates its rate policies over.
#[derive(Debug)]
// One per breaker: the count window's size is its padded cursor, on purpose.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    /// Records a sample; returns whether the totals changed.
    #[inline]
    pub(crate) fn record(&self, sample: Sample, now: u64) -> bool {
        match self {
            Window::Count(w) => w.record(sample),
            Window::Time(w) => w.record(sample, now),
        }
    }

    pub(crate) fn counts(&self, now: u64) -> Counts {
        match self {
            Window::Count(w) => w.counts(),
            Window::Time(w) => w.counts(now),
        }
    }

    pub(crate) fn clear(&self) {
        match self {
            Window::Count(w) => w.clear(),
            Window::Time(w) => w.clear(),
        }
    }

    /// Whether recording needs the current time.
    pub(crate) fn needs_time(&self) -> bool {
        matches!(self, Window::Time(_))
    }
}

/// The last `N` calls.
#[derive(Debug)]
pub(crate) struct CountWindow {
    /// Written by every call: kept off the lines the totals share.
    cursor: CachePadded<AtomicU32>,
    /// `u64::MAX / len + 1`: turns `cursor % len` into two multiplications.
    reciprocal: u64,
    slots: Box<[AtomicU8]>,
    calls: AtomicI64,
    failures: AtomicI64,
    slow: AtomicI64,
}

impl CountWindow {
    pub(crate) fn new(size: usize) -> Self {
        let size = size.clamp(1, u32::MAX as usize);
        CountWindow {
            cursor: CachePadded(AtomicU32::new(0)),
            reciprocal: (u64::MAX / size as u64).wrapping_add(1),
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            calls: AtomicI64::new(0),
            failures: AtomicI64::new(0),
            slow: AtomicI64::new(0),
        }
    }

    #[inline]
    pub(crate) fn record(&self, sample: Sample) -> bool {
        let i = self.next_slot();
        if self.holds(i, sample) {
            return false;
        }
        self.replace(i, sample)
    }

    /// Takes the slot the next sample goes to.
    #[inline]
    pub(crate) fn next_slot(&self) -> usize {
        self.slot(self.cursor.fetch_add(1, Ordering::Relaxed))
    }

    /// Whether `slot` holds `sample` already. The steady state: a sample
    /// replacing its twin changes nothing, so the write is skipped. (Should
    /// another writer change the slot meanwhile, its sample stands in for
    /// this one: the totals still match the slots.)
    #[inline]
    pub(crate) fn holds(&self, slot: usize, sample: Sample) -> bool {
        self.slots[slot].load(Ordering::Relaxed) == sample.encode()
    }

    /// Puts `sample` in `slot`; returns whether the totals changed.
    #[inline]
    pub(crate) fn replace(&self, slot: usize, sample: Sample) -> bool {
        self.swap(slot, sample.encode())
    }

    /// `cursor % len` without a division (Lemire's fastmod for 32-bit
    /// operands). The cursor wraps at 2^32, which skips a few slots once
    /// every four billion calls: harmless.
    #[inline]
    fn slot(&self, cursor: u32) -> usize {
        let low = self.reciprocal.wrapping_mul(u64::from(cursor));
        ((u128::from(low) * self.slots.len() as u128) >> 64) as usize
    }

    #[inline]
    fn swap(&self, slot: usize, new: u8) -> bool {
        let old = self.slots[slot].swap(new, Ordering::AcqRel);
        if old == new {
            return false;
        }
        let delta = |flag: u8| i64::from(new & flag != 0) - i64::from(old & flag != 0);
        for (flag, total) in [
            (PRESENT, &self.calls),
            (FAILURE, &self.failures),
            (SLOW, &self.slow),
        ] {
            let d = delta(flag);
            if d != 0 {
                total.fetch_add(d, Ordering::AcqRel);
            }
        }
        true
    }

    fn counts(&self) -> Counts {
        let read = |a: &AtomicI64| a.load(Ordering::Acquire).max(0) as u64;
        Counts {
            calls: read(&self.calls),
            failures: read(&self.failures),
            slow: read(&self.slow),
        }
    }

    fn clear(&self) {
        for slot in 0..self.slots.len() {
            self.swap(slot, 0);
        }
    }
}

/// The last `D` of time, in buckets.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    width: u64,
    buckets: Box<[Bucket]>,
}

#[derive(Debug, Default)]
struct Bucket {
    stamp: AtomicU64,
    calls: AtomicU64,
    failures: AtomicU64,
    slow: AtomicU64,
}

impl TimeWindow {
    /// `span` nanoseconds in `buckets` buckets.
    pub(crate) fn new(span: u64, buckets: usize) -> Self {
        let buckets = buckets.max(1);
        TimeWindow {
            width: (span / buckets as u64).max(1),
            buckets: (0..buckets).map(|_| Bucket::default()).collect(),
        }
    }

    #[inline]
    fn record(&self, sample: Sample, now: u64) -> bool {
        let k = now / self.width;
        let bucket = &self.buckets[(k % self.buckets.len() as u64) as usize];
        let stamp = bucket.stamp.load(Ordering::Acquire);
        let mut rolled = false;
        if stamp < k
            && bucket
                .stamp
                .compare_exchange(stamp, k, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.calls.store(0, Ordering::Release);
            bucket.failures.store(0, Ordering::Release);
            bucket.slow.store(0, Ordering::Release);
            rolled = true;
        }
        bucket.calls.fetch_add(1, Ordering::AcqRel);
        if sample.failure {
            bucket.failures.fetch_add(1, Ordering::AcqRel);
        }
        if sample.slow {
            bucket.slow.fetch_add(1, Ordering::AcqRel);
        }
        rolled || sample.failure || sample.slow
    }

    fn counts(&self, now: u64) -> Counts {
        let k = now / self.width;
        let n = self.buckets.len() as u64;
        let mut counts = Counts::default();
        for bucket in self.buckets.iter() {
            let stamp = bucket.stamp.load(Ordering::Acquire);
            if stamp <= k && k - stamp < n {
                counts.calls += bucket.calls.load(Ordering::Acquire);
                counts.failures += bucket.failures.load(Ordering::Acquire);
                counts.slow += bucket.slow.load(Ordering::Acquire);
            }
        }
        counts
    }

    fn clear(&self) {
        for bucket in self.buckets.iter() {
            bucket.calls.store(0, Ordering::Release);
            bucket.failures.store(0, Ordering::Release);
            bucket.slow.store(0, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Sample = Sample {
        failure: false,
        slow: false,
    };
    const FAIL: Sample = Sample {
        failure: true,
        slow: false,
    };
    const SLOW_OK: Sample = Sample {
        failure: false,
        slow: true,
    };

    #[test]
    fn count_window_keeps_the_last_n_calls() {
        let w = CountWindow::new(4);
        for s in [FAIL, FAIL, OK, SLOW_OK] {
            w.record(s);
        }
        assert_eq!(
            w.counts(),
            Counts {
                calls: 4,
                failures: 2,
                slow: 1
            }
        );
        // Two successes push the two failures out.
        w.record(OK);
        w.record(OK);
        assert_eq!(
            w.counts(),
            Counts {
                calls: 4,
                failures: 0,
                slow: 1
            }
        );
        assert!(!w.record(OK), "a success over a success changes nothing");
        w.clear();
        assert_eq!(w.counts(), Counts::default());
    }

    #[test]
    fn count_window_totals_converge_under_concurrency() {
        let w = std::sync::Arc::new(CountWindow::new(7));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000u32 {
                        let failure = (i + t) % 3 == 0;
                        w.record(Sample {
                            failure,
                            slow: i % 5 == 0,
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let mut expected = Counts::default();
        for slot in w.slots.iter() {
            let v = slot.load(Ordering::Acquire);
            expected.calls += u64::from(v & PRESENT != 0);
            expected.failures += u64::from(v & FAILURE != 0);
            expected.slow += u64::from(v & SLOW != 0);
        }
        assert_eq!(w.counts(), expected);
        assert_eq!(expected.calls, 7);
    }

    #[test]
    fn time_window_forgets_old_buckets() {
        let sec = 1_000_000_000;
        let w = TimeWindow::new(10 * sec, 10);
        w.record(FAIL, 0);
        w.record(OK, sec / 2);
        w.record(OK, 5 * sec);
        assert_eq!(
            w.counts(5 * sec),
            Counts {
                calls: 3,
                failures: 1,
                slow: 0
            }
        );
        // At 10.5 s the first bucket [0, 1 s) has left the window.
        assert_eq!(
            w.counts(10 * sec + sec / 2),
            Counts {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        // Its slot is reused, and zeroed, by bucket 10.
        w.record(FAIL, 10 * sec);
        assert_eq!(w.counts(10 * sec).failures, 1);
        assert_eq!(w.counts(10 * sec).calls, 2);
        // Long silence empties the window.
        assert_eq!(w.counts(100 * sec), Counts::default());
    }

    #[test]
    fn fastmod_matches_the_remainder() {
        for len in [1usize, 2, 3, 7, 100, 1000, 65_537, 1_000_000] {
            let w = CountWindow::new(len);
            for cursor in (0..5000u32).chain([u32::MAX - 3, u32::MAX - 1, u32::MAX]) {
                assert_eq!(
                    w.slot(cursor),
                    cursor as usize % len,
                    "len {len} cursor {cursor}"
                );
            }
        }
    }

    #[test]
    fn rates_are_clamped_and_safe_on_empty() {
        assert_eq!(Counts::default().failure_rate(), 0.0);
        let c = Counts {
            calls: 2,
            failures: 3,
            slow: 1,
        };
        assert_eq!(c.failure_rate(), 1.0);
        assert_eq!(c.slow_call_rate(), 0.5);
    }
}
