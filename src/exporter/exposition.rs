//! A small parser and writer of the Prometheus text exposition format
//! (version 0.0.4), for filtering and reshaping what the recorder renders:
//! scopes work on parsed samples and labels, never on regular expressions
//! over the text.
//!
//! The parser is strict about structure (a sample is a metric name, an
//! optional label set, a value and an optional timestamp; label values are
//! quoted with `\\`, `\"` and `\n` escapes) and never panics: any input
//! either parses or gives an error with its line number.

use std::borrow::Cow;
use std::fmt::{self, Write as _};

/// The type a `# TYPE` line declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
    Summary,
    Untyped,
}

impl Kind {
    fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "counter" => Kind::Counter,
            "gauge" => Kind::Gauge,
            "histogram" => Kind::Histogram,
            "summary" => Kind::Summary,
            "untyped" => Kind::Untyped,
            _ => return None,
        })
    }
}

/// One sample line.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sample<'a> {
    /// The line as it was, without its end of line.
    pub(crate) raw: &'a str,
    /// The sample's name (`x_bucket` for a bucket of histogram `x`).
    pub(crate) name: &'a str,
    /// Label names and unescaped values, in order.
    pub(crate) labels: Vec<(&'a str, Cow<'a, str>)>,
    pub(crate) value: f64,
}

impl Sample<'_> {
    /// The value of label `name`, if the sample has it.
    pub(crate) fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_ref())
    }
}

/// A metric family: its metadata lines and its samples.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Family<'a> {
    pub(crate) name: &'a str,
    pub(crate) kind: Kind,
    /// The `# HELP` line as it was, if any.
    pub(crate) help: Option<&'a str>,
    /// The `# TYPE` line as it was, if any.
    pub(crate) type_line: Option<&'a str>,
    pub(crate) samples: Vec<Sample<'a>>,
}

/// Why a text did not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ParseError {
    pub(crate) line: usize,
    pub(crate) reason: &'static str,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// Parses an exposition into its families, in order.
pub(crate) fn parse(text: &str) -> Result<Vec<Family<'_>>, ParseError> {
    let mut families: Vec<Family<'_>> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        parse_line(&mut families, line).map_err(|reason| ParseError {
            line: index + 1,
            reason,
        })?;
    }
    Ok(families)
}

/// Parses an exposition, leaving out the lines that do not parse (a sample
/// whose family or labels cannot be read, metadata it cannot read), so one
/// odd line does not cost every other series.
pub(crate) fn parse_lenient(text: &str) -> Vec<Family<'_>> {
    let mut families: Vec<Family<'_>> = Vec::new();
    for line in text.lines() {
        let _ = parse_line(&mut families, line);
    }
    families
}

/// Adds one line to the families.
fn parse_line<'a>(families: &mut Vec<Family<'a>>, line: &'a str) -> Result<(), &'static str> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.trim().is_empty() {
        return Ok(());
    }
    if let Some(comment) = line.strip_prefix('#') {
        let mut words = comment.trim_start().splitn(3, ' ');
        let keyword = words.next().unwrap_or("");
        if keyword != "HELP" && keyword != "TYPE" {
            return Ok(()); // A plain comment.
        }
        let name = words
            .next()
            .filter(|n| is_metric_name(n))
            .ok_or("bad metric name")?;
        let rest = words.next().unwrap_or("");
        if keyword == "TYPE" {
            let kind = Kind::parse(rest.trim()).ok_or("unknown metric type")?;
            let family = family_for(families, name, true);
            family.kind = kind;
            family.type_line = Some(line);
        } else {
            family_for(families, name, true).help = Some(line);
        }
        return Ok(());
    }
    let sample = parse_sample(line)?;
    let family_name = family_of(families, sample.name);
    family_for(families, family_name, false)
        .samples
        .push(sample);
    Ok(())
}

/// The family a sample named `name` belongs to: the last family declared
/// that it is, or whose histogram or summary suffix it carries.
fn family_of<'a>(families: &[Family<'a>], name: &'a str) -> &'a str {
    if let Some(last) = families.last() {
        let suffixed = matches!(last.kind, Kind::Histogram | Kind::Summary)
            && name
                .strip_prefix(last.name)
                .is_some_and(|s| matches!(s, "_bucket" | "_sum" | "_count"));
        if name == last.name || suffixed {
            return last.name;
        }
    }
    name
}

