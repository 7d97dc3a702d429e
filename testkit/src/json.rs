//! Reading the one-line JSON reports that servers and bench roles print (`{"drain":{...}}`,
//! `{"floor":{...}}`), without a JSON parser: the lines are flat and written by us.

/// The number after `"key":` in a flat JSON text (the first occurrence); `None` for
/// `null`, a missing key or anything else that is not a number.
pub fn json_number(text: &str, key: &str) -> Option<f64> {
    let start = text.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &text[start..];
    let end = rest.find([',', '}', ']']).unwrap_or(rest.len());
    rest[..end].trim().parse().ok()
}
