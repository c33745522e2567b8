//! How answers are shown: Vault's Key/Value tables, raw JSON, or one field.

use std::io::Write;

use serde_json::Value;

use crate::error::{Error, Result};

/// `print!` for answers: see [`write_stdout`].
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*)) };
}

/// `println!` for answers: see [`write_stdout`].
macro_rules! outln {
    () => { $crate::output::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprint!` for messages: see [`write_stderr`].
macro_rules! eout {
    ($($arg:tt)*) => { $crate::output::write_stderr(format_args!($($arg)*)) };
}

/// `eprintln!` for messages: see [`write_stderr`].
macro_rules! eoutln {
    () => { $crate::output::write_stderr(format_args!("\n")) };
    ($($arg:tt)*) => {
        $crate::output::write_stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes to standard error. `eprint!` panics (exit status 101) when it
/// cannot, as when standard error is a pipe whose reader has gone
/// (`gatepass … 2>&1 | head -1`); a message no one can read is dropped
/// instead, and the command ends with its own status.
pub fn write_stderr(args: std::fmt::Arguments) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(args).and_then(|()| err.flush());
}

/// Writes to standard output. `print!` panics, with a backtrace, when the
/// reader has gone (`gatepass list … | head -3`); here a closed pipe ends
/// the command quietly with the status a shell shows for a process that
/// SIGPIPE ended (128 + 13), as Vault's CLI and other Unix tools end. Any
/// other failure to write (a full disk under `> file`) is said on standard
/// error, with exit status 1.
pub fn write_stdout(args: std::fmt::Arguments) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(141);
        }
        write_stderr(format_args!(
            "Error: cannot write to standard output: {e}\n"
        ));
        std::process::exit(1);
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned Key/Value columns for people.
    Table,
    /// The server's response, pretty-printed, for scripts.
    Json,
    /// The response as Vault's CLI prints it with `-format=yaml`.
    Yaml,
    /// asciicast v2, for `pam sessions export` (elsewhere: as table).
    #[value(hide = true)]
    Cast,
}

impl Format {
    /// JSON or YAML: the whole answer, for scripts.
    pub fn is_structured(self) -> bool {
        matches!(self, Format::Json | Format::Yaml)
    }
}

/// A whole answer in a structured format (JSON, or YAML as Vault prints
/// it); tables are printed by each command.
pub fn print_structured(v: &Value, format: Format) {
    match format {
        Format::Yaml => out!("{}", crate::yaml::to_yaml(&crate::yaml::secret_shape(v))),
        _ => print_json(v),
    }
}

/// One row of a Key/Value table.
pub type Row = (String, Value);

/// The rows Vault's CLI shows for a response: its `data`, then for a login
/// or a new token the `token_*` rows of its `auth`. The token itself is
/// included only when `show_token`.
pub fn rows(resp: &Value, show_token: bool) -> Vec<Row> {
    let mut out = Vec::new();
    match resp.get("data") {
        Some(Value::Object(data)) => out.extend(data.iter().map(|(k, v)| (k.clone(), v.clone()))),
        Some(Value::Null) | None => {}
        Some(other) => out.push(("value".into(), other.clone())),
    }
    if let Some(auth) = resp.get("auth").filter(|a| a.is_object()) {
        out.extend(auth_rows(auth, show_token));
    }
    if let Some(info) = resp.get("wrap_info").filter(|w| w.is_object()) {
        out.extend(wrap_rows(info));
    }
    out
}

/// A wrapped answer's rows, named as Vault's CLI names them. The wrapping
/// token is shown: it is what was asked for.
fn wrap_rows(info: &Value) -> Vec<Row> {
    let get = |k: &str| info.get(k).cloned().unwrap_or(Value::Null);
    let ttl = info.get("ttl").and_then(Value::as_i64).unwrap_or(0);
    let mut out = vec![
        ("wrapping_token:".into(), get("token")),
        ("wrapping_accessor:".into(), get("accessor")),
        (
            "wrapping_token_ttl:".into(),
            Value::String(format_duration(ttl, true)),
        ),
        ("wrapping_token_creation_time:".into(), get("creation_time")),
        ("wrapping_token_creation_path:".into(), get("creation_path")),
    ];
    if let Some(a) = info.get("wrapped_accessor").filter(|a| !a.is_null()) {
        out.push(("wrapped_accessor:".into(), a.clone()));
    }
    out
}

fn auth_rows(auth: &Value, show_token: bool) -> Vec<Row> {
    let get = |k: &str| auth.get(k).cloned().unwrap_or(Value::Null);
    let mut out = Vec::new();
    if show_token {
        out.push(("token".into(), get("client_token")));
    }
    let duration = auth
        .get("lease_duration")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    out.push(("token_accessor".into(), get("accessor")));
    out.push((
        "token_duration".into(),
        Value::String(format_duration(duration, true)),
    ));
    out.push(("token_renewable".into(), get("renewable")));
    let token_policies = match get("token_policies") {
        Value::Null => get("policies"),
        p => p,
    };
    out.push(("token_policies".into(), token_policies));
    out.push((
        "identity_policies".into(),
        match get("identity_policies") {
            Value::Null => Value::Array(vec![]),
            p => p,
        },
    ));
    out.push(("policies".into(), get("policies")));
    if let Some(Value::Object(meta)) = auth.get("metadata") {
        for (k, v) in meta {
            out.push((format!("token_meta_{k}"), v.clone()));
        }
    }
    out
}

/// Prints a response: the whole JSON in `Json` format, else its table.
/// Warnings go to stderr so that stdout stays parseable.
pub fn print_response(
    resp: &Value,
    format: Format,
    field: Option<&str>,
    show_token: bool,
) -> Result<()> {
    if let Some(name) = field {
        print_warnings(resp);
        return print_field(resp, name);
    }
    match format {
        Format::Json | Format::Yaml => print_structured(resp, format),
        Format::Table | Format::Cast => {
            print_warnings(resp);
            print_table(&rows(resp, show_token));
        }
    }
    Ok(())
}

/// Prints one field raw (strings without quotes), for `$(gatepass … --field x)`.
/// An explicitly asked-for token is shown.
pub fn print_field(resp: &Value, name: &str) -> Result<()> {
    let value = rows(resp, true)
        .into_iter()
        // Vault's wrapping rows end with a colon; -field names them without.
        .find(|(k, _)| k.trim_end_matches(':') == name)
        .map(|(_, v)| v)
        .ok_or_else(|| Error::Usage(format!("field {name:?} is not in the response")))?;
    use std::io::IsTerminal;
    let text = field_text(&value, std::io::stdout().is_terminal());
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(|e| Error::Local(format!("cannot write to standard output: {e}")))
}

/// A field as Vault's CLI prints it: the value as it is when the output
/// goes to a file or a pipe (`-field=signed_key > cert.pub` is the
/// certificate's one line, nothing added), with a line end on a terminal.
fn field_text(value: &Value, terminal: bool) -> String {
    let mut text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if terminal {
        text.push('\n');
    }
    text
}

pub fn print_json(v: &Value) {
    // `{:#}` is serde_json's pretty printer, as `to_string_pretty`, without
    // that function's error case (a `Value` always serializes).
    outln!("{v:#}");
}

pub fn print_warnings(resp: &Value) {
    if let Some(Value::Array(w)) = resp.get("warnings") {
        if w.is_empty() {
            return;
        }
        eoutln!("WARNING! The server returned these warnings:");
        for item in w {
            eoutln!("  * {}", plain(item));
        }
        eoutln!();
    }
}

pub fn print_table(rows: &[Row]) {
    out!("{}", table(rows));
}

/// Vault's layout: a header, a dashed rule and columns joined by four spaces.
pub fn table(rows: &[Row]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0).max(3);
    let mut out = format!("{:width$}    Value\n{:width$}    -----\n", "Key", "---");
    for (k, v) in rows {
        out.push_str(format!("{k:width$}    {}", plain(v)).trim_end());
        out.push('\n');
    }
    out
}

/// Several columns, laid out as [`table`] lays out two: a header, a dashed
/// rule under each heading, columns joined by four spaces.
pub fn grid(headings: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headings.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = String>| {
        let mut out = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect::<Vec<_>>()
            .join("    ");
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut headings.iter().map(|h| h.to_string()));
    out.push_str(&line(
        &mut headings.iter().map(|h| "-".repeat(h.chars().count())),
    ));
    for row in rows {
        out.push_str(&line(&mut row.iter().cloned()));
    }
    out
}

/// LIST answers: a one-column table.
pub fn print_keys(keys: &[String], format: Format) {
    match format {
        Format::Json | Format::Yaml => print_structured(&Value::from(keys.to_vec()), format),
        Format::Table | Format::Cast => {
            outln!("Keys\n----");
            for k in keys {
                outln!("{k}");
            }
        }
    }
}

/// A value as Vault's tables show it (Go's `%v`): strings bare, lists as
/// `[a b]`, maps as `map[k:v]`, null as `n/a`.
pub fn plain(v: &Value) -> String {
    match v {
        Value::Null => "n/a".into(),
        Value::String(s) => s.clone(),
        Value::Array(items) => {
            format!(
                "[{}]",
                items.iter().map(plain).collect::<Vec<_>>().join(" ")
            )
        }
        Value::Object(m) => format!(
            "map[{}]",
            m.iter()
                .map(|(k, v)| format!("{k}:{}", plain(v)))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        other => other.to_string(),
    }
}

/// Seconds as `768h`, `1h30m`, `45s`. Zero means "never expires" (`∞`,
/// as Vault shows it) for a token's duration, else `0s`.
pub fn format_duration(secs: i64, zero_is_forever: bool) -> String {
    if secs <= 0 {
        return if zero_is_forever {
            "∞".into()
        } else {
            "0s".into()
        };
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

/// Time left until something ends, as "(in …)" shows it. The server
/// stamped the end a moment before this clock read now, so a 30-minute
/// certificate has 29m59s left by the time it is printed; past two minutes
/// the figure is rounded to the nearest minute, which is what a person asked
/// for and what they expect to read.
pub fn format_remaining(secs: i64) -> String {
    let secs = if secs >= 120 {
        (secs + 30) / 60 * 60
    } else {
        secs
    };
    format_duration(secs, false)
}

/// RFC 3339 in UTC, as the server and Vault print times.
pub fn date(secs: u64) -> String {
    if secs == u64::MAX {
        return "forever".into();
    }
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_reads_as_asked_although_a_second_has_passed() {
        assert_eq!(format_remaining(30 * 60 - 1), "30m");
        assert_eq!(format_remaining(30 * 60 - 2), "30m");
        assert_eq!(format_remaining(3600 - 1), "1h");
        assert_eq!(format_remaining(90 * 60 + 20), "1h30m");
        assert_eq!(format_remaining(119), "1m59s");
        assert_eq!(format_remaining(5), "5s");
        assert_eq!(format_remaining(0), "0s");
    }

    #[test]
    fn fields_print_as_they_are_unless_on_a_terminal() {
        let cert = Value::String("ssh-ed25519-cert-v01@openssh.com AAAA\n".into());
        assert_eq!(
            field_text(&cert, false),
            "ssh-ed25519-cert-v01@openssh.com AAAA\n"
        );
        assert_eq!(field_text(&Value::String("abc".into()), false), "abc");
        assert_eq!(field_text(&Value::String("abc".into()), true), "abc\n");
        assert_eq!(field_text(&serde_json::json!(3600), false), "3600");
    }
    use serde_json::json;

    #[test]
    fn vault_like_table() {
        let resp = json!({"data": {"policies": ["default", "dev"], "ttl": 30, "meta": null}});
        assert_eq!(
            table(&rows(&resp, false)),
            "Key         Value\n---         -----\nmeta        n/a\npolicies    [default dev]\nttl         30\n"
        );
    }

    #[test]
    fn auth_rows_hide_the_token_unless_asked() {
        let resp = json!({"data": null, "auth": {
            "client_token": "gps.secret", "accessor": "acc", "policies": ["default"],
            "token_policies": ["default"], "lease_duration": 3600, "renewable": true,
            "metadata": {"username": "alice"}
        }});
        let hidden = table(&rows(&resp, false));
        assert!(!hidden.contains("gps.secret"), "{hidden}");
        let lines: Vec<Vec<&str>> = hidden
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(lines.contains(&vec!["token_duration", "1h"]), "{hidden}");
        assert!(
            lines.contains(&vec!["token_meta_username", "alice"]),
            "{hidden}"
        );
        assert!(table(&rows(&resp, true)).contains("gps.secret"));
    }

    #[test]
    fn grids_align_columns() {
        let rows = vec![
            vec!["s-1".to_string(), "active".to_string(), "web".to_string()],
            vec![
                "session-22".to_string(),
                "ended".to_string(),
                "".to_string(),
            ],
        ];
        assert_eq!(
            grid(&["Session", "State", "Resource"], &rows),
            "Session       State     Resource\n\
             -------       -----     --------\n\
             s-1           active    web\n\
             session-22    ended\n"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(format_duration(768 * 3600, true), "768h");
        assert_eq!(format_duration(5400, true), "1h30m");
        assert_eq!(format_duration(61, false), "1m1s");
        assert_eq!(format_duration(0, false), "0s");
        assert_eq!(format_duration(0, true), "∞");
    }

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01T00:00:00Z");
        assert_eq!(date(u64::MAX), "forever");
    }
}
