//! How long a breaker stays open.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::duration_nanos;
use crate::error::ConfigError;

/// How long the breaker stays Open before letting probes through.
///
/// ```
/// use std::time::Duration;
/// use tower_breaker::Backoff;
///
/// let fixed = Backoff::fixed(Duration::from_secs(30));
/// let growing = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(60))
///     .multiplier(2.0)
///     .jitter(0.1);
/// # let _ = (fixed, growing);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Backoff {
    kind: Kind,
}

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    Fixed(Duration),
    Exponential {
        initial: Duration,
        max: Duration,
        multiplier: f64,
        jitter: f64,
    },
}

impl Backoff {
    /// The same open duration every time.
    pub fn fixed(duration: Duration) -> Self {
        Backoff {
            kind: Kind::Fixed(duration),
        }
    }

    /// `initial`, then multiplied (by 2 unless told otherwise) each time the
    /// breaker reopens without having closed, up to `max`. No jitter unless
    /// told: the durations are deterministic.
    pub fn exponential(initial: Duration, max: Duration) -> Self {
        Backoff {
            kind: Kind::Exponential {
                initial,
                max,
                multiplier: 2.0,
                jitter: 0.0,
            },
        }
    }

    /// The growth factor of an exponential backoff (at least 1).
    pub fn multiplier(mut self, factor: f64) -> Self {
        if let Kind::Exponential { multiplier, .. } = &mut self.kind {
            *multiplier = factor;
        }
        self
    }

    /// Random spread of an exponential backoff, as a fraction in `0..=1`:
    /// each duration is scaled by a factor drawn from `[1 - j, 1 + j]`, then
    /// capped at `max`.
    pub fn jitter(mut self, fraction: f64) -> Self {
        if let Kind::Exponential { jitter, .. } = &mut self.kind {
            *jitter = fraction;
        }
        self
    }

    /// The open duration after `attempt` opens in a row (0 for the first).
    pub(crate) fn duration(&self, attempt: u32, random: impl FnOnce() -> f64) -> Duration {
        match self.kind {
            Kind::Fixed(d) => d,
            Kind::Exponential {
                initial,
                max,
                multiplier,
                jitter,
            } => {
                let grown = initial.as_secs_f64() * multiplier.powi(attempt.min(1024) as i32);
                let spread = if jitter > 0.0 {
                    1.0 + jitter * (2.0 * random() - 1.0)
                } else {
                    1.0
                };
                let secs = (grown * spread).min(max.as_secs_f64()).max(0.0);
                Duration::try_from_secs_f64(secs).unwrap_or(max).min(max)
            }
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        match self.kind {
            Kind::Fixed(d) if d.is_zero() => Err(ConfigError::new(
                "open_duration",
                "must be greater than zero",
            )),
            Kind::Fixed(_) => Ok(()),
            Kind::Exponential {
                initial,
                max,
                multiplier,
                jitter,
            } => {
                if initial.is_zero() {
                    return Err(ConfigError::new(
                        "backoff.initial",
                        "must be greater than zero",
                    ));
                }
                if max < initial {
                    return Err(ConfigError::new(
                        "backoff.max",
                        "must be at least the initial duration",
                    ));
                }
                if !multiplier.is_finite() || multiplier < 1.0 {
                    return Err(ConfigError::new(
                        "backoff.multiplier",
                        "must be a finite number of at least 1",
                    ));
                }
                if !(0.0..=1.0).contains(&jitter) {
                    return Err(ConfigError::new(
                        "backoff.jitter",
                        "must be between 0 and 1",
                    ));
                }
                Ok(())
            }
        }
    }
}

impl Default for Backoff {
    /// 30 seconds, fixed.
    fn default() -> Self {
        Backoff::fixed(Duration::from_secs(30))
    }
}

/// A small lock-free random source for jitter (splitmix64); not for secrets.
#[derive(Debug)]
pub(crate) struct Jitter {
    state: AtomicU64,
}

impl Jitter {
    pub(crate) fn new(seed: u64) -> Self {
        Jitter {
            state: AtomicU64::new(seed),
        }
    }

    /// A number in `[0, 1)`.
    pub(crate) fn next(&self) -> f64 {
        let mut z = self
            .state
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Clamps a server's hint (Retry-After) into nanoseconds under `cap`.
pub(crate) fn hint_nanos(hint: Duration, cap: Duration) -> u64 {
    duration_nanos(hint.min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_grows_and_caps_deterministically_without_jitter() {
        let b = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(10));
        let d: Vec<_> = (0..6).map(|a| b.duration(a, || 0.9).as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn jitter_stays_within_its_spread() {
        let b = Backoff::exponential(Duration::from_secs(10), Duration::from_secs(100)).jitter(0.5);
        assert_eq!(b.duration(0, || 0.0), Duration::from_secs(5));
        assert_eq!(b.duration(0, || 0.5), Duration::from_secs(10));
        let j = Jitter::new(7);
        for _ in 0..1000 {
            let d = b.duration(0, || j.next());
            assert!(d >= Duration::from_secs(5) && d <= Duration::from_secs(15));
        }
    }

    #[test]
    fn invalid_backoffs_name_their_field() {
        let err = Backoff::fixed(Duration::ZERO).validate().unwrap_err();
        assert_eq!(err.field(), "open_duration");
        let err = Backoff::exponential(Duration::from_secs(2), Duration::from_secs(1))
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "backoff.max");
        let err = Backoff::exponential(Duration::from_secs(1), Duration::from_secs(2))
            .jitter(2.0)
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "backoff.jitter");
    }
}
