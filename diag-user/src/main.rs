use std::{io, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use diag_user::{
    analyze,
    bundle::{Bundle, BundleOptions, Tee},
    ifaces::DEFAULT_PATTERNS,
    lab::{self, LabOptions, LabVms, Scenario},
    libvirt::{self, LibvirtDir},
    mac::MacAddr,
    output::Record,
    output::{JsonSink, Sink},
    probe::AttachMode,
    tui,
    verdict::{Engine, EngineConfig, VerdictSink},
    watch::{self, BackendChoice, WatchOptions},
};

/// Per-VM view of frames on hypervisor tap devices: which frames a VM sends to a MAC its
/// tap no longer has, and when QEMU's RARP and the guest's gratuitous ARP announced a
/// migration.
#[derive(Parser)]
#[command(name = "tapwatch", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to VM taps and report live (the default command).
    Watch(WatchArgs),
    /// Run the verdicts offline on a bundle (directory or .tar.gz) or a pcap/pcapng capture
    /// of tap traffic (`tcpdump -i tapX -w x.pcap`, or `-i any`).
    Analyze(AnalyzeArgs),
    /// Build a lab of two simulated hypervisors, live-migrate a simulated VM between
    /// them, and watch the destination as on-call would.
    Lab(LabArgs),
}

#[derive(Args, Clone)]
struct AnalyzeArgs {
    /// A bundle directory, a .tar.gz bundle, or a pcap/pcapng capture.
    path: PathBuf,
    /// Print NDJSON (verdict records, then the summary) instead of a table.
    #[arg(long)]
    json: bool,
    /// The tap's MAC, for a raw capture (otherwise inferred, and said so).
    #[arg(long, value_name = "MAC")]
    tap_mac: Option<MacAddr>,
}

#[derive(Args, Clone)]
struct LabArgs {
    /// What the migration does to the VM's network.
    #[arg(long, value_enum, default_value = "stale-mac")]
    scenario: Scenario,
    /// How many VMs migrate at once.
    #[arg(long, default_value_t = 1)]
    vms: usize,
    /// Write NDJSON to stdout (lab steps, tapwatch's records, the truth last) instead of
    /// the full-screen view; ends by itself when the story is over.
    #[arg(long)]
    json: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<Duration>,
    /// The guests' ARP reachable time (real guests: 15-45 s).
    #[arg(long, value_name = "SECS", default_value = "8", value_parser = parse_secs)]
    reachable_time: Duration,
    /// Steady traffic before the migration.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_secs)]
    before: Duration,
    /// The guest also sends a gratuitous ARP when it resumes.
    #[arg(long)]
    garp: bool,
    /// Seconds between stats records.
    #[arg(long, value_name = "SECS", default_value = "0.5", value_parser = parse_secs)]
    interval: Duration,
}

#[derive(Args, Clone)]
struct WatchArgs {
    /// Write NDJSON (one object a line) to stdout instead of the full-screen view.
    #[arg(long)]
    json: bool,
    /// Interfaces to watch, by shell glob; repeatable. Default: tap* and vnet*.
    #[arg(long = "iface", value_name = "GLOB")]
    ifaces: Vec<String>,
    /// Seconds between stats records.
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_secs)]
    interval: Duration,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<Duration>,
    /// How to hook the tc programs.
    #[arg(long, value_enum, default_value = "auto")]
    attach_mode: AttachMode,
    /// The datapath: eBPF, libpcap, or eBPF with a libpcap fallback (saying why).
    #[arg(long, value_enum, default_value = "auto")]
    backend: BackendChoice,
    /// Directory of libvirt's live domain XML, for VM names and guest MACs.
    #[arg(long, value_name = "DIR", default_value = libvirt::DEFAULT_DIR)]
    libvirt_dir: PathBuf,
    /// Record a bug-report bundle into DIR (new or empty): events.ndjson, frames.pcapng,
    /// host.json, summary.md.
    #[arg(long, value_name = "DIR")]
    record: Option<PathBuf>,
    /// Stop writing frames to the bundle past this size (counters are always kept).
    #[arg(long, value_name = "MB", default_value_t = 100)]
    record_max_mb: u64,
    /// Also pack the bundle into DIR.tar.gz when done.
    #[arg(long, requires = "record")]
    pack: bool,
}