/// The family named `name`: the last one if it has that name, else a new
/// one. A metadata line for a family that already has samples starts a new
/// one (the writer keeps them apart).
fn family_for<'f, 'a>(
    families: &'f mut Vec<Family<'a>>,
    name: &'a str,
    metadata: bool,
) -> &'f mut Family<'a> {
    let reuse = families
        .last()
        .is_some_and(|f| f.name == name && (!metadata || f.samples.is_empty()));
    if !reuse {
        families.push(Family {
            name,
            kind: Kind::Untyped,
            help: None,
            type_line: None,
            samples: Vec::new(),
        });
    }
    families.last_mut().expect("just pushed")
}

fn is_metric_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_' || b == b':')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
}

fn is_label_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn parse_sample(line: &str) -> Result<Sample<'_>, &'static str> {
    let name_end = line
        .find(['{', ' ', '\t'])
        .ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    if !is_metric_name(name) {
        return Err("bad metric name");
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = parse_value(fields.next().ok_or("a sample needs a value")?)?;
    if let Some(timestamp) = fields.next() {
        timestamp.parse::<i64>().map_err(|_| "bad timestamp")?;
    }
    if fields.next().is_some() {
        return Err("trailing text after the sample");
    }
    Ok(Sample {
        raw: line,
        name,
        labels,
        value,
    })
}

type Labels<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// Parses `name="value",...}` (after the `{`); returns the labels and what
/// follows the `}`.
fn parse_labels(mut s: &str) -> Result<(Labels<'_>, &str), &'static str> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("a label needs '='")?;
        let name = s[..eq].trim();
        if !is_label_name(name) {
            return Err("bad label name");
        }
        s = s[eq + 1..].trim_start();
        let body = s.strip_prefix('"').ok_or("a label value must be quoted")?;
        let (value, after) = parse_quoted(body)?;
        if labels
            .iter()
            .any(|(n, _): &(&str, Cow<'_, str>)| *n == name)
        {
            return Err("duplicate label");
        }
        labels.push((name, value));
        s = after.trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err("labels must be separated by ','");
        }
    }
}

/// Parses a quoted value's body (after the opening quote): the unescaped
/// value and what follows the closing quote.
fn parse_quoted(s: &str) -> Result<(Cow<'_, str>, &str), &'static str> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut owned: Option<String> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let value = match owned {
                    Some(v) => Cow::Owned(v),
                    None => Cow::Borrowed(&s[..i]),
                };
                return Ok((value, &s[i + 1..]));
            }
            b'\\' => {
                let out = owned.get_or_insert_with(|| s[..i].to_owned());
                match bytes.get(i + 1) {
                    Some(b'\\') => out.push('\\'),
                    Some(b'"') => out.push('"'),
                    Some(b'n') => out.push('\n'),
                    _ => return Err("bad escape in a label value"),
                }
                i += 2;
            }
            _ => {
                let c = s[i..].chars().next().ok_or("bad label value")?;
                if let Some(out) = owned.as_mut() {
                    out.push(c);
                }
                i += c.len_utf8();
            }
        }
    }
    Err("unterminated label value")
}

fn parse_value(s: &str) -> Result<f64, &'static str> {
    match s {
        "+Inf" | "Inf" | "inf" => Ok(f64::INFINITY),
        "-Inf" | "-inf" => Ok(f64::NEG_INFINITY),
        "NaN" | "nan" => Ok(f64::NAN),
        _ if s
            .bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')) =>
        {
            s.parse().map_err(|_| "bad sample value")
        }
        _ => Err("bad sample value"),
    }
}

