//! `tapwatch facts` and `tapwatch preflight`: a host pair checked before a migration.

use std::{io::Write, process::ExitCode};

use diag_user::{
    collect::facts::gather,
    model::{facts::Facts, Record},
    offline::{
        facts::read_facts,
        preflight::{self, PreflightError},
    },
    report::{json::JsonSink, text},
};

use super::EXIT_USAGE;
use crate::cli::{FactsArgs, PreflightArgs};

pub fn facts(args: FactsArgs) -> anyhow::Result<ExitCode> {
    let (facts, errors) = gather(&args.libvirt_dir, &args.instances_dir);
    for e in errors {
        eprintln!(
            "tapwatch: skipping libvirt domain file {}",
            text::one_line(&e.to_string())
        );
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer_pretty(&mut out, &facts)?;
        writeln!(out)?;
    } else {
        out.write_all(describe(&facts).as_bytes())?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The facts for people.
fn describe(f: &Facts) -> String {
    let h = &f.host;
    let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "not installed".into());
    let mut s = format!(
        "host {} (Linux {})\n  libvirt: {}\n  QEMU: {}\n  CPU: {} ({} flags)\n  clock: {}\n",
        text::one_line(&h.hostname),
        h.kernel_release,
        or(&h.libvirt_version),
        or(&h.qemu_version),
        h.cpu_model.as_deref().unwrap_or("unknown"),
        h.cpu_flags.len(),
        match h.clock {
            Some(c) if c.synchronised => "synchronised",
            _ => "not synchronised",
        }
    );
    if let Some(i) = &f.instances_dir {
        s.push_str(&format!(
            "  instances: {} on {} ({})\n",
            i.path,
            i.fs_type.as_deref().unwrap_or("(missing)"),
            if i.shared { "shared" } else { "local" }
        ));
    }
    for vm in &f.vms {
        s.push_str(&format!(
            "vm {} (domain {}, {})\n",
            text::one_line(vm.name()),
            text::one_line(&vm.domain),
            vm.state.as_deref().unwrap_or("state unknown")
        ));
        if let Some(c) = &vm.cpu {
            s.push_str(&format!(
                "  cpu: {} {} ({} features required)\n",
                c.mode.as_deref().unwrap_or("custom"),
                c.model.as_deref().unwrap_or(""),
                c.features.len()
            ));
        }
        for i in &vm.interfaces {
            s.push_str(&format!(
                "  tap {}: MAC {}, guest {}, managed {}, {}{}\n",
                text::one_line(&i.tap),
                i.tap_mac.map_or("(no tap)".into(), |m| m.to_string()),
                i.guest_mac.map_or("-".into(), |m| m.to_string()),
                i.managed.map_or("-", |m| if m { "yes" } else { "no" }),
                i.iface_type,
                i.bridge
                    .as_deref()
                    .map(|b| format!(" on {}", text::one_line(b)))
                    .unwrap_or_default()
            ));
        }
        for d in vm.disks.iter().flatten() {
            s.push_str(&format!(
                "  disk {}: {} {}\n",
                d.target,
                d.kind,
                text::one_line(&d.source)
            ));
        }
    }
    s
}

pub fn preflight(args: PreflightArgs) -> anyhow::Result<ExitCode> {
    let read = |p: &std::path::Path| read_facts(p);
    let (src, dst) = match (read(&args.from), read(&args.to)) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("tapwatch: {}", text::one_line(&e.to_string()));
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let labels = (
        args.from.display().to_string(),
        args.to.display().to_string(),
    );
    let findings = match preflight::check(&src, &dst, &args.vm, (&labels.0, &labels.1)) {
        Ok(f) => f,
        Err(e @ (PreflightError::SameHost(..) | PreflightError::NoSuchVm { .. })) => {
            eprintln!("tapwatch: {}", text::one_line(&e.to_string()));
            return Ok(ExitCode::from(EXIT_USAGE));
        }
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if args.json {
        let mut sink = JsonSink(&mut out);
        for f in &findings {
            diag_user::model::Sink::emit(&mut sink, &Record::Finding(f.clone()))?;
        }
    } else if findings.is_empty() {
        writeln!(
            out,
            "nothing found that would break a live migration from {} to {}",
            text::one_line(&src.host.hostname),
            text::one_line(&dst.host.hostname)
        )?;
    } else {
        for f in &findings {
            writeln!(out, "{}", text::finding_text(f))?;
        }
    }
    out.flush()?;
    Ok(if preflight::blocking(&findings) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
