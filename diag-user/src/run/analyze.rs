//! `tapwatch analyze`: one bundle or capture, or a source and a destination bundle.

use std::{io, process::ExitCode};

use diag_user::{
    model::{Record, Sink},
    offline as analyze,
    report::{json::JsonSink, text},
};

use crate::cli::AnalyzeArgs;

pub fn run(args: AnalyzeArgs) -> anyhow::Result<ExitCode> {
    if let [src, dst] = &args.paths[..] {
        return merge(src, dst, args.json);
    }
    let path = &args.paths[0];
    let mut out = io::BufWriter::new(io::stdout().lock());
    let a = if args.json {
        // Verdicts as they come, then the summary.
        let mut sink = JsonSink(&mut out);
        let mut print = |r: &Record| match r {
            Record::Verdict { .. } | Record::Summary { .. } => sink.emit(r),
            _ => Ok(()),
        };
        let a = analyze::analyze_path(path, args.tap_mac, &mut print)?;
        sink.flush()?;
        a
    } else {
        let a = analyze::analyze_path(path, args.tap_mac, &mut |_| Ok(()))?;
        io::Write::write_all(&mut out, text::table(&a).as_bytes())?;
        a
    };
    io::Write::flush(&mut out)?;
    if args.json {
        for n in &a.notes {
            eprintln!("tapwatch: {}", text::one_line(n));
        }
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

/// `analyze SRC DST`: one `migration` record per VM found in both (NDJSON), then the
/// destination's verdicts and summary; or the same for people.
fn merge(src: &std::path::Path, dst: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
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
    if json {
        let mut sink = JsonSink(&mut out);
        for (m, _) in &merged.migrations {
            sink.emit(&Record::Migration(m.clone()))?;
        }
        // The destination's own verdicts and summary, as `analyze DST --json` gives them:
        // its bundle is read again rather than its records kept, so memory stays bounded
        // whatever it holds.
        analyze::analyze_path(dst, None, &mut |r: &Record| match r {
            Record::Verdict { .. } | Record::Summary { .. } => sink.emit(r),
            _ => Ok(()),
        })?;
        sink.flush()?;
    } else {
        for (m, all) in &merged.migrations {
            io::Write::write_all(&mut out, text::migration_report(m, all).as_bytes())?;
        }
    }
    io::Write::flush(&mut out)?;
    Ok(if found {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
