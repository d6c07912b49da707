//! Every live breaker in the process, for the status page.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::breaker::Breaker;

/// Weak references to the live breakers, by address, with the order they
/// were built in. A breaker leaves when it is dropped, so a dead one keeps
/// no memory here.
#[derive(Default)]
struct Registry {
    breakers: HashMap<usize, (u64, Weak<Breaker>)>,
    next: u64,
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Adds a freshly built breaker.
pub(crate) fn register(breaker: &Arc<Breaker>) {
    let mut registry = registry();
    registry.next += 1;
    let seq = registry.next;
    let address = Arc::as_ptr(breaker) as usize;
    registry
        .breakers
        .insert(address, (seq, Arc::downgrade(breaker)));
}

/// Removes a breaker being dropped.
pub(crate) fn unregister(breaker: &Breaker) {
    let address = breaker as *const Breaker as usize;
    let removed = registry().breakers.remove(&address);
    // The weak reference frees the breaker's memory: outside the lock.
    drop(removed);
}

/// The breakers alive now, oldest first.
pub(crate) fn breakers() -> Vec<Arc<Breaker>> {
    // Upgrade outside the lock: dropping the last reference of a breaker
    // must not happen while holding it.
    let mut weak: Vec<(u64, Weak<Breaker>)> = registry().breakers.values().cloned().collect();
    weak.sort_unstable_by_key(|(seq, _)| *seq);
    weak.iter().filter_map(|(_, w)| w.upgrade()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_breakers_leave_the_list() {
        let layers: Vec<_> = (0..100)
            .map(|i| {
                crate::CircuitBreakerLayer::builder()
                    .name(format!("live-test-{i}"))
                    .build()
                    .unwrap()
            })
            .collect();
        let named = |list: &[Arc<Breaker>]| {
            list.iter()
                .filter(|b| b.service().starts_with("live-test-"))
                .count()
        };
        assert_eq!(named(&breakers()), 100);
        let addresses: Vec<usize> = breakers()
            .iter()
            .filter(|b| b.service().starts_with("live-test-"))
            .map(|b| Arc::as_ptr(b) as usize)
            .collect();
        drop(layers);
        assert_eq!(named(&breakers()), 0);
        // Their entries went with them: nothing of theirs is kept (an
        // address may be in use again, by a breaker built since).
        let kept: Vec<Weak<Breaker>> = {
            let registry = registry();
            addresses
                .iter()
                .filter_map(|a| registry.breakers.get(a).map(|(_, w)| w.clone()))
                .collect()
        };
        assert!(kept.iter().all(|w| w.strong_count() > 0));
    }
}
