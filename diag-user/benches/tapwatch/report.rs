//! The results table, printed and written into docs/benchmarks.md.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};

pub struct Row {
    pub section: &'static str,
    pub what: String,
    pub value: String,
    pub target: String,
    /// `None` where the line is information, not a target.
    pub met: Option<bool>,
}

#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    /// Facts about the run (machine, parameters) and anything odd it saw.
    pub notes: Vec<String>,
}

impl Report {
    pub fn info(
        &mut self,
        section: &'static str,
        what: impl Into<String>,
        value: impl Into<String>,
    ) {
        self.rows.push(Row {
            section,
            what: what.into(),
            value: value.into(),
            target: String::new(),
            met: None,
        });
    }

    pub fn target(
        &mut self,
        section: &'static str,
        what: impl Into<String>,
        value: impl Into<String>,
        target: impl Into<String>,
        met: bool,
    ) {
        self.rows.push(Row {
            section,
            what: what.into(),
            value: value.into(),
            target: target.into(),
            met: Some(met),
        });
    }

    pub fn note(&mut self, s: impl Into<String>) {
        self.notes.push(s.into());
    }

    fn met(m: Option<bool>) -> &'static str {
        match m {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "",
        }
    }

    pub fn print(&self) {
        let w = |f: fn(&Row) -> usize| self.rows.iter().map(f).max().unwrap_or(0);
        let (ws, ww, wv, wt) = (
            w(|r| r.section.len()).max(7),
            w(|r| r.what.chars().count()),
            w(|r| r.value.chars().count()),
            w(|r| r.target.chars().count()).max(6),
        );
        println!(
            "\n{:ws$}  {:ww$}  {:>wv$}  {:wt$}  met",
            "section", "measurement", "value", "target"
        );
        println!("{}", "-".repeat(ws + ww + wv + wt + 11));
        for r in &self.rows {
            println!(
                "{:ws$}  {:ww$}  {:>wv$}  {:wt$}  {}",
                r.section,
                r.what,
                r.value,
                r.target,
                Self::met(r.met)
            );
        }
        for n in &self.notes {
            println!("- {n}");
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        s.push_str("\n| section | measurement | value | target | met |\n|---|---|--:|---|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r.section,
                r.what,
                r.value,
                r.target,
                Self::met(r.met)
            );
        }
        s
    }
}

const BEGIN: &str = "<!-- bench:begin (written by `cargo xtask bench`) -->";
const END: &str = "<!-- bench:end -->";

/// Replaces the generated part of `path`, keeping the text written around it.
pub fn write_into(path: &Path, generated: &str) -> Result<()> {
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let block = format!("{BEGIN}\n{generated}\n{END}");
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{block}{}", &old[..b], &old[e + END.len()..]),
        _ => format!("# Benchmarks\n\n{block}\n{old}"),
    };
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, new).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replace {}", path.display()))
}
