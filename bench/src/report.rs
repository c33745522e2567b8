//! Markdown tables and the marked sections of BENCHMARKS.md.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A markdown table, padded so that it also reads well as plain text.
pub struct Table {
    header: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[(&str, Align)]) -> Table {
        Table {
            header: header.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    pub fn to_markdown(&self) -> String {
        let cols = self.header.len();
        let width = |c: usize| {
            self.rows
                .iter()
                .filter_map(|r| r.get(c))
                .chain(self.header.get(c).map(|(h, _)| h))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
                .max(3)
        };
        let widths: Vec<usize> = (0..cols).map(width).collect();
        let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
        let pad = |s: &str, c: usize| {
            let w = widths.get(c).copied().unwrap_or(0);
            match self.header.get(c).map(|(_, a)| *a) {
                Some(Align::Right) => format!("{s:>w$}"),
                _ => format!("{s:<w$}"),
            }
        };
        let mut out = line(
            self.header
                .iter()
                .enumerate()
                .map(|(c, (h, _))| pad(h, c))
                .collect(),
        );
        out += &line(
            self.header
                .iter()
                .enumerate()
                .map(|(c, (_, a))| {
                    let w = widths.get(c).copied().unwrap_or(3);
                    match a {
                        Align::Right => format!("{}:", "-".repeat(w - 1)),
                        Align::Left => "-".repeat(w),
                    }
                })
                .collect(),
        );
        for r in &self.rows {
            out += &line(
                (0..cols)
                    .map(|c| pad(r.get(c).map(String::as_str).unwrap_or(""), c))
                    .collect(),
            );
        }
        out
    }
}

/// Milliseconds with a precision that suits the value.
pub fn millis(d: Option<Duration>) -> String {
    match d {
        None => "–".into(),
        Some(d) => {
            let ms = d.as_secs_f64() * 1000.0;
            if ms < 1.0 {
                format!("{ms:.3}")
            } else if ms < 100.0 {
                format!("{ms:.2}")
            } else {
                format!("{ms:.0}")
            }
        }
    }
}

/// A rate with a precision that suits it.
pub fn rate(r: f64) -> String {
    if r < 100.0 {
        format!("{r:.1}")
    } else {
        format!("{r:.0}")
    }
}

pub fn ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r.is_finite() && r < 10.0 => format!("{r:.2}×"),
        Some(r) if r.is_finite() => format!("{r:.1}×"),
        _ => "–".into(),
    }
}

fn markers(name: &str) -> (String, String) {
    (
        format!("<!-- {name}:begin -->"),
        format!("<!-- {name}:end -->"),
    )
}

/// Replaces what lies between the section's markers with `body`; appends the
/// section (with its markers) when the text has none.
pub fn replace_section(text: &str, name: &str, body: &str) -> anyhow::Result<String> {
    let (begin, end) = markers(name);
    let body = body.trim_end();
    match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => {
            let head = &text[..b + begin.len()];
            let tail = &text[e..];
            Ok(format!("{head}\n{body}\n{tail}"))
        }
        (None, None) => {
            let sep = if text.is_empty() || text.ends_with("\n\n") {
                ""
            } else if text.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            Ok(format!("{text}{sep}{begin}\n{body}\n{end}\n"))
        }
        _ => bail!("the markers {begin} and {end} are not a pair in this order"),
    }
}

/// Replaces the section in a file, atomically.
/// A suite's section name: `name`, or `name-N` for a run with another size
/// `n` than the default, so that both stay recorded side by side.
pub fn sized(name: &str, n: usize, default: usize) -> String {
    if n == default {
        name.to_string()
    } else {
        format!("{name}-{n}")
    }
}

/// Prints a suite's results and, with `--write FILE`, replaces its section.
pub fn publish(write: Option<&Path>, name: &str, body: &str) -> anyhow::Result<()> {
    println!("{body}");
    if let Some(path) = write {
        write_section(path, name, body)?;
        eprintln!("wrote the {name} section of {}", path.display());
    }
    Ok(())
}

pub fn write_section(path: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let new =
        replace_section(&text, name, body).with_context(|| format!("in {}", path.display()))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.write_all(new.as_bytes())?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.persist(path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// MiB with one decimal.
pub fn mib(v: f64) -> String {
    format!("{v:.1}")
}

/// Fails the suite when any measurement had errors, naming each (its label)
/// with its count and first error; `what` says what failed ("requests").
pub fn fail_on_errors<'a>(
    what: &str,
    rows: impl IntoIterator<Item = (String, &'a crate::measure::Summary)>,
) -> anyhow::Result<()> {
    let failed: Vec<String> = rows
        .into_iter()
        .filter(|(_, s)| s.errors > 0)
        .map(|(label, s)| {
            format!(
                "{label}: {} errors, first: {}",
                s.errors,
                s.first_error.as_deref().unwrap_or("?")
            )
        })
        .collect();
    if !failed.is_empty() {
        bail!("{what} failed:\n{}", failed.join("\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_replaced_between_markers() -> anyhow::Result<()> {
        let text = "# B\n\nintro\n<!-- sign:begin -->\nold\nlines\n<!-- sign:end -->\nafter\n";
        let out = replace_section(text, "sign", "new\n")?;
        assert_eq!(
            out,
            "# B\n\nintro\n<!-- sign:begin -->\nnew\n<!-- sign:end -->\nafter\n"
        );
        // Other sections stay as they are.
        let out = replace_section(&out, "otp", "o")?;
        assert!(out.contains("<!-- sign:begin -->\nnew\n<!-- sign:end -->"));
        assert!(out.ends_with("after\n\n<!-- otp:begin -->\no\n<!-- otp:end -->\n"));
        Ok(())
    }

    #[test]
    fn broken_markers_refused() {
        assert!(replace_section("<!-- sign:end --> <!-- sign:begin -->", "sign", "x").is_err());
        assert!(replace_section("<!-- sign:begin -->", "sign", "x").is_err());
    }

    #[test]
    fn table_aligns() {
        let mut t = Table::new(&[("what", Align::Left), ("n", Align::Right)]);
        t.push(vec!["a".into(), "1234".into()]);
        assert_eq!(
            t.to_markdown(),
            "| what |    n |\n| ---- | ---: |\n| a    | 1234 |\n"
        );
    }
}
