//! The Prometheus protobuf exposition (`io.prometheus.client.MetricFamily`,
//! length-delimited), written by hand: the few messages it needs do not
//! justify a code generator and a `protoc` at build time.
//!
//! It carries what the text format cannot: native histograms. The breaker's
//! own families are encoded from the store; everything else the recorder
//! holds is taken from the exporter's text and re-encoded.

use std::collections::BTreeMap;

use super::exposition::{self, Kind};
use super::histogram::{cumulative, Distribution, Native};

/// The content type of the length-delimited protobuf exposition.
pub(crate) const CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// Whether an `Accept` header asks for the protobuf exposition.
pub(crate) fn accepts(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let mut params = part.split(';').map(str::trim);
        params.next() == Some("application/vnd.google.protobuf")
            && params.any(|p| {
                p.strip_prefix("proto=")
                    .is_some_and(|v| v.trim_matches('"') == "io.prometheus.client.MetricFamily")
            })
    })
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn uint(out: &mut Vec<u8>, field: u32, v: u64) {
    tag(out, field, 0);
    varint(out, v);
}

fn sint(out: &mut Vec<u8>, field: u32, v: i64) {
    tag(out, field, 0);
    varint(out, zigzag(v));
}

fn double(out: &mut Vec<u8>, field: u32, v: f64) {
    tag(out, field, 1);
    out.extend_from_slice(&v.to_le_bytes());
}

fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    tag(out, field, 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A label pair message.
fn label_pair(name: &str, value: &str) -> Vec<u8> {
    let mut m = Vec::with_capacity(name.len() + value.len() + 4);
    bytes(&mut m, 1, name.as_bytes());
    bytes(&mut m, 2, value.as_bytes());
    m
}

/// Reads back a rendered label set (`a="x",b="y\"z"`) as pairs.
pub(crate) fn parse_labels(labels: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut rest = labels;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq].trim_start_matches(',').to_owned();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => {}
                },
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        pairs.push((name, value));
        rest = &rest[end.min(rest.len())..];
    }
    pairs
}

/// Undoes the text format's escapes of a description.
pub(crate) fn unescape_help(help: &str) -> String {
    let mut out = String::with_capacity(help.len());
    let mut chars = help.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('n') => out.push('\n'),
                Some(c) => out.push(c),
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// What one metric of a family holds.
pub(crate) enum Value<'a> {
    Counter(f64),
    Gauge(f64),
    Untyped(f64),
    /// A breaker histogram: its distribution, bucket bounds and counts.
    Histogram(&'a Distribution, &'a [f64], &'a [u64]),
    /// Classic buckets (upper bound, cumulative count, without `+Inf`),
    /// sum and count.
    Buckets(Vec<(f64, u64)>, f64, u64),
    /// Quantiles, sum and count.
    Summary(Vec<(f64, f64)>, f64, u64),
}

fn spans(out: &mut Vec<u8>, span_field: u32, delta_field: u32, buckets: &BTreeMap<i32, u64>) {
    let mut deltas = Vec::new();
    let mut previous_index: Option<i32> = None;
    let mut previous_count = 0i64;
    let mut span: Option<(i32, u32)> = None;
    let flush = |out: &mut Vec<u8>, span: (i32, u32)| {
        let mut m = Vec::new();
        sint(&mut m, 1, i64::from(span.0));
        uint(&mut m, 2, u64::from(span.1));
        bytes(out, span_field, &m);
    };
    for (&index, &count) in buckets {
        match (previous_index, span.as_mut()) {
            (Some(p), Some(s)) if index == p + 1 => s.1 += 1,
            (p, s) => {
                if let Some(s) = s {
                    let s = *s;
                    flush(out, s);
                }
                // The first span's offset is its index; later ones count
                // the empty buckets since the previous span.
                let offset = p.map_or(index, |p| index - p - 1);
                span = Some((offset, 1));
            }
        }
        let count = count as i64;
        varint(&mut deltas, zigzag(count - previous_count));
        previous_count = count;
        previous_index = Some(index);
    }
    if let Some(s) = span {
        flush(out, s);
    }
    if !deltas.is_empty() {
        bytes(out, delta_field, &deltas);
    }
}

fn native(out: &mut Vec<u8>, native: &Native) {
    sint(out, 5, i64::from(native.schema));
    double(out, 6, native.zero_threshold);
    uint(out, 7, native.zero_count);
    spans(out, 9, 10, &native.negative);
    spans(out, 12, 13, &native.positive);
}

fn classic_buckets(out: &mut Vec<u8>, buckets: impl Iterator<Item = (f64, u64)>) {
    for (bound, count) in buckets {
        let mut b = Vec::with_capacity(12);
        uint(&mut b, 1, count);
        double(&mut b, 2, bound);
        bytes(out, 3, &b);
    }
}

/// One `Metric` message.
pub(crate) fn metric(labels: &[(String, String)], value: Value<'_>) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    for (name, v) in labels {
        bytes(&mut m, 1, &label_pair(name, v));
    }
    let mut inner = Vec::with_capacity(16);
    let field = match value {
        Value::Gauge(v) => {
            double(&mut inner, 1, v);
            2
        }
        Value::Counter(v) => {
            double(&mut inner, 1, v);
            3
        }
        Value::Untyped(v) => {
            double(&mut inner, 1, v);
            5
        }
        Value::Summary(quantiles, sum, count) => {
            uint(&mut inner, 1, count);
            double(&mut inner, 2, sum);
            for (q, v) in quantiles {
                let mut qm = Vec::with_capacity(18);
                double(&mut qm, 1, q);
                double(&mut qm, 2, v);
                bytes(&mut inner, 3, &qm);
            }
            4
        }
        Value::Buckets(buckets, sum, count) => {
            uint(&mut inner, 1, count);
            double(&mut inner, 2, sum);
            classic_buckets(&mut inner, buckets.into_iter());
            7
        }
        Value::Histogram(dist, bounds, counts) => {
            uint(&mut inner, 1, dist.count);
            double(&mut inner, 2, dist.sum);
            classic_buckets(&mut inner, cumulative(bounds, counts));
            if let Some(n) = &dist.native {
                native(&mut inner, n);
            }
            7
        }
    };
    bytes(&mut m, field, &inner);
    m
}

