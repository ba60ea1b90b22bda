//! `tapwatch analyze`: one bundle or capture, or a source and a destination bundle; with
//! `--html FILE`, the report page too.

use std::{io, path::Path, process::ExitCode};

use anyhow::Context;
use diag_user::{
    model::{Record, Sink},
    offline as analyze,
    report::{
        json::JsonSink,
        page::{self, Collector, Input, Page},
        text,
    },
};

use crate::cli::AnalyzeArgs;

pub fn run(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    // Before reading anything: a page that cannot be written is said at once.
    if let Some(file) = &args.html {
        page::check_target(file)?;
    }
    if let [src, dst] = &args.paths[..] {
        return merge(src, dst, &args);
    }
    let path = &args.paths[0];
    let mut collect = args.html.as_ref().map(|_| Collector::new());
    let mut out = io::BufWriter::new(io::stdout().lock());
    let a = if args.json {
        // Verdicts as they come, then the summary.
        let mut sink = JsonSink(&mut out);
        let mut print = |r: &Record| {
            if let Some(c) = &mut collect {
                c.take(r);
            }
            match r {
                Record::Verdict { .. } | Record::Summary { .. } => sink.emit(r),
                _ => Ok(()),
            }
        };
        let a = analyze::analyze_path(path, args.tap_mac, &mut print)?;
        sink.flush()?;
        a
    } else {
        let a = analyze::analyze_path(path, args.tap_mac, &mut |r: &Record| {
            if let Some(c) = &mut collect {
                c.take(r);
            }
            Ok(())
        })?;
        io::Write::write_all(&mut out, text::table(&a).as_bytes())?;
        a
    };
    io::Write::flush(&mut out)?;
    if args.json {
        for n in &a.notes {
            eprintln!("tapwatch: {}", text::one_line(n));
        }
    }
    if let (Some(file), Some(c)) = (&args.html, collect) {
        let mut notes = a.notes.clone();
        notes.extend(a.damaged.as_ref().map(|e| e.to_string()));
        let page = c.page(vec![input(path, "bundle")?], &notes);
        write_page(file, &page)?;
    }
    // A damaged capture: the verdicts above cover what came before the damage.
    match a.damaged {
        Some(e) => {
            eprintln!("tapwatch: {}", text::one_line(&e.to_string()));
            Ok(ExitCode::FAILURE)
        }
        None => Ok(ExitCode::SUCCESS),
    }
}

/// An input as the page names it: a bundle (with its host.json) or a capture.
fn input(path: &Path, role: &str) -> anyhow::Result<Input> {
    let host = analyze::read_host_json(path)?;
    let is_bundle = host.is_some() || path.is_dir();
    Ok(Input {
        role: if is_bundle { role } else { "capture" }.into(),
        path: path.display().to_string(),
        host,
    })
}

fn write_page(file: &Path, page: &Page) -> anyhow::Result<()> {
    page::write(file, &page::render(page))?;
    eprintln!(
        "tapwatch: report page written to {}",
        text::one_line(&file.display().to_string())
    );
    Ok(())
}

/// `analyze SRC DST`: one `migration` record per VM found in both (NDJSON), then the
/// destination's verdicts and summary; or the same for people.
fn merge(src: &Path, dst: &Path, args: &AnalyzeArgs) -> anyhow::Result<ExitCode> {
    let merged = analyze::merge::merge(src, dst)?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    // A VM not found on the source still gets its record, saying so.
    let found = merged
        .migrations
        .iter()
        .any(|(m, _)| m.src_ifname.is_some());
    if !found {
        eprintln!(
            "tapwatch: no VM of {} is in {}: give the source's bundle first, then the \
             destination's, of the same migration",
            dst.display(),
            src.display()
        );
    }
    let mut collect = args.html.as_ref().map(|_| Collector::new());
    if args.json {
        let mut sink = JsonSink(&mut out);
        for (m, _) in &merged.migrations {
            sink.emit(&Record::Migration(m.clone()))?;
        }
        // The destination's own verdicts and summary, as `analyze DST --json` gives them:
        // its bundle is read again rather than its records kept, so memory stays bounded
        // whatever it holds.
        analyze::analyze_path(dst, None, &mut |r: &Record| {
            if let Some(c) = &mut collect {
                c.take(r);
            }
            match r {
                Record::Verdict { .. } | Record::Summary { .. } => sink.emit(r),
                _ => Ok(()),
            }
        })?;
        sink.flush()?;
    } else {
        for (m, all) in &merged.migrations {
            io::Write::write_all(&mut out, text::migration_report(m, all).as_bytes())?;
        }
    }
    io::Write::flush(&mut out)?;
    if let Some(file) = &args.html {
        let c = match collect {
            Some(c) if args.json => c,
            _ => {
                let mut c = Collector::new();
                analyze::analyze_path(dst, None, &mut |r: &Record| {
                    c.take(r);
                    Ok(())
                })
                .context("reading the destination's bundle again for the report page")?;
                c
            }
        };
        let inputs = vec![
            input(src, "source bundle")?,
            input(dst, "destination bundle")?,
        ];
        let mut page = Page::of_pair(inputs, &merged.migrations, &c);
        if !found {
            page.notes.push(format!(
                "No VM of {} is in {}: the page tells the destination alone.",
                dst.display(),
                src.display()
            ));
        }
        write_page(file, &page)?;
    }
    Ok(if found {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
