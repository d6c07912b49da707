//! The live keys of a keyed layer: 64 lock-free shards, the label budget,
//! idle eviction and the overflow breaker.

use std::borrow::Cow;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, TryLockError};

use arc_swap::ArcSwap;
use hashbrown::HashTable;

use crate::breaker::{Breaker, InFlight};
use crate::error::CircuitOpen;
use crate::layer::Template;
use crate::metrics::{sanitize_label, LabelBudget, ServiceLabel, OVERFLOW_LABEL};
use crate::CircuitBreakerHandle;

/// Shards of the key map: an insert copies one shard.
const SHARDS: usize = 64;

/// One live key.
struct Entry {
    /// The key, sanitized: the breaker's name.
    key: Arc<str>,
    /// The key's hash under the layer's seed.
    hash: u64,
    breaker: Arc<Breaker>,
    /// Whether the key reports under its own label (counted in the
    /// layer's label budget) rather than `__overflow__`.
    labelled: bool,
    /// When the key was last called (clock nanoseconds), to within
    /// `touch_every`: written only when it is that much behind, so a busy
    /// key's entry stays read-mostly.
    used: AtomicU64,
}

impl Entry {
    #[inline]
    fn touch(&self, now: u64, every: u64) {
        if now.saturating_sub(self.used.load(Ordering::Relaxed)) >= every {
            // Racing touches keep the latest.
            self.used.fetch_max(now, Ordering::Relaxed);
        }
    }
}

/// One shard: entries found by their hash, so a key is hashed once per
/// call for both the shard and the lookup.
type Shard = HashTable<Arc<Entry>>;

/// The keys of one layer, shared by its services.
pub(super) struct Keys {
    pub(super) template: Template,
    pub(super) max_keys: usize,
    /// The labels reserved for this layer's keys: `max_keys`, or fewer if
    /// the process-wide cap had less room.
    budget: LabelBudget,
    /// Hashes keys, seeded at random per layer.
    hasher: RandomState,
    idle: u64,
    /// How far behind a key's last-use time may lag (`idle / 64`).
    touch_every: u64,
    sweep_every: u64,
    next_sweep: AtomicU64,
    fallback: Box<str>,
    /// Read without a lock; each shard replaced whole, under `writer`.
    shards: Box<[ArcSwap<Shard>]>,
    /// Live keys over all shards; changed under `writer`.
    count: AtomicUsize,
    /// Live keys with a label of their own; changed under `writer`.
    labelled: AtomicUsize,
    /// Serializes inserts and sweeps. Calls for known keys never take it.
    writer: Mutex<()>,
    overflow: OnceLock<Arc<Breaker>>,
    /// Calls that found no key, counted up to [`FALLBACK_WARN_AFTER`] while
    /// no call has found one (`usize::MAX` once a key was found or the
    /// warning given).
    keyless: AtomicUsize,
}

/// Keyless calls, with no keyed call before them, after which a keyed layer
/// warns (once) that its extractor finds no key.
pub(super) const FALLBACK_WARN_AFTER: usize = 100;

/// Whether `key` is its own label already: [`sanitize_label`] would return
/// it unchanged.
pub(super) fn is_clean(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 64
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':' | b'/'))
}