/// Appends one length-delimited `MetricFamily`.
pub(crate) fn family<'m>(
    out: &mut Vec<u8>,
    name: &str,
    help: Option<&str>,
    kind: &str,
    metrics: impl Iterator<Item = &'m [u8]>,
) {
    let mut f = Vec::with_capacity(256);
    bytes(&mut f, 1, name.as_bytes());
    if let Some(help) = help {
        bytes(&mut f, 2, help.as_bytes());
    }
    let kind = match kind {
        "counter" => 0,
        "gauge" => 1,
        "summary" => 2,
        "histogram" => 4,
        _ => 3,
    };
    uint(&mut f, 3, kind);
    for m in metrics {
        bytes(&mut f, 4, m);
    }
    varint(out, f.len() as u64);
    out.extend_from_slice(&f);
}

/// Re-encodes a text exposition (the exporter's) as protobuf.
pub(crate) fn from_text(text: &str, out: &mut Vec<u8>) {
    for fam in exposition::parse_lenient(text) {
        let help = fam
            .help
            .and_then(|h| h.strip_prefix("# HELP "))
            .and_then(|h| h.split_once(' '))
            .map(|(_, h)| unescape_help(h));
        let kind = match fam.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
            Kind::Summary => "summary",
            Kind::Untyped => "untyped",
        };
        let owned = |s: &exposition::Sample<'_>, skip: &str| -> Vec<(String, String)> {
            s.labels
                .iter()
                .filter(|(n, _)| *n != skip)
                .map(|(n, v)| ((*n).to_owned(), v.to_string()))
                .collect()
        };
        let mut metrics = Vec::new();
        match fam.kind {
            Kind::Counter | Kind::Gauge | Kind::Untyped => {
                for s in &fam.samples {
                    let value = match fam.kind {
                        Kind::Counter => Value::Counter(s.value),
                        Kind::Gauge => Value::Gauge(s.value),
                        _ => Value::Untyped(s.value),
                    };
                    metrics.push(metric(&owned(s, ""), value));
                }
            }
            Kind::Histogram | Kind::Summary => {
                let skip = if fam.kind == Kind::Histogram {
                    "le"
                } else {
                    "quantile"
                };
                // Each series: its points, sum and count, in order of appearance.
                type Series = (Vec<(f64, f64)>, f64, f64);
                let mut order: Vec<Vec<(String, String)>> = Vec::new();
                let mut series: Vec<Series> = Vec::new();
                for s in &fam.samples {
                    let labels = owned(s, skip);
                    let i = match order.iter().position(|l| *l == labels) {
                        Some(i) => i,
                        None => {
                            order.push(labels);
                            series.push((Vec::new(), 0.0, 0.0));
                            order.len() - 1
                        }
                    };
                    let entry = &mut series[i];
                    if s.name.ends_with("_sum") {
                        entry.1 = s.value;
                    } else if s.name.ends_with("_count") {
                        entry.2 = s.value;
                    } else if let Some(point) = s.label(skip).and_then(|p| match p {
                        "+Inf" => Some(f64::INFINITY),
                        p => p.parse::<f64>().ok(),
                    }) {
                        entry.0.push((point, s.value));
                    }
                }
                for (labels, (points, sum, count)) in order.iter().zip(series) {
                    let value = if fam.kind == Kind::Histogram {
                        let buckets = points
                            .into_iter()
                            .filter(|(le, _)| le.is_finite())
                            .map(|(le, c)| (le, c as u64))
                            .collect();
                        Value::Buckets(buckets, sum, count as u64)
                    } else {
                        Value::Summary(points, sum, count as u64)
                    };
                    metrics.push(metric(labels, value));
                }
            }
        }
        family(
            out,
            fam.name,
            help.as_deref(),
            kind,
            metrics.iter().map(Vec::as_slice),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal reader of the wire format, to check what was written.
    fn fields(mut b: &[u8]) -> Vec<(u32, Vec<u8>)> {
        fn read_varint(b: &mut &[u8]) -> u64 {
            let mut v = 0u64;
            let mut shift = 0;
            loop {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte < 0x80 {
                    return v;
                }
                shift += 7;
            }
        }
        let mut out = Vec::new();
        while !b.is_empty() {
            let key = read_varint(&mut b);
            let (field, wire) = ((key >> 3) as u32, key & 7);
            let value = match wire {
                0 => {
                    let v = read_varint(&mut b);
                    v.to_le_bytes().to_vec()
                }
                1 => {
                    let v = b[..8].to_vec();
                    b = &b[8..];
                    v
                }
                2 => {
                    let len = read_varint(&mut b) as usize;
                    let v = b[..len].to_vec();
                    b = &b[len..];
                    v
                }
                _ => panic!("wire type {wire}"),
            };
            out.push((field, value));
        }
        out
    }

    #[test]
    fn accept_header_negotiation() {
        assert!(accepts(
            "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.1"
        ));
        assert!(!accepts("text/plain;version=0.0.4;q=1,*/*;q=0.1"));
        assert!(!accepts("application/vnd.google.protobuf;proto=other"));
    }

    #[test]
    fn labels_read_back() {
        assert_eq!(
            parse_labels(r#"service="a\"b",status="x\\y\nz""#),
            [
                ("service".to_owned(), "a\"b".to_owned()),
                ("status".to_owned(), "x\\y\nz".to_owned())
            ]
        );
        assert!(parse_labels("").is_empty());
    }

    #[test]
    fn text_families_become_messages() {
        let text = "# HELP up Whether it is up.\n# TYPE up gauge\nup{job=\"a\"} 1\n\n\
                    # TYPE lat histogram\nlat_bucket{le=\"0.5\"} 1\nlat_bucket{le=\"+Inf\"} 2\n\
                    lat_sum 0.75\nlat_count 2\n";
        let mut out = Vec::new();
        from_text(text, &mut out);
        // Two delimited families.
        let first_len = out[0] as usize;
        let up = fields(&out[1..1 + first_len]);
        assert_eq!(up[0], (1, b"up".to_vec()));
        assert_eq!(up[1], (2, b"Whether it is up.".to_vec()));
        assert_eq!(up[2].0, 3);
        assert_eq!(up[2].1[0], 1); // GAUGE
        let rest = &out[1 + first_len..];
        let lat = fields(&rest[1..1 + rest[0] as usize]);
        assert_eq!(lat[1].1[0], 4); // HISTOGRAM
        let metric = fields(&lat[2].1);
        let histogram = fields(&metric[0].1);
        assert_eq!(histogram[0], (1, 2u64.to_le_bytes().to_vec())); // count
        assert_eq!(histogram[1], (2, 0.75f64.to_le_bytes().to_vec())); // sum
                                                                       // One finite bucket: +Inf is implied by the count.
        assert_eq!(histogram.iter().filter(|(f, _)| *f == 3).count(), 1);
    }

    #[test]
    fn native_spans_and_deltas() {
        let mut buckets = BTreeMap::new();
        buckets.insert(-2, 3u64);
        buckets.insert(-1, 1);
        buckets.insert(3, 4);
        let mut out = Vec::new();
        spans(&mut out, 12, 13, &buckets);
        let f = fields(&out);
        // Span 1: offset -2, length 2. Span 2: offset 3 (three empty buckets), length 1.
        let span = |b: &[u8]| {
            let s = fields(b);
            let offset = u64::from_le_bytes(s[0].1.clone().try_into().unwrap());
            let length = u64::from_le_bytes(s[1].1.clone().try_into().unwrap());
            (offset, length)
        };
        assert_eq!(span(&f[0].1), (zigzag(-2), 2));
        assert_eq!(span(&f[1].1), (zigzag(3), 1));
        // Deltas: 3, -2, +3.
        assert_eq!(f[2], (13, vec![6, 3, 6]));
    }
}
