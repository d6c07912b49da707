//! The aggregated side of a breaker histogram: classic buckets for the
//! text format, and optionally the sparse exponential buckets of a
//! Prometheus native histogram for the protobuf format.
//!
//! Samples are pushed lock-free by the request path into an
//! [`AtomicBucket`](metrics_util::storage::AtomicBucket) and moved here when
//! the exposition is rendered (or at upkeep), under the store's lock.
//!
//! # Native buckets
//!
//! A native histogram of schema `s` has bucket boundaries at powers of
//! `2^(2^-s)`: bucket `i` holds the values in `(2^((i-1)/2^s), 2^(i/2^s)]`,
//! so schema 3 grows each boundary by about 9%. Values at or below the zero
//! threshold go to the zero bucket. When more than `max_buckets` buckets are
//! in use, the schema is lowered by one (each pair of neighbours merged, half
//! the resolution), as the Go client does.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

/// The settings of native histograms.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct NativeConfig {
    /// The starting schema (-4..=8).
    pub(crate) schema: i32,
    /// The most buckets kept before the resolution is halved.
    pub(crate) max_buckets: usize,
    /// Values at or below this (in absolute value) count in the zero bucket.
    pub(crate) zero_threshold: f64,
}

impl Default for NativeConfig {
    fn default() -> Self {
        // The Go client's defaults with a bucket factor of 1.1.
        NativeConfig {
            schema: 3,
            max_buckets: 160,
            zero_threshold: 2f64.powi(-128),
        }
    }
}

/// Sparse exponential buckets.
#[derive(Clone)]
pub(crate) struct Native {
    pub(crate) schema: i32,
    max_buckets: usize,
    pub(crate) zero_threshold: f64,
    pub(crate) zero_count: u64,
    pub(crate) positive: BTreeMap<i32, u64>,
    pub(crate) negative: BTreeMap<i32, u64>,
    /// The upper bounds of the buckets within one power of two, as
    /// fractions in `[0.5, 1)` (for schemas above 0).
    bounds: Arc<[f64]>,
}

impl fmt::Debug for Native {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Native")
            .field("schema", &self.schema)
            .field("buckets", &(self.positive.len() + self.negative.len()))
            .finish_non_exhaustive()
    }
}

fn bounds(schema: i32) -> Arc<[f64]> {
    if schema <= 0 {
        return Arc::from([]);
    }
    let n = 1usize << schema;
    (0..n)
        .map(|j| 2f64.powf(j as f64 / n as f64 - 1.0))
        .collect()
}

impl Native {
    pub(crate) fn new(config: &NativeConfig) -> Self {
        let schema = config.schema.clamp(-4, 8);
        Native {
            schema,
            max_buckets: config.max_buckets.max(1),
            zero_threshold: config.zero_threshold.max(0.0),
            zero_count: 0,
            positive: BTreeMap::new(),
            negative: BTreeMap::new(),
            bounds: bounds(schema),
        }
    }

    /// The index of the bucket holding `v > 0` at the current schema.
    pub(crate) fn index(&self, v: f64) -> i32 {
        let (frac, exp) = frexp(v);
        if self.schema > 0 {
            // The first bound not below frac: frac in (bounds[j-1], bounds[j]].
            let j = self.bounds.partition_point(|b| *b < frac) as i32;
            j + (exp - 1) * (1 << self.schema)
        } else {
            let mut key = exp;
            if frac == 0.5 {
                key -= 1;
            }
            let offset = (1 << -self.schema) - 1;
            (key + offset) >> -self.schema
        }
    }

    fn observe(&mut self, v: f64) {
        if v.is_nan() {
            return;
        }
        if v.abs() <= self.zero_threshold {
            self.zero_count += 1;
            return;
        }
        let key = self.index(v.abs().min(f64::MAX));
        let side = if v > 0.0 {
            &mut self.positive
        } else {
            &mut self.negative
        };
        *side.entry(key).or_insert(0) += 1;
        while self.positive.len() + self.negative.len() > self.max_buckets && self.schema > -4 {
            self.halve();
        }
    }

    /// Lowers the schema by one: bucket `i` becomes `ceil(i / 2)`.
    fn halve(&mut self) {
        let merge = |side: &mut BTreeMap<i32, u64>| {
            let old = std::mem::take(side);
            for (key, count) in old {
                *side.entry((key + 1).div_euclid(2)).or_insert(0) += count;
            }
        };
        merge(&mut self.positive);
        merge(&mut self.negative);
        self.schema -= 1;
        self.bounds = bounds(self.schema);
    }
}