/// Writes a sample line: `name{labels} value\n`.
pub(crate) fn write_sample<'l>(
    out: &mut String,
    name: &str,
    labels: impl IntoIterator<Item = (&'l str, &'l str)>,
    value: f64,
) {
    out.push_str(name);
    let mut first = true;
    for (label, value) in labels {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(label);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if !first {
        out.push('}');
    }
    out.push(' ');
    write_value(out, value);
    out.push('\n');
}

pub(crate) fn write_value(out: &mut String, value: f64) {
    if value.is_nan() {
        out.push_str("NaN");
    } else if value == f64::INFINITY {
        out.push_str("+Inf");
    } else if value == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        let _ = write!(out, "{value}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "# HELP cb_requests_total Calls.\n\
# TYPE cb_requests_total counter\n\
cb_requests_total{service=\"a\",status=\"success\"} 3\n\
cb_requests_total{service=\"b\\\"q\",status=\"failure\"} 1 1700000000\n\
\n\
# TYPE cb_duration_seconds histogram\n\
cb_duration_seconds_bucket{service=\"a\",le=\"0.5\"} 1\n\
cb_duration_seconds_bucket{service=\"a\",le=\"+Inf\"} 2\n\
cb_duration_seconds_sum{service=\"a\"} 0.75\n\
cb_duration_seconds_count{service=\"a\"} 2\n\
# a comment\n\
plain_gauge -1.5e-3\n";

    #[test]
    fn parses_families_samples_and_labels() {
        let families = parse(TEXT).unwrap();
        let names: Vec<_> = families
            .iter()
            .map(|f| (f.name, f.kind, f.samples.len()))
            .collect();
        assert_eq!(
            names,
            [
                ("cb_requests_total", Kind::Counter, 2),
                ("cb_duration_seconds", Kind::Histogram, 4),
                ("plain_gauge", Kind::Untyped, 1),
            ]
        );
        let second = &families[0].samples[1];
        assert_eq!(second.label("service"), Some("b\"q"));
        assert_eq!(second.label("status"), Some("failure"));
        assert_eq!(second.value, 1.0);
        assert_eq!(families[1].samples[1].value, 2.0);
        assert_eq!(families[1].samples[1].label("le"), Some("+Inf"));
        assert_eq!(families[2].samples[0].value, -0.0015);
        assert!(families[0].help.unwrap().starts_with("# HELP"));
    }

    #[test]
    fn rejects_malformed_lines_with_their_number() {
        for (bad, line) in [
            ("x{a=\"1\"", 1),
            ("x{a=1} 2", 1),
            ("x{1a=\"1\"} 2", 1),
            ("x{a=\"1\",a=\"2\"} 2", 1),
            ("ok 1\nx 1 2 3", 2),
            ("x{a=\"\\t\"} 1", 1),
            ("x one", 1),
            ("9x 1", 1),
            ("# TYPE x flavour", 1),
            ("x", 1),
        ] {
            let err = parse(bad).unwrap_err();
            assert_eq!(err.line, line, "{bad:?}: {err}");
        }
    }

    #[test]
    fn written_samples_parse_back_to_the_same() {
        let mut out = String::new();
        write_sample(&mut out, "m", [("a", "x\"y\\z\nw"), ("b", "é")], 0.25);
        write_sample(&mut out, "m", [], f64::INFINITY);
        let families = parse(&out).unwrap();
        let samples = &families[0].samples;
        assert_eq!(samples[0].label("a"), Some("x\"y\\z\nw"));
        assert_eq!(samples[0].label("b"), Some("é"));
        assert_eq!(samples[0].value, 0.25);
        assert_eq!(samples[1].value, f64::INFINITY);
    }

    #[test]
    fn the_lenient_parse_leaves_out_only_the_bad_lines() {
        let text = "# TYPE m counter\nm{a=\"1\",a=\"2\"} 1\nm{a=\"3\"} 2\n  oops\n";
        let families = parse_lenient(text);
        assert_eq!(families.len(), 1);
        assert_eq!(families[0].samples.len(), 1);
        assert_eq!(families[0].samples[0].label("a"), Some("3"));
        assert!(parse(text).is_err());
    }

    #[test]
    fn never_panics_on_prefixes_of_valid_text() {
        for end in 0..=TEXT.len() {
            if TEXT.is_char_boundary(end) {
                let _ = parse(&TEXT[..end]);
            }
        }
    }
}
