//! Every live breaker in the process, for the status page.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use crate::breaker::Breaker;

/// Weak references to the breakers built so far; dead ones are pruned as
/// the list grows.
#[derive(Default)]
struct Registry {
    breakers: Vec<Weak<Breaker>>,
    /// The length after the last pruning: the list is pruned when it doubles.
    pruned_at: usize,
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
    if registry.breakers.len() >= 2 * registry.pruned_at.max(32) {
        registry.breakers.retain(|w| w.strong_count() > 0);
        registry.pruned_at = registry.breakers.len();
    }
    registry.breakers.push(Arc::downgrade(breaker));
}

/// The breakers alive now.
pub(crate) fn breakers() -> Vec<Arc<Breaker>> {
    // Upgrade outside the lock: dropping the last reference of a breaker
    // must not happen while holding it.
    let weak: Vec<Weak<Breaker>> = registry().breakers.clone();
    weak.iter().filter_map(Weak::upgrade).collect()
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
        drop(layers);
        assert_eq!(named(&breakers()), 0);
        // Building more prunes the dead references.
        let more: Vec<_> = (0..300)
            .map(|_| crate::CircuitBreakerLayer::builder().build().unwrap())
            .collect();
        assert!(registry().breakers.len() < 700);
        drop(more);
    }
}
