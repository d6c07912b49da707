//! Bad input: every invalid builder setting is refused with a `ConfigError`
//! naming the field, and hostile breaker names never break the Prometheus
//! text they end up in.

use std::time::Duration;

use tower_breaker::metrics::sanitize_label;
use tower_breaker::{Backoff, Builder, CircuitBreakerLayer, MAX_WINDOW_SIZE};

fn b() -> Builder {
    CircuitBreakerLayer::builder().name("bad-input")
}

fn exp(initial: u64, max: u64) -> Backoff {
    Backoff::exponential(Duration::from_millis(initial), Duration::from_millis(max))
}

#[test]
fn every_invalid_setting_names_its_field() {
    let s = Duration::from_secs;
    let zero = Duration::ZERO;
    let table: Vec<(&str, Builder, &str)> = vec![
        ("empty name", b().name(""), "name"),
        ("blank name", b().name(" \t\n"), "name"),
        ("failure rate 0", b().failure_rate(0.0), "failure_rate"),
        ("failure rate < 0", b().failure_rate(-0.5), "failure_rate"),
        ("failure rate > 1", b().failure_rate(1.0001), "failure_rate"),
        (
            "failure rate NaN",
            b().failure_rate(f64::NAN),
            "failure_rate",
        ),
        (
            "failure rate inf",
            b().failure_rate(f64::INFINITY),
            "failure_rate",
        ),
        (
            "slow rate 0",
            b().slow_call_rate(0.0, s(1)),
            "slow_call_rate",
        ),
        (
            "slow rate > 1",
            b().slow_call_rate(2.0, s(1)),
            "slow_call_rate",
        ),
        (
            "slow rate NaN",
            b().slow_call_rate(f64::NAN, s(1)),
            "slow_call_rate",
        ),
        (
            "slow duration 0",
            b().slow_call_rate(0.5, zero),
            "slow_call_duration",
        ),
        (
            "consecutive 0",
            b().consecutive_failures(0),
            "consecutive_failures",
        ),
        ("minimum calls 0", b().minimum_calls(0), "minimum_calls"),
        (
            "minimum calls > window",
            b().count_window(10).minimum_calls(11),
            "minimum_calls",
        ),
        ("count window 0", b().count_window(0), "count_window"),
        (
            "count window too big",
            b().count_window(MAX_WINDOW_SIZE + 1),
            "count_window",
        ),
        (
            "count window usize::MAX",
            b().count_window(usize::MAX),
            "count_window",
        ),
        (
            "time window 0 buckets",
            b().time_window(s(10), 0),
            "time_window",
        ),
        (
            "time window too many buckets",
            b().time_window(s(100), 10_001),
            "time_window",
        ),
        (
            "time window buckets under 1 ms",
            b().time_window(Duration::from_millis(9), 10),
            "time_window",
        ),
        (
            "time window span 0",
            b().time_window(zero, 1),
            "time_window",
        ),
        ("permits 0", b().half_open_permits(0), "half_open_permits"),
        (
            "permits over the word's count",
            b().half_open_permits(65_536),
            "half_open_permits",
        ),
        (
            "permits u32::MAX",
            b().half_open_permits(u32::MAX),
            "half_open_permits",
        ),
        (
            "successes 0",
            b().half_open_successes(0),
            "half_open_successes",
        ),
        (
            "successes > permits",
            b().half_open_permits(3).half_open_successes(4),
            "half_open_successes",
        ),
        (
            "successes > default permits",
            b().half_open_successes(4),
            "half_open_successes",
        ),
        (
            "max wait 0",
            b().max_half_open_wait(zero),
            "max_half_open_wait",
        ),
        (
            "fixed open duration 0",
            b().open_duration(Backoff::fixed(zero)),
            "open_duration",
        ),
        (
            "backoff initial 0",
            b().open_duration(exp(0, 10)),
            "backoff.initial",
        ),
        (
            "backoff max < initial",
            b().open_duration(exp(10, 9)),
            "backoff.max",
        ),
        (
            "backoff multiplier < 1",
            b().open_duration(exp(1, 10).multiplier(0.5)),
            "backoff.multiplier",
        ),
        (
            "backoff multiplier NaN",
            b().open_duration(exp(1, 10).multiplier(f64::NAN)),
            "backoff.multiplier",
        ),
        (
            "backoff multiplier inf",
            b().open_duration(exp(1, 10).multiplier(f64::INFINITY)),
            "backoff.multiplier",
        ),
        (
            "backoff jitter < 0",
            b().open_duration(exp(1, 10).jitter(-0.1)),
            "backoff.jitter",
        ),
        (
            "backoff jitter > 1",
            b().open_duration(exp(1, 10).jitter(1.5)),
            "backoff.jitter",
        ),
        (
            "backoff jitter NaN",
            b().open_duration(exp(1, 10).jitter(f64::NAN)),
            "backoff.jitter",
        ),
        (
            "retry-after cap 0",
            b().retry_after_cap(zero),
            "retry_after_cap",
        ),
        ("empty prefix", b().metrics_prefix(""), "metrics_prefix"),
        (
            "prefix digit first",
            b().metrics_prefix("1cb"),
            "metrics_prefix",
        ),
        (
            "prefix dash",
            b().metrics_prefix("circuit-breaker"),
            "metrics_prefix",
        ),
        ("prefix space", b().metrics_prefix("cb x"), "metrics_prefix"),
        (
            "prefix brace",
            b().metrics_prefix("cb{x}"),
            "metrics_prefix",
        ),
        (
            "prefix newline",
            b().metrics_prefix("cb\n"),
            "metrics_prefix",
        ),
        (
            "prefix unicode",
            b().metrics_prefix("disjoncteur_é"),
            "metrics_prefix",
        ),
    ];
    let mut failures = Vec::new();
    for (case, builder, field) in table {
        match builder.build() {
            Ok(_) => failures.push(format!("{case}: built, expected an error on `{field}`")),
            Err(err) => {
                let shown = err.to_string();
                if err.field() != field || !shown.contains(field) {
                    failures.push(format!(
                        "{case}: field {:?}, message {shown:?}, expected `{field}`",
                        err.field()
                    ));
                }
                if shown.chars().next().is_some_and(char::is_uppercase) {
                    failures.push(format!("{case}: message not lowercase: {shown:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_edges_of_the_valid_ranges_build() {
    let ok: Vec<(&str, Builder)> = vec![
        ("failure rate 1", b().failure_rate(1.0)),
        ("tiny failure rate", b().failure_rate(f64::MIN_POSITIVE)),
        (
            "slow rate 1",
            b().slow_call_rate(1.0, Duration::from_nanos(1)),
        ),
        ("count window max", b().count_window(MAX_WINDOW_SIZE)),
        ("count window 1", b().count_window(1).minimum_calls(1)),
        (
            "time window 1 ms buckets",
            b().time_window(Duration::from_millis(10), 10),
        ),
        (
            "time window max buckets",
            b().time_window(Duration::from_secs(10), 10_000),
        ),
        ("permits max", b().half_open_permits(2_047)),
        (
            "successes = permits",
            b().half_open_permits(5).half_open_successes(5),
        ),
        ("consecutive 1", b().consecutive_failures(1)),
        (
            "huge open duration",
            b().open_duration(Backoff::fixed(Duration::MAX)),
        ),
        (
            "jitter edges",
            b().open_duration(exp(1, 10).multiplier(1.0).jitter(1.0)),
        ),
        ("prefix with colon", b().metrics_prefix(":cb_1:x")),
        ("hostile name", b().name("\"}\n# HELP x")),
    ];
    for (case, builder) in ok {
        if let Err(e) = builder.build() {
            panic!("{case}: {e}");
        }
    }
}

/// Names that would break the exposition format if they reached it raw.
fn hostile_names() -> Vec<String> {
    vec![
        "quote\"inside".into(),
        "back\\slash".into(),
        "new\nline".into(),
        "carriage\rreturn".into(),
        "}{".into(),
        "svc\"} 1\n# TYPE evil counter\nevil 1".into(),
        "label=\"x\",other=\"y\"".into(),
        "ünïcödé ✓ 🚀 日本".into(),
        "\u{0}nul\u{7f}del\u{202e}rtl".into(),
        "x".repeat(10 * 1024),
        "🚀".repeat(3 * 1024),
        "".into(),
        " ".into(),
    ]
}

#[test]
fn sanitize_label_output_is_always_safe() {
    for name in hostile_names() {
        let clean = sanitize_label(&name);
        assert!(!clean.is_empty(), "{name:?}");
        assert!(clean.len() <= 64, "{name:?} -> {} bytes", clean.len());
        assert!(
            clean
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c)),
            "{name:?} -> {clean:?}"
        );
        assert_eq!(sanitize_label(&clean), clean, "sanitizing is idempotent");
    }
}

/// Checks one line of Prometheus text: a comment, or
/// `name{label="value",...} number` with escaped, newline-free values.
fn check_line(line: &str) -> Result<(), String> {
    if line.is_empty() || line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
        return Ok(());
    }
    let name_end = line
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .ok_or("no value")?;
    if name_end == 0 {
        return Err("no metric name".into());
    }
    let mut rest = &line[name_end..];
    if let Some(labels) = rest.strip_prefix('{') {
        rest = check_labels(labels)?;
    }
    let value = rest.strip_prefix(' ').ok_or("no space before value")?;
    let value = value.split(' ').next().unwrap_or_default();
    if value.parse::<f64>().is_err() && !["+Inf", "-Inf", "NaN"].contains(&value) {
        return Err(format!("bad value {value:?}"));
    }
    Ok(())
}

/// Checks `label="value",...}` and returns what follows the `}`.
fn check_labels(mut s: &str) -> Result<&str, String> {
    loop {
        if let Some(rest) = s.strip_prefix('}') {
            return Ok(rest);
        }
        let eq = s.find('=').ok_or("label without =")?;
        let name = &s[..eq];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("bad label name {name:?}"));
        }
        s = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?;
        let mut end = None;
        let mut escaped = false;
        for (i, c) in s.char_indices() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        s = &s[end.ok_or("unterminated label value")? + 1..];
        if let Some(more) = s.strip_prefix(',') {
            s = more;
        } else if !s.starts_with('}') {
            return Err(format!("junk after a label value: {s:?}"));
        }
    }
}

#[test]
fn the_line_checker_rejects_broken_lines() {
    assert!(check_line("a_total{service=\"x\",status=\"ok\"} 1").is_ok());
    assert!(check_line("a_bucket{le=\"+Inf\"} 3").is_ok());
    assert!(check_line("a 0.5").is_ok());
    assert!(check_line("a{service=\"x\"y\"} 1").is_err());
    assert!(check_line("a{service=\"x} 1").is_err());
    assert!(
        check_line("evil 1 extra{").is_ok(),
        "a timestamp-like tail is allowed"
    );
    assert!(check_line("{service=\"x\"} 1").is_err());
    assert!(check_line("a{service=\"x\"} one").is_err());
    assert!(check_line("# EVIL comment").is_err());
}

#[cfg(feature = "prometheus")]
#[test]
fn hostile_names_render_as_valid_prometheus_text() {
    use std::collections::HashSet;
    use tower::{service_fn, Layer, ServiceExt};

    let (recorder, handle) = tower_breaker::exporter::recorder();
    // Blank names are refused by the builder (see the table above).
    let names: Vec<String> = hostile_names()
        .into_iter()
        .filter(|n| !n.trim().is_empty())
        .collect();
    metrics::with_local_recorder(&recorder, || {
        let mut layers = Vec::new();
        for name in &names {
            let layer = CircuitBreakerLayer::builder()
                .name(name.clone())
                .build()
                .expect("any name but a blank one builds");
            let svc = layer.layer(service_fn(|fail: bool| async move {
                if fail {
                    Err(std::io::Error::other("boom"))
                } else {
                    Ok(())
                }
            }));
            for fail in [false, true] {
                let _ = futures::executor::block_on(svc.clone().oneshot(fail));
            }
            layer.handle().force_open();
            layers.push(layer);
        }
        let text = handle.render();
        let mut services = HashSet::new();
        for line in text.lines() {
            if let Err(e) = check_line(line) {
                panic!("invalid line {line:?}: {e}");
            }
            if let Some(at) = line.find("service=\"") {
                let value = &line[at + 9..];
                let value = &value[..value.find('"').unwrap()];
                services.insert(value.to_owned());
            }
        }
        for name in &names {
            let clean = sanitize_label(name);
            assert!(
                services.contains(&clean),
                "no series for {name:?} (as {clean:?})"
            );
        }
        for s in &services {
            assert!(s.len() <= 64, "{s:?}");
            assert!(
                s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c)),
                "unsanitized label value {s:?}"
            );
        }
        assert!(
            !text
                .lines()
                .any(|l| l.starts_with("evil") || l.contains("TYPE evil")),
            "an injected series reached the output"
        );
        drop(layers);
    });
}
