//! `--format yaml` as Vault's and OpenBao's CLIs print it: the response as
//! their Go client's `Secret` holds it, turned into YAML the way their
//! `ghodss/yaml` and `go-yaml` v2 do (keys sorted, lists at their key's
//! indentation, strings quoted only where YAML 1.1 would read them as
//! something else). Hand-written: the YAML crates lay out and quote
//! differently, and scripts written for Vault compare this text.

use serde_json::{Map, Value};

/// The fields of the Go client's `Secret`, `SecretAuth` and
/// `SecretWrapInfo`: what Vault's CLI prints of an answer, whatever else
/// the server sent.
const SECRET: &[&str] = &[
    "request_id",
    "lease_id",
    "lease_duration",
    "renewable",
    "data",
    "warnings",
];
const AUTH: &[&str] = &[
    "client_token",
    "accessor",
    "policies",
    "token_policies",
    "identity_policies",
    "metadata",
    "orphan",
    "entity_id",
    "lease_duration",
    "renewable",
    "mfa_requirement",
];
const WRAP_INFO: &[&str] = &[
    "token",
    "accessor",
    "ttl",
    "creation_time",
    "creation_path",
    "wrapped_accessor",
];

fn pick(v: &Value, fields: &[&str]) -> Value {
    let mut m = Map::new();
    for f in fields {
        m.insert((*f).to_string(), v.get(*f).cloned().unwrap_or(Value::Null));
    }
    Value::Object(m)
}

/// An API answer as the Go client's `Secret` (auth and wrap_info only when
/// present); any other value as it is.
pub fn secret_shape(resp: &Value) -> Value {
    if resp.get("request_id").is_none() {
        return resp.clone();
    }
    let mut out = pick(resp, SECRET);
    for (key, fields) in [("auth", AUTH), ("wrap_info", WRAP_INFO)] {
        if let (Some(v), Value::Object(m)) = (resp.get(key).filter(|v| !v.is_null()), &mut out) {
            m.insert(key.to_string(), pick(v, fields));
        }
    }
    out
}

/// The YAML text of a value, ending in a line end.
pub fn to_yaml(v: &Value) -> String {
    match v {
        Value::Object(m) if !m.is_empty() => map(m, 0),
        Value::Array(a) if !a.is_empty() => list(a, 0),
        other => format!("{}\n", inline(other, 0).trim_start()),
    }
}

fn pad(n: usize) -> String {
    " ".repeat(n)
}

fn map(m: &Map<String, Value>, indent: usize) -> String {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    let mut out = String::new();
    for k in keys {
        out.push_str(&pad(indent));
        out.push_str(&scalar(k));
        out.push(':');
        out.push_str(&after_key(&m[k], indent));
    }
    out
}

/// What follows `key:` or `-`: a scalar on the line, or a collection below.
fn after_key(v: &Value, indent: usize) -> String {
    match v {
        Value::Object(m) if !m.is_empty() => format!("\n{}", map(m, indent + 2)),
        // go-yaml puts a map's list at the map's own indentation.
        Value::Array(a) if !a.is_empty() => format!("\n{}", list(a, indent)),
        other => inline(other, indent),
    }
}

fn list(items: &[Value], indent: usize) -> String {
    let mut out = String::new();
    for item in items {
        out.push_str(&pad(indent));
        out.push('-');
        match item {
            // The first key on the dash's line, the rest under it.
            Value::Object(m) if !m.is_empty() => {
                out.push(' ');
                out.push_str(map(m, indent + 2).trim_start());
            }
            Value::Array(a) if !a.is_empty() => {
                out.push(' ');
                out.push_str(list(a, indent + 2).trim_start());
            }
            other => out.push_str(&inline(other, indent)),
        }
    }
    out
}

/// A scalar or empty collection after `key:`/`-`, with its line end; a
/// string of several lines as a literal block.
fn inline(v: &Value, indent: usize) -> String {
    match v {
        Value::String(s) if s.contains('\n') => {
            let body = s.trim_end_matches('\n');
            let chomp = match s.len() - body.len() {
                0 => "-",
                1 => "",
                _ => "+",
            };
            let mut out = format!(" |{chomp}\n");
            for line in s.strip_suffix('\n').unwrap_or(s).split('\n') {
                if !line.is_empty() {
                    out.push_str(&pad(indent + 2));
                    out.push_str(line);
                }
                out.push('\n');
            }
            out
        }
        Value::String(s) => format!(" {}\n", scalar(s)),
        Value::Null => " null\n".into(),
        Value::Object(_) => " {}\n".into(),
        Value::Array(_) => " []\n".into(),
        other => format!(" {other}\n"),
    }
}

