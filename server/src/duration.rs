//! Durations as Vault reads them: a number of seconds, or Go's duration
//! text ("1h30m", "768h", "90s") plus a `d` unit. Hand-written because Go's
//! syntax (bare integers are seconds, units glued without spaces) is not
//! what the general-purpose duration crates accept.

use serde_json::Value;

use crate::error::{Error, Result};

/// Parses a duration in seconds from JSON (number or string).
pub fn parse_value(field: &str, v: &Value) -> Result<i64> {
    match v {
        Value::Number(n) => n.as_i64().filter(|s| *s >= 0).ok_or_else(|| {
            Error::invalid(format!(
                "{field}: must be a non-negative whole number of seconds"
            ))
        }),
        Value::String(s) => parse(s).ok_or_else(|| {
            Error::invalid(format!(
                "{field}: {s:?} is not a duration (examples: 3600, \"30m\", \"768h\", \"1h30m\")"
            ))
        }),
        _ => Err(Error::invalid(format!(
            "{field}: expected a duration, got {}",
            type_name(v)
        ))),
    }
}

/// Parses duration text to whole seconds, rounding fractions down.
pub fn parse(text: &str) -> Option<i64> {
    let t = text.trim();
    if t.is_empty() {
        return Some(0);
    }
    if let Ok(n) = t.parse::<i64>() {
        return (n >= 0).then_some(n);
    }
    let mut total: f64 = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let num: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += num * factor;
    }
    if !total.is_finite() || total > i64::MAX as f64 / 2.0 {
        return None;
    }
    Some(total as i64)
}

/// Seconds as Vault's messages spell a duration: hours, minutes and
/// seconds, leaving out those that are zero ("1h30m", "2h1s", "0s").
pub fn text(secs: i64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::{parse, text};

    #[test]
    fn spelled_as_vaults_messages_spell_them() {
        assert_eq!(text(5400), "1h30m");
        assert_eq!(text(7201), "2h1s");
        assert_eq!(text(100_000), "27h46m40s");
        assert_eq!(text(0), "0s");
    }

    #[test]
    fn vault_durations() {
        assert_eq!(parse("3600"), Some(3600));
        assert_eq!(parse("90s"), Some(90));
        assert_eq!(parse("30m"), Some(1800));
        assert_eq!(parse("768h"), Some(768 * 3600));
        assert_eq!(parse("1h30m"), Some(5400));
        assert_eq!(parse("1d"), Some(86400));
        assert_eq!(parse("1.5h"), Some(5400));
        assert_eq!(parse(""), Some(0));
        for bad in ["-5", "h", "5x", "1h 30m", "abc", "5h-1m"] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }
}