/// A key as its label: sanitized unless it is clean already.
fn clean(key: Cow<'_, str>) -> Cow<'_, str> {
    if is_clean(&key) {
        key
    } else {
        Cow::Owned(sanitize_label(&key))
    }
}

impl Keys {
    /// Reserves the layer's label budget and starts with no key.
    pub(super) fn new(template: Template, max_keys: usize, idle: u64, fallback: Box<str>) -> Self {
        let budget = LabelBudget::reserve(max_keys);
        #[cfg(feature = "tracing")]
        if budget.granted() < max_keys {
            tracing::warn!(
                max_keys,
                labels = budget.granted(),
                "keyed circuit breaker: the process-wide service label cap has room for fewer \
                 labels than max_keys; keys past them are judged on their own but report \
                 under service=\"__overflow__\""
            );
        }
        let now = template.clock.now();
        let sweep_every = (idle / 2).max(1);
        Keys {
            template,
            max_keys,
            budget,
            hasher: RandomState::new(),
            idle,
            touch_every: (idle / 64).max(1),
            sweep_every,
            next_sweep: AtomicU64::new(now.saturating_add(sweep_every)),
            fallback,
            shards: (0..SHARDS)
                .map(|_| ArcSwap::from_pointee(Shard::new()))
                .collect(),
            count: AtomicUsize::new(0),
            labelled: AtomicUsize::new(0),
            writer: Mutex::new(()),
            overflow: OnceLock::new(),
            keyless: AtomicUsize::new(0),
        }
    }

    /// Admits a call through the breaker of `key` (the fallback key for
    /// `None`), creating it if need be, and marks the key used. Sweeps idle
    /// keys when a sweep is due.
    #[inline]
    pub(super) fn admit(&self, key: Option<Cow<'_, str>>) -> Result<InFlight, CircuitOpen> {
        let key = clean(match key {
            Some(key) => key,
            None => {
                self.keyless();
                Cow::Borrowed(&self.fallback)
            }
        });
        let hash = self.hasher.hash_one(&*key);
        let shard = self.shard(hash).load();
        let (admitted, now) = match shard.find(hash, |e| *e.key == *key) {
            Some(entry) => {
                let (admitted, started) = entry.breaker.admit_timed();
                // A timed call read the clock already.
                let now = started.unwrap_or_else(|| self.template.clock.now());
                entry.touch(now, self.touch_every);
                (admitted, now)
            }
            None => {
                drop(shard);
                let now = self.template.clock.now();
                (self.miss(&key, hash, now).admit(), now)
            }
        };
        if now >= self.next_sweep.load(Ordering::Relaxed) {
            self.maybe_sweep(now);
        }
        admitted
    }

    #[inline]
    fn shard(&self, hash: u64) -> &ArcSwap<Shard> {
        // Bits the shard's own table does not use for its buckets (the low
        // bits) nor for its tags (the top seven).
        &self.shards[((hash >> 32) % SHARDS as u64) as usize]
    }

    /// A call whose extractor found no key: after [`FALLBACK_WARN_AFTER`]
    /// of them with no keyed call before, warns once (a `ByAuthority`
    /// behind a tonic client without `with_origin` sees no authority).
    #[cold]
    #[inline(never)]
    fn keyless(&self) {
        let counted = self
            .keyless
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                if n < FALLBACK_WARN_AFTER {
                    Some(n + 1)
                } else {
                    None
                }
            });
        if counted == Ok(FALLBACK_WARN_AFTER - 1) {
            self.keyless.store(usize::MAX, Ordering::Relaxed);
            #[cfg(feature = "tracing")]
            tracing::warn!(
                calls = FALLBACK_WARN_AFTER,
                fallback_key = &*self.fallback,
                "keyed circuit breaker: no request so far carried a key; every call \
                 shares the fallback key's breaker (ByAuthority in a tonic client \
                 stack needs the client built with `with_origin`)"
            );
        }
    }

    /// A key not in the snapshot: insert it, or overflow.
    #[cold]
    fn miss(&self, key: &str, hash: u64, now: u64) -> Arc<Breaker> {
        if *key != *self.fallback {
            // A call found a key: no warning about keyless calls.
            self.keyless.store(usize::MAX, Ordering::Relaxed);
        }
        if key == OVERFLOW_LABEL {
            return self.overflow();
        }
        if self.full() {
            // Stay off the lock while full: sweep only if one is due and the
            // lock is free.
            self.maybe_sweep(now);
            if self.full() {
                return self.overflow();
            }
        }
        let guard = self.lock();
        let shard = self.shard(hash);
        if let Some(entry) = shard.load().find(hash, |e| *e.key == *key) {
            entry.touch(now, self.touch_every);
            return entry.breaker.clone();
        }
        if self.full() && now >= self.next_sweep.load(Ordering::Relaxed) {
            self.sweep(now, &guard);
        }
        if self.full() {
            return self.overflow();
        }
        let labelled = self.labelled.load(Ordering::Relaxed) < self.budget.granted();
        let breaker = if labelled {
            self.template.breaker(ServiceLabel::keyed(key))
        } else {
            self.template
                .breaker_named(Arc::from(key), ServiceLabel::overflow())
        };
        let entry = Arc::new(Entry {
            key: breaker.service().clone(),
            hash,
            breaker: breaker.clone(),
            labelled,
            used: AtomicU64::new(now),
        });
        let old = shard.load_full();
        let mut next = Shard::with_capacity(old.len() + 1);
        for e in old.iter() {
            next.insert_unique(e.hash, e.clone(), |e| e.hash);
        }
        next.insert_unique(hash, entry, |e| e.hash);
        shard.store(Arc::new(next));
        self.count.fetch_add(1, Ordering::Relaxed);
        if labelled {
            self.labelled.fetch_add(1, Ordering::Relaxed);
        }
        if now >= self.next_sweep.load(Ordering::Relaxed) {
            self.sweep(now, &guard);
        }
        breaker
    }

    /// A handle to the breaker of `key` (sanitized), if it is live.
    pub(super) fn handle(&self, key: &str) -> Option<CircuitBreakerHandle> {
        let key = clean(Cow::Borrowed(key));
        let hash = self.hasher.hash_one(&*key);
        let shard = self.shard(hash).load();
        shard
            .find(hash, |e| *e.key == *key)
            .map(|e| CircuitBreakerHandle::new(e.breaker.clone()))
    }

    /// Handles to every live key's breaker.
    pub(super) fn handles(&self) -> Vec<CircuitBreakerHandle> {
        self.shards
            .iter()
            .flat_map(|shard| {
                shard
                    .load()
                    .iter()
                    .map(|e| CircuitBreakerHandle::new(e.breaker.clone()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// The overflow breaker, if a key has overflowed.
    pub(super) fn overflow_breaker(&self) -> Option<&Arc<Breaker>> {
        self.overflow.get()
    }

    /// Whether no key may have a breaker of its own now.
    fn full(&self) -> bool {
        self.count.load(Ordering::Relaxed) >= self.max_keys
    }

    pub(super) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// How many keys may report under a label of their own.
    pub(super) fn label_budget(&self) -> usize {
        self.budget.granted()
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn overflow(&self) -> Arc<Breaker> {
        self.overflow
            .get_or_init(|| self.template.unjudged_breaker(ServiceLabel::overflow()))
            .clone()
    }

    /// Sweeps if one is due and no insert or sweep is under way.
    fn maybe_sweep(&self, now: u64) {
        if now < self.next_sweep.load(Ordering::Relaxed) {
            return;
        }
        let guard = match self.writer.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        self.sweep(now, &guard);
    }

    /// Evicts now every key idle for `idle_timeout` and unreferenced;
    /// returns how many.
    pub(super) fn evict_idle(&self) -> usize {
        let now = self.template.clock.now();
        let guard = self.lock();
        self.sweep(now, &guard)
    }

    /// Evicts idle, unreferenced keys. Returns how many.
    fn sweep(&self, now: u64, _writer: &MutexGuard<'_, ()>) -> usize {
        self.next_sweep
            .store(now.saturating_add(self.sweep_every), Ordering::Relaxed);
        let mut evicted = 0;
        for shard in self.shards.iter() {
            let map = shard.load_full();
            let idle: Vec<Arc<Entry>> = map
                .iter()
                .filter(|e| {
                    now.saturating_sub(e.used.load(Ordering::Relaxed)) >= self.idle
                        // Only the map holds it: no call in flight, no handle out.
                        && Arc::strong_count(&e.breaker) == 1
                })
                .cloned()
                .collect();
            if idle.is_empty() {
                continue;
            }
            let mut next = Shard::clone(&map);
            for e in &idle {
                if let Ok(slot) = next.find_entry(e.hash, |x| Arc::ptr_eq(x, e)) {
                    slot.remove();
                }
            }
            shard.store(Arc::new(next));
            let labelled = idle.iter().filter(|e| e.labelled).count();
            self.count.fetch_sub(idle.len(), Ordering::Relaxed);
            self.labelled.fetch_sub(labelled, Ordering::Relaxed);
            for e in idle.iter().filter(|e| e.labelled) {
                // The `__overflow__` series are shared: only a key's own
                // label goes idle with it.
                e.breaker.retire();
            }
            evicted += idle.len();
        }
        evicted
    }

    /// The approximate bytes one live key costs: the map slot and entry.
    pub(super) fn entry_bytes() -> usize {
        use std::mem::size_of;
        // Reference-counted allocations carry two counters.
        const ARC: usize = 2 * size_of::<usize>();
        // The table slot (a pointer and one control byte) at the worst load
        // factor of the table (7/8 full, then doubled: 7/16).
        let slot = (size_of::<Arc<Entry>>() + 1) * 16 / 7;
        slot + ARC + size_of::<Entry>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyed::key_fn;

    #[test]
    fn clean_keys_are_their_own_label() {
        for key in [
            "a",
            "orders.svc:8080",
            "/api/users",
            "A-b_c",
            &"x".repeat(64),
        ] {
            assert!(is_clean(key), "{key}");
            assert_eq!(sanitize_label(key), key);
        }
        for key in ["", "a b", "é", "a\"b", &"x".repeat(65)] {
            assert!(!is_clean(key), "{key}");
        }
    }

    /// FNV-1a, the unkeyed hash shards used to be chosen by.
    fn fnv1a(key: &str) -> u64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in key.bytes() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
        hash
    }

    /// Keys a client chose to land in one FNV-1a shard spread over the
    /// shards: the hash is seeded at random per layer. (With FNV-1a every
    /// one of them went to shard 0, and each insert copied that one growing
    /// map: 8,000 such inserts took 19 s instead of half a second.)
    #[test]
    fn keys_aimed_at_one_shard_spread_out() {
        let aimed: Vec<String> = (0u64..)
            .map(|i| format!("k{i}"))
            .filter(|k| fnv1a(k) % SHARDS as u64 == 0)
            .take(2_000)
            .collect();
        let layer = crate::CircuitBreakerLayer::builder()
            .keyed(key_fn(|req: &String| Some(req.clone())))
            .max_keys(2_000)
            .build()
            .unwrap();
        for key in &aimed {
            drop(layer.keys.admit(Some(Cow::Borrowed(key))));
        }
        assert_eq!(layer.len(), 2_000);
        let largest = layer
            .keys
            .shards
            .iter()
            .map(|shard| shard.load().len())
            .max()
            .unwrap();
        // About 31 a shard; a fair hash stays far below 3x that.
        assert!(largest < 3 * 2_000 / SHARDS, "a shard holds {largest} keys");
    }
}