impl Default for WatchArgs {
    fn default() -> Self {
        Self {
            json: false,
            ifaces: Vec::new(),
            interval: Duration::from_secs(1),
            duration: None,
            attach_mode: AttachMode::Auto,
            backend: BackendChoice::Auto,
            libvirt_dir: PathBuf::from(libvirt::DEFAULT_DIR),
            record: None,
            record_max_mb: 100,
            pack: false,
        }
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("not a number of seconds: {s:?}"))?;
    if !(v.is_finite() && v > 0.0) {
        return Err(format!("must be a positive number of seconds: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v))
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Some(Command::Watch(a)) => runtime.block_on(run_watch(a)),
        None => runtime.block_on(run_watch(WatchArgs::default())),
        Some(Command::Lab(a)) => run_lab(a, &runtime),
        Some(Command::Analyze(a)) => run_analyze(a),
    }
}

fn run_analyze(args: AnalyzeArgs) -> anyhow::Result<()> {
    let a = analyze::analyze_path(&args.path, args.tap_mac)?;
    let mut out = io::BufWriter::new(io::stdout().lock());
    if args.json {
        for n in &a.notes {
            eprintln!("tapwatch: {n}");
        }
        let mut sink = JsonSink(&mut out);
        for r in a
            .records
            .iter()
            .filter(|r| matches!(r, Record::Verdict { .. } | Record::Summary { .. }))
        {
            sink.emit(r)?;
        }
        sink.flush()?;
    } else {
        io::Write::write_all(&mut out, analyze::table(&a).as_bytes())?;
    }
    Ok(())
}

fn run_lab(args: LabArgs, runtime: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let opts = LabOptions {
        scenario: args.scenario,
        vms: args.vms,
        reachable: args.reachable_time,
        before: args.before,
        duration: args.duration,
        garp: args.garp,
        interval: args.interval,
    };
    let engine = Engine::new(EngineConfig::default(), Box::new(LabVms::new(&opts)));
    let mut lab = lab::start(opts, args.json)?;
    if args.json {
        let mut stdout = JsonSink(io::BufWriter::new(io::stdout().lock()));
        let mut sink = VerdictSink {
            engine,
            inner: &mut stdout,
        };
        while let Some(rec) = lab.records.blocking_recv() {
            // A closed stdout ends the output, not the lab's clean-up.
            if sink.emit(&rec).and_then(|_| sink.flush()).is_err() {
                break;
            }
        }
    } else {
        let ending = runtime.block_on(tui::show(lab.records, lab.stop, engine))?;
        tui::print_ending(&ending)?;
    }
    lab.handle
        .join()
        .map_err(|_| anyhow::anyhow!("the lab thread panicked"))??;
    Ok(())
}

async fn run_watch(args: WatchArgs) -> anyhow::Result<()> {
    let patterns = if args.ifaces.is_empty() {
        DEFAULT_PATTERNS.iter().map(|s| s.to_string()).collect()
    } else {
        args.ifaces.clone()
    };
    let opts = WatchOptions {
        patterns,
        interval: args.interval,
        duration: args.duration,
        attach_mode: args.attach_mode,
        backend: args.backend,
        notices: args.json,
    };
    // In the full-screen view, stderr would scribble over the screen.
    let vms = || Box::new(LibvirtDir::new(&args.libvirt_dir, args.json));
    let mut bundle = match &args.record {
        Some(dir) => {
            let opts = BundleOptions {
                dir: dir.clone(),
                max_bytes: args.record_max_mb.saturating_mul(1 << 20),
                pack: args.pack,
            };
            Some(Bundle::create(
                opts,
                Box::new(LibvirtDir::new(&args.libvirt_dir, false)),
            )?)
        }
        None => None,
    };
    let engine = Engine::new(EngineConfig::default(), vms());
    if args.json {
        let mut stdout = JsonSink(io::BufWriter::new(io::stdout().lock()));
        let mut tee = Tee {
            primary: &mut stdout,
            bundle: bundle.as_mut(),
            failed: false,
        };
        let mut sink = VerdictSink {
            engine,
            inner: &mut tee,
        };
        watch::run(opts, &mut sink, std::future::pending()).await?;
    } else {
        let verdicts = Engine::new(EngineConfig::default(), vms());
        tui::run(opts, engine, verdicts, bundle.as_mut()).await?;
    }
    if let Some(b) = bundle {
        let path = b.finish()?;
        eprintln!("tapwatch: bundle written to {}", path.display());
    }
    Ok(())
}
