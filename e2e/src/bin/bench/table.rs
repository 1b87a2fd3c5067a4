//! The Markdown results table: its rows and how they render (shared by the report and the
//! scenarios that bring their own rows).

use std::fmt::Write as _;

/// One line of the Markdown table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub metric: String,
    pub value: String,
    pub target: String,
    /// `None`: no target to judge against ("—").
    pub met: Option<bool>,
}

/// A table of (Metric, Value, Target, Verdict). Verdict: `None` "—", `Some(true)` "✅ met",
/// `Some(false)` "❌ missed". `|` and newlines in cells are escaped.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| Metric | Value | Target | Verdict |\n");
    out.push_str("| --- | ---: | ---: | --- |\n");
    for r in rows {
        let verdict = match r.met {
            None => "—",
            Some(true) => "✅ met",
            Some(false) => "❌ missed",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            cell(&r.metric),
            cell(&r.value),
            cell(&r.target),
            verdict
        );
    }
    out
}

pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cell(s: &str) -> String {
    let s = one_line(s).replace('|', "\\|");
    if s.is_empty() { "—".to_string() } else { s }
}