/// `v = frac * 2^exp` with `frac` in `[0.5, 1)`, for finite `v > 0`.
fn frexp(v: f64) -> (f64, i32) {
    let bits = v.to_bits();
    let exp_bits = ((bits >> 52) & 0x7ff) as i32;
    if exp_bits == 0 {
        // Subnormal: scale into the normal range first.
        let (frac, exp) = frexp(v * 2f64.powi(64));
        return (frac, exp - 64);
    }
    let frac = f64::from_bits((bits & !(0x7ffu64 << 52)) | (1022u64 << 52));
    (frac, exp_bits - 1022)
}

/// One histogram series, aggregated. Its classic bucket counts live in
/// the family's flat array (`bounds.len() + 1` per series, the last one
/// `+Inf`'s own, not cumulative), so a render reads them in order.
#[derive(Debug, Default)]
pub(crate) struct Distribution {
    pub(crate) sum: f64,
    pub(crate) count: u64,
    pub(crate) native: Option<Box<Native>>,
}

impl Distribution {
    pub(crate) fn new(native: Option<&NativeConfig>) -> Self {
        Distribution {
            sum: 0.0,
            count: 0,
            native: native.map(|c| Box::new(Native::new(c))),
        }
    }

    /// Adds `samples`, counting each in `counts` (this series' buckets).
    pub(crate) fn record(&mut self, bounds: &[f64], counts: &mut [u64], samples: &[f64]) {
        for &v in samples {
            let i = bounds.partition_point(|b| *b < v);
            counts[i] += 1;
            self.sum += v;
            self.count += 1;
            if let Some(native) = &mut self.native {
                native.observe(v);
            }
        }
    }
}

/// `(upper bound, cumulative count)` for each classic bucket but `+Inf`.
pub(crate) fn cumulative<'a>(
    bounds: &'a [f64],
    counts: &'a [u64],
) -> impl Iterator<Item = (f64, u64)> + 'a {
    bounds
        .iter()
        .zip(counts.iter())
        .scan(0u64, |total, (bound, count)| {
            *total += count;
            Some((*bound, *total))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper(schema: i32, i: i32) -> f64 {
        2f64.powf(i as f64 / 2f64.powi(schema))
    }

    #[test]
    fn values_fall_in_the_bucket_that_bounds_them() {
        for schema in [-4, -1, 0, 1, 3, 8] {
            let native = Native::new(&NativeConfig {
                schema,
                ..NativeConfig::default()
            });
            for v in [1e-6, 0.0004, 0.001, 0.3, 0.5, 1.0, 1.5, 2.0, 3.0, 1234.5] {
                let i = native.index(v);
                let (lo, hi) = (upper(schema, i - 1), upper(schema, i));
                // Exact powers may sit on a bound: allow one ulp of slack.
                assert!(
                    v > lo * (1.0 - 1e-12) && v <= hi * (1.0 + 1e-12),
                    "schema {schema}: {v} in bucket {i} = ({lo}, {hi}]"
                );
            }
        }
    }

    #[test]
    fn powers_of_two_are_upper_bounds() {
        let native = Native::new(&NativeConfig::default());
        assert_eq!(native.index(1.0), 0);
        assert_eq!(native.index(2.0), 8);
        assert_eq!(native.index(0.5), -8);
    }

    #[test]
    fn too_many_buckets_halve_the_resolution() {
        let mut native = Native::new(&NativeConfig {
            schema: 3,
            max_buckets: 4,
            ..NativeConfig::default()
        });
        for v in [1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.7, 1.9] {
            native.observe(v);
        }
        assert!(native.positive.len() <= 4);
        assert!(native.schema < 3);
        assert_eq!(native.positive.values().sum::<u64>(), 8);
        // Every value is still in a bucket that bounds it.
        for v in [1.0, 1.5, 1.9] {
            let i = native.index(v);
            assert!(native.positive.contains_key(&i), "{v} -> {i}");
        }
    }

    #[test]
    fn classic_buckets_are_cumulative() {
        let bounds = [0.1, 1.0];
        let mut counts = [0; 3];
        let mut d = Distribution::new(None);
        d.record(&bounds, &mut counts, &[0.05, 0.1, 0.5, 3.0]);
        assert_eq!(counts, [2, 1, 1]);
        assert_eq!(
            cumulative(&bounds, &counts).collect::<Vec<_>>(),
            [(0.1, 2), (1.0, 3)]
        );
        assert_eq!(d.count, 4);
        assert!((d.sum - 3.65).abs() < 1e-12);
    }

    #[test]
    fn zero_and_negative_values() {
        let mut native = Native::new(&NativeConfig::default());
        native.observe(0.0);
        native.observe(-2.0);
        native.observe(f64::NAN);
        assert_eq!(native.zero_count, 1);
        assert_eq!(native.negative.get(&8), Some(&1));
    }
}