/// A string as go-yaml v2 writes it: plain when YAML reads it back as the
/// same string, double-quoted when YAML 1.1 would read another type (a
/// number, a boolean such as `yes` or `n`, null, a date), single-quoted when
/// its characters would be read as YAML syntax.
fn scalar(s: &str) -> String {
    if s.is_empty() || reads_as_other_type(s) || s.chars().any(|c| c.is_control()) {
        return format!("{:?}", s);
    }
    if plain_allowed(s) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

fn reads_as_other_type(s: &str) -> bool {
    const WORDS: &[&str] = &[
        "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE", "false",
        "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF", "~", "null", "Null", "NULL",
        ".inf", ".Inf", ".INF", "-.inf", "+.inf", ".nan", ".NaN", ".NAN",
    ];
    if WORDS.contains(&s) {
        return true;
    }
    let body = s.strip_prefix(['-', '+']).unwrap_or(s).replace('_', "");
    let digits = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit());
    // Integers (also 0x, 0o and 0b forms) and floats (1.5, .5, 1e3).
    if digits(&body)
        || body
            .strip_prefix("0x")
            .is_some_and(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_hexdigit()))
        || body
            .strip_prefix("0b")
            .is_some_and(|b| !b.is_empty() && b.chars().all(|c| c == '0' || c == '1'))
    {
        return true;
    }
    let (mantissa, exponent) = match body.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e.strip_prefix(['-', '+']).unwrap_or(e))),
        None => (body.as_str(), None),
    };
    let float_mantissa = match mantissa.split_once('.') {
        Some((a, b)) => {
            (a.is_empty() || digits(a))
                && (b.is_empty() || digits(b))
                && !(a.is_empty() && b.is_empty())
        }
        None => digits(mantissa) && exponent.is_some(),
    };
    if float_mantissa && exponent.is_none_or(digits) {
        return true;
    }
    // Timestamps: a date, alone or followed by a time.
    let b = s.as_bytes();
    b.len() >= 10
        && b[..4].iter().all(u8::is_ascii_digit)
        && b[4] == b'-'
        && b[5..7].iter().all(u8::is_ascii_digit)
        && b[7] == b'-'
        && b[8..10].iter().all(u8::is_ascii_digit)
        && (b.len() == 10 || matches!(b[10], b'T' | b't' | b' ' | b'\t'))
}

/// libyaml's rule for a plain scalar in block context.
fn plain_allowed(s: &str) -> bool {
    if s.starts_with(' ') || s.ends_with(' ') {
        return false;
    }
    let chars: Vec<char> = s.chars().collect();
    let blank_after = |i: usize| chars.get(i + 1).is_none_or(|c| *c == ' ');
    for (i, c) in chars.iter().enumerate() {
        let indicator = if i == 0 {
            matches!(
                c,
                '#' | ','
                    | '['
                    | ']'
                    | '{'
                    | '}'
                    | '&'
                    | '*'
                    | '!'
                    | '|'
                    | '>'
                    | '\''
                    | '"'
                    | '%'
                    | '@'
                    | '`'
            ) || (matches!(c, '?' | ':' | '-') && blank_after(i))
        } else {
            (*c == ':' && blank_after(i)) || (*c == '#' && chars[i - 1] == ' ')
        };
        if indicator {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strings_are_quoted_as_go_yaml_quotes_them() {
        let v = json!({
            "a": "x: y", "b": "- dash", "c": "yes", "d": "12", "e": "*", "f": "has #hash",
            "g": " lead", "h": "it's", "i": "1.5", "j": "", "k": "a,b", "l": "@at", "m": "~",
            "n": "2026-12-02", "o": "multi\nline", "p": ["x"], "q": {}, "r": null,
        });
        assert_eq!(
            to_yaml(&v),
            "a: 'x: y'\nb: '- dash'\nc: \"yes\"\nd: \"12\"\ne: '*'\nf: 'has #hash'\ng: ' lead'\n\
             h: it's\ni: \"1.5\"\nj: \"\"\nk: a,b\nl: '@at'\nm: \"~\"\n\"n\": \"2026-12-02\"\n\
             o: |-\n  multi\n  line\np:\n- x\nq: {}\nr: null\n"
        );
    }
}
