//! What the header-parser targets share: the reference reading of a value.

/// The value without optional whitespace (RFC 9110 `OWS`: space and tab).
pub fn trim_ows(value: &[u8]) -> &[u8] {
    let ows = |b: &u8| *b == b' ' || *b == b'\t';
    let start = value.iter().position(|b| !ows(b)).unwrap_or(value.len());
    let end = value.iter().rposition(|b| !ows(b)).map_or(start, |i| i + 1);
    &value[start..end]
}

/// A non-empty run of ASCII digits as a number, saturating at `u64::MAX`
/// (computed in u128 on the digits left after leading zeros).
pub fn decimal(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let significant = &value[value.iter().position(|b| *b != b'0').unwrap_or(value.len())..];
    if significant.len() > 20 {
        return Some(u64::MAX);
    }
    let n = significant
        .iter()
        .fold(0u128, |n, d| n * 10 + u128::from(d - b'0'));
    Some(u64::try_from(n).unwrap_or(u64::MAX))
}
