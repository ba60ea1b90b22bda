//! tapwatch's command line: one definition, used by the binary and by
//! `tapwatch-gen-assets` (the man pages and shell completions the packages ship).

use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use diag_user::collect::setns::NetnsChoice;
use diag_user::{
    collect::{
        ebpf::AttachMode,
        facts,
        identity::{kubevirt, libvirt, ovsdb, proxmox, HostSources, OvsdbSocket},
        links::DEFAULT_PATTERNS,
        BackendChoice, DatapathChoice, IdentitySource, WatchOptions,
    },
    lab::{Scenario, MAX_VMS},
    model::mac::MacAddr,
    nudge::GatewayArg,
};

/// Per-VM view of frames on hypervisor tap devices: which frames a VM sends to a MAC its
/// tap no longer has, and when QEMU's RARP and the guest's gratuitous ARP announced a
/// migration.
#[derive(Parser)]
#[command(name = "tapwatch", version, about)]
pub struct Cli {
    /// Log what tapwatch and its kernel programs do on stderr (-v: debug, -vv: trace);
    /// RUST_LOG sets finer filters.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Attach to VM taps and report live (the default command).
    Watch(WatchArgs),
    /// Run the verdicts offline on a bundle (directory or .tar.gz) or a pcap/pcapng capture
    /// of tap traffic (`tcpdump -i tapX -w x.pcap`, or `-i any`); given a source and a
    /// destination bundle of one migration, tell it from both hosts.
    Analyze(AnalyzeArgs),
    /// Build a lab of two simulated hypervisors, live-migrate a simulated VM between
    /// them, and watch the destination as on-call would.
    Lab(LabArgs),
    /// Run as a service: watch the taps as `watch` does, without a terminal, and serve
    /// Prometheus metrics on /metrics (and /healthz); optionally a bundle per blackout.
    Serve(ServeArgs),
    /// Print what tapwatch knows of this host and its VMs, without watching anything:
    /// versions, CPU, clock, each VM's CPU, interfaces and disks, the instances directory.
    Facts(FactsArgs),
    /// Before a migration: what would break a VM's live migration from one host to
    /// another, from the two hosts' facts (or bundles). Exit 0: nothing blocks; 1: something
    /// does; 2: bad input.
    Preflight(PreflightArgs),
    /// End a VM's blackout now: write into its tap from the host side the frame that tells
    /// a guest with a stale gateway entry where its gateway is (an ARP request; for IPv6 an
    /// override Neighbour Advertisement for its router, and a Router Advertisement where
    /// the router's address went with the tap's old MAC), then watch whether its stale
    /// frames stop. Exit 0: they did (or --dry-run); 1: they did not; 2: bad input;
    /// 5: refused or not sent (nothing was written).
    Nudge(NudgeArgs),
    /// Internal: removes a killed run's tc filters (started by `watch` itself).
    #[command(name = "cleanup-helper", hide = true)]
    CleanupHelper,
}

#[derive(Args, Clone)]
pub struct FactsArgs {
    /// Print the facts as one JSON object (for `tapwatch preflight`) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Directory of libvirt's live domain XML.
    #[arg(long, value_name = "DIR", default_value = libvirt::DEFAULT_DIR)]
    pub libvirt_dir: PathBuf,
    /// Where Nova keeps instances' local disks (its file system says whether it is shared).
    #[arg(long, value_name = "DIR", default_value = facts::DEFAULT_INSTANCES_DIR)]
    pub instances_dir: PathBuf,
}

#[derive(Args, Clone)]
pub struct PreflightArgs {
    /// The source host's facts (`tapwatch facts --json` there) or a bundle of it.
    #[arg(long, value_name = "SRC")]
    pub from: PathBuf,
    /// The destination host's facts or a bundle of it.
    #[arg(long, value_name = "DST")]
    pub to: PathBuf,
    /// Only these VMs (Nova's name, the libvirt domain, or its UUID); repeatable. Default:
    /// every VM of SRC.
    #[arg(long, value_name = "NAME")]
    pub vm: Vec<String>,
    /// Print the findings as NDJSON `finding` records.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Clone)]
pub struct AnalyzeArgs {
    /// A bundle directory, a .tar.gz bundle, or a pcap/pcapng capture; or two bundles, the
    /// source hypervisor's then the destination's (SRC DST).
    #[arg(value_name = "PATH", num_args = 1..=2, required = true)]
    pub paths: Vec<PathBuf>,
    /// Print NDJSON (verdict records, then the summary) instead of a table.
    #[arg(long)]
    pub json: bool,
    /// The tap's MAC, for a raw capture (otherwise inferred, and said so).
    #[arg(long, value_name = "MAC")]
    pub tap_mac: Option<MacAddr>,
    /// Also write the report page: one self-contained HTML file (the VMs, the diagnosis,
    /// the timeline drawn, the counters, the hosts' differences), to attach to a ticket.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

#[derive(Args, Clone)]
pub struct LabArgs {
    /// What the migration does to the VM's network.
    #[arg(long, value_enum, default_value = "stale-mac")]
    pub scenario: Scenario,
    /// How many VMs migrate at once.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=MAX_VMS as i64))]
    pub vms: u16,
    /// Write NDJSON to stdout (lab steps, tapwatch's records, the truth last) instead of
    /// the full-screen view; ends by itself when the story is over.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// The guests' ARP reachable time (real guests: 15-45 s).
    #[arg(long, value_name = "SECS", default_value = "8", value_parser = parse_lab_time)]
    pub reachable_time: Duration,
    /// Steady traffic before the migration.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = parse_lab_time)]
    pub before: Duration,
    /// The guest also sends a gratuitous ARP the moment it resumes, before QEMU's announce
    /// (it always sends one after each RARP round, as virtio's guest announce does).
    #[arg(long)]
    pub garp: bool,
    /// Seconds between stats records.
    #[arg(long, value_name = "SECS", default_value = "0.5", value_parser = parse_interval)]
    pub interval: Duration,
    /// Seconds the network keeps delivering the VM's traffic to the source after it
    /// resumed on the destination: the SDN's switch-over (BGP, OVN).
    #[arg(long, value_name = "SECS", default_value = "0", value_parser = parse_lab_time)]
    pub sdn_delay: Duration,
    /// Record a bundle per hypervisor: DIR/src/ and DIR/dst/ (DIR new or empty, yours),
    /// for `tapwatch analyze DIR/src DIR/dst`.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// Nudge each VM when its blackout begins (as `watch --remediate` does, with the lab's
    /// own gateway), and tell the stale window with and without it.
    #[arg(long)]
    pub remediate: bool,
    /// The address families the guests speak: 4, 6 (an IPv6 address and a default router
    /// learnt from the hypervisor's Router Advertisement; pinged over IPv6) or dual.
    #[arg(long, value_enum, default_value = "4")]
    pub ip: diag_user::lab::ipv6::LabIp,
}

/// Writing nudges without the operator's word: shared by `watch` and `serve`.
#[derive(Args, Clone, Default)]
pub struct RemediateArgs {
    /// Nudge a VM when its blackout begins, where the evidence says its cache is merely
    /// stale (a routed tap, frames to a MAC this VM's tap had before or to libvirt's fe:
    /// MAC of it): at most once per tap every 5 s, 3 times per blackout, 20 per second on
    /// the host; each nudge a `nudge` record. Off by default.
    #[arg(long)]
    pub remediate: bool,
    /// The guests' gateway (IPv4) or router (IPv6), for nudges: IP, or CIDR=IP for the
    /// guests in that subnet; repeatable, one plain IP per family. Without it, learnt from
    /// the guests' own ARP requests and neighbour solicitations (IPv6: else the link-local
    /// address of the tap's old MAC), else no nudge.
    #[arg(long, value_name = "IP|CIDR=IP")]
    pub gateway: Vec<GatewayArg>,
}

#[derive(Args, Clone)]
pub struct NudgeArgs {
    /// The tap (its name), or the VM (Nova's instance name, the libvirt domain or its
    /// UUID): each of its taps with a stale window open is nudged.
    #[arg(value_name = "TAP|VM")]
    pub target: String,
    /// The guest's gateway (IPv4) or router (IPv6): IP, or CIDR=IP pairs (repeatable) for
    /// hosts whose guests sit in several subnets; one plain IP per family. Without it,
    /// learnt from the guest's own ARP requests and neighbour solicitations seen while
    /// watching (IPv6: else the link-local address of the tap's old MAC); else the nudge
    /// refuses and says so.
    #[arg(long, value_name = "IP|CIDR=IP")]
    pub gateway: Vec<GatewayArg>,
    /// Print the frames that would be sent, and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print `nudge` records (NDJSON) instead of words.
    #[arg(long)]
    pub json: bool,
    /// Nudge even when no stale window is open on the tap.
    #[arg(long)]
    pub force: bool,
    /// Seconds to watch the tap for its stale frames before the nudge, and for their end
    /// after it (0.5 to 300).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_nudge_wait)]
    pub wait: Duration,
    /// Directory of libvirt's live domain XML, for finding a VM's taps by its name.
    #[arg(long, value_name = "DIR", default_value = libvirt::DEFAULT_DIR)]
    pub libvirt_dir: PathBuf,
    /// How frames are seen (as for `watch`).
    #[arg(long, value_enum, default_value = "auto")]
    pub datapath: DatapathChoice,
    /// The network namespace of the tap: host (tapwatch's own), a PID (that process's: a
    /// KubeVirt pod's QEMU, a container), or a namespace file (/var/run/netns/NAME).
    /// A tap shown as NAMESPACE/IFNAME is found there without it.
    #[arg(long, value_name = "host|PID|PATH", default_value = "host")]
    pub netns: NetnsChoice,
}

impl NudgeArgs {
    /// A tap named as a run shows one of another namespace, `NAMESPACE/IFNAME`: its
    /// namespace is entered (a pin's name under /run/netns, else a PID) and the tap named
    /// by its own name there.
    pub fn find_namespace(&mut self) {
        let (Some(ns), ifname) = diag_user::collect::namespaces::split(&self.target) else {
            return;
        };
        if self.netns != NetnsChoice::Host {
            return;
        }
        let pin = PathBuf::from("/run/netns").join(ns);
        self.netns = if pin.exists() {
            NetnsChoice::Path(pin)
        } else {
            match ns.parse() {
                Ok(pid) => NetnsChoice::Pid(pid),
                Err(_) => return,
            }
        };
        self.target = ifname.to_string();
    }
}

fn parse_nudge_wait(s: &str) -> Result<Duration, String> {
    secs_in(s, 0.5, 300.0)
}

/// Which taps, how to see them, and who is behind them: shared by `watch` and `serve`.
#[derive(Args, Clone)]
pub struct TapArgs {
    /// Interfaces to watch, by shell glob; repeatable. Default: tap* and vnet*.
    #[arg(long = "iface", value_name = "GLOB")]
    pub ifaces: Vec<String>,
    /// Which network namespaces' taps are seen: all (tapwatch's own and every other, as
    /// they come and go: KubeVirt pods, containers), host (tapwatch's own only), a PID
    /// (that process's: a pod's QEMU), or a namespace file (/var/run/netns/NAME). Default:
    /// all on the host itself, else tapwatch's own (inside a container or `ip netns exec`).
    #[arg(long, value_name = "all|host|PID|PATH", default_value = "auto")]
    pub netns: NetnsChoice,
    /// Seconds between stats records (0.01 to 86400).
    #[arg(long, value_name = "SECS", default_value = "1", value_parser = parse_interval)]
    pub interval: Duration,
    /// How to hook the per-frame tc probe where a tap carries it.
    #[arg(long, value_enum, default_value = "auto")]
    pub attach_mode: AttachMode,
    /// How frames are seen: the kernel's drops (one hook for all taps), the per-frame tc
    /// probe on every tap, or libpcap; auto picks the first the kernel supports and says
    /// why.
    #[arg(long, value_enum, default_value = "auto")]
    pub datapath: DatapathChoice,
    /// Older spelling: ebpf (auto without libpcap), pcap, auto.
    #[arg(long, value_enum, conflicts_with = "datapath")]
    pub backend: Option<BackendChoice>,
    /// Seconds a tap keeps the per-frame probe it got for stale frames after the last one
    /// (0 to 86400).
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_linger)]
    pub probe_linger: Duration,
    /// Directory of libvirt's live domain XML, for VM names and guest MACs.
    #[arg(long, value_name = "DIR", default_value = libvirt::DEFAULT_DIR)]
    pub libvirt_dir: PathBuf,
    /// The OVSDB server's socket, for what Open vSwitch's `external_ids` say of each tap
    /// (Neutron port, Nova instance). Default /var/run/openvswitch/db.sock, unused without
    /// a word where there is none; a socket named here and missing is said.
    #[arg(long, value_name = "PATH")]
    pub ovsdb: Option<PathBuf>,
    /// Proxmox VE's cluster file system, for the names and NIC MACs of `tap<VMID>i<N>`
    /// taps' VMs.
    #[arg(long, value_name = "DIR", default_value = proxmox::DEFAULT_DIR)]
    pub pve_dir: PathBuf,
    /// The source host's facts (`tapwatch facts --json` there) or a bundle of it: a
    /// destination tap's forecast is then certain either way.
    #[arg(long, value_name = "FILE")]
    pub source_facts: Option<PathBuf>,
}

impl Default for TapArgs {
    fn default() -> Self {
        Self {
            ifaces: Vec::new(),
            netns: NetnsChoice::Auto,
            interval: Duration::from_secs(1),
            attach_mode: AttachMode::Auto,
            datapath: DatapathChoice::Auto,
            backend: None,
            probe_linger: Duration::from_secs(60),
            libvirt_dir: PathBuf::from(libvirt::DEFAULT_DIR),
            ovsdb: None,
            pve_dir: PathBuf::from(proxmox::DEFAULT_DIR),
            source_facts: None,
        }
    }
}

impl TapArgs {
    pub fn options(&self, duration: Option<Duration>) -> WatchOptions {
        let patterns = if self.ifaces.is_empty() {
            DEFAULT_PATTERNS.iter().map(|s| s.to_string()).collect()
        } else {
            self.ifaces.clone()
        };
        WatchOptions {
            patterns,
            interval: self.interval,
            duration,
            attach_mode: self.attach_mode,
            datapath: self.backend.map_or(self.datapath, DatapathChoice::from),
            probe_linger: self.probe_linger,
            identities: IdentitySource::Host(HostSources {
                libvirt_dir: self.libvirt_dir.clone(),
                proc: Some(kubevirt::PROC.into()),
                ovsdb: Some(OvsdbSocket {
                    path: self
                        .ovsdb
                        .clone()
                        .unwrap_or_else(|| ovsdb::DEFAULT_SOCKET.into()),
                    explicit: self.ovsdb.is_some(),
                }),
                proxmox_dir: Some(self.pve_dir.clone()),
            }),
            forget_after: None,
            all_namespaces: self.netns.watches_all(),
            namespace_prefix: None,
        }
    }
}

#[derive(Args, Clone, Default)]
pub struct WatchArgs {
    /// Write NDJSON (one object a line) to stdout instead of the full-screen view.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub taps: TapArgs,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM/SIGHUP).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Record a bug-report bundle into DIR (new or empty, yours): events.ndjson,
    /// frames.pcapng, host.json, summary.md.
    #[arg(long, value_name = "DIR")]
    pub record: Option<PathBuf>,
    /// Stop writing frames to the bundle past this size (counters are always kept).
    #[arg(long, value_name = "MB", default_value_t = 100, value_parser = clap::value_parser!(u64).range(0..=1 << 20))]
    pub record_max_mb: u64,
    /// Also pack the bundle into DIR.tar.gz when done.
    #[arg(long, requires = "record")]
    pub pack: bool,
    #[command(flatten)]
    pub nudges: RemediateArgs,
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address and port of the HTTP endpoint (/metrics for Prometheus, /healthz);
    /// repeatable. Keep it on loopback or a management network.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9464")]
    pub listen: Vec<String>,
    #[command(flatten)]
    pub taps: TapArgs,
    /// Stop after this many seconds (default: run until SIGINT/SIGTERM/SIGHUP).
    #[arg(long, value_name = "SECS", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Write a bug-report bundle per blackout into DIR/blackout-<time>-<vm>/ (DIR yours,
    /// writable by no one else; made if missing).
    #[arg(long, value_name = "DIR")]
    pub record_dir: Option<PathBuf>,
    /// Each blackout bundle stops taking frames past this size (its counters are kept).
    #[arg(long, value_name = "MB", default_value_t = 20, requires = "record_dir", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub record_max_mb: u64,
    /// The oldest blackout bundles are removed when there are more than this many.
    #[arg(long, value_name = "N", default_value_t = 50, requires = "record_dir", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub record_keep: u64,
    /// The oldest blackout bundles are removed when all of them take more than this.
    #[arg(long, value_name = "MB", default_value_t = 1024, requires = "record_dir", value_parser = clap::value_parser!(u64).range(1..=1 << 24))]
    pub record_total_mb: u64,
    /// Seconds a tap's series (and all tapwatch knows of it) are kept after it went away
    /// (0 to 86400).
    #[arg(long, value_name = "SECS", default_value = "300", value_parser = parse_linger)]
    pub forget_after: Duration,
    #[command(flatten)]
    pub nudges: RemediateArgs,
}

/// Seconds within `[min, max]`, with the range in the error.
fn secs_in(s: &str, min: f64, max: f64) -> Result<Duration, String> {
    // `f64` also reads NaN and infinities, which are no number of seconds.
    let v = s
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| format!("not a number of seconds: {s:?}"))?;
    if v < min || v > max {
        return Err(format!("{s} is out of range: give {min} to {max} seconds"));
    }
    Duration::try_from_secs_f64(v).map_err(|e| format!("{s}: {e}"))
}

fn parse_interval(s: &str) -> Result<Duration, String> {
    secs_in(s, 0.01, 86_400.0)
}

/// Up to ten years: a run that long is "until stopped".
fn parse_duration(s: &str) -> Result<Duration, String> {
    secs_in(s, 0.001, 315_360_000.0)
}

fn parse_linger(s: &str) -> Result<Duration, String> {
    secs_in(s, 0.0, 86_400.0)
}

fn parse_lab_time(s: &str) -> Result<Duration, String> {
    secs_in(s, 0.0, 3_600.0)
}

/// The command line, with the version tapwatch reports: `-V` the build on one line,
/// `--version` also the datapaths this host offers (looked up only when asked: it reads the
/// kernel's BTF).
pub fn command() -> clap::Command {
    use clap::CommandFactory as _;
    let cmd = Cli::command().version(diag_user::version::short());
    if std::env::args_os().skip(1).any(|a| a == "--version") {
        cmd.long_version(diag_user::version::long())
    } else {
        cmd
    }
}

/// Parses the command line (exits with clap's message and status 2 when it is wrong).
pub fn parse() -> Cli {
    use clap::FromArgMatches as _;
    Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;
    use proptest::prelude::*;

    use super::*;

    type SecondsParser = fn(&str) -> Result<Duration, String>;

    /// Each parser of seconds, with its range.
    const SECONDS: [(&str, SecondsParser, f64, f64); 4] = [
        ("interval", parse_interval, 0.01, 86_400.0),
        ("duration", parse_duration, 0.001, 315_360_000.0),
        ("linger", parse_linger, 0.0, 86_400.0),
        ("lab time", parse_lab_time, 0.0, 3_600.0),
    ];

    /// What a parser of seconds must make of `s`: the number it reads, within its range,
    /// or an error that says which of the two it is not.
    fn check_seconds(s: &str) -> Result<(), TestCaseError> {
        for (what, parse, min, max) in SECONDS {
            let number = s.trim().parse::<f64>().ok().filter(|v| v.is_finite());
            match (parse(s), number) {
                (Ok(d), Some(v)) => {
                    prop_assert!((min..=max).contains(&v), "{what}: {s:?} read as {d:?}");
                    prop_assert!(
                        (d.as_secs_f64() - v).abs() <= 1e-9 * v.max(1.0),
                        "{what}: {s:?} read as {d:?}"
                    );
                }
                (Ok(d), None) => prop_assert!(false, "{what}: {s:?} is no number, read as {d:?}"),
                (Err(e), Some(v)) => {
                    prop_assert!(!(min..=max).contains(&v), "{what}: {s:?} refused: {e}");
                    prop_assert!(
                        e.contains("out of range")
                            && e.contains(&format!("give {min} to {max} seconds")),
                        "{what}: {e}"
                    );
                }
                (Err(e), None) => {
                    prop_assert!(e.contains("not a number of seconds"), "{what}: {s:?}: {e}")
                }
            }
        }
        Ok(())
    }

    /// The values people and scripts get wrong, each with what it must give.
    #[test]
    fn bad_seconds_are_refused_for_what_they_are() {
        for s in [
            "",
            " ",
            "NaN",
            "nan",
            "inf",
            "-inf",
            "infinity",
            "1e999",
            "-1",
            "-0",
            "0",
            "1e-999",
            "0x10",
            "1_000",
            "1,5",
            "１",
            "٣",
            "5s",
            "+5",
            " 5 ",
            ".5",
            "5.",
            "1e3",
            "\u{3000}2",
            "0.009999999999999",
            "86400.0000001",
            "315360000",
            "315360001",
            &"9".repeat(400),
        ] {
            check_seconds(s).unwrap();
        }
    }

    /// The sizes and counts, read by clap: the number, within its range, or a usage error.
    #[test]
    fn bad_sizes_and_counts_are_refused() {
        for s in [
            "",
            "0",
            "-1",
            "+5",
            " 5",
            "1e3",
            "18446744073709551616",
            "１",
            "99999999999",
        ] {
            for (args, max) in [
                (&["watch", "--record-max-mb"][..], 1u64 << 20),
                (&["serve", "--record-dir", "d", "--record-keep"], 100_000),
                (
                    &["serve", "--record-dir", "d", "--record-total-mb"],
                    1 << 24,
                ),
                (&["lab", "--vms"], MAX_VMS as u64),
            ] {
                let parsed = Cli::try_parse_from(["tapwatch"].iter().chain(args).chain([&s]));
                let number = s.parse::<u64>().ok();
                let min = u64::from(args[0] != "watch");
                match (parsed, number) {
                    (Ok(_), Some(n)) => assert!((min..=max).contains(&n), "{args:?} {s:?}"),
                    (Ok(_), None) => panic!("{args:?} {s:?} is no number"),
                    (Err(e), n) => {
                        assert!(
                            n.is_none_or(|n| !(min..=max).contains(&n)),
                            "{args:?} {s:?}: {e}"
                        );
                        assert_eq!(e.exit_code(), 2, "{args:?} {s:?}: {e}");
                    }
                }
            }
        }
    }

    proptest! {
        #[test]
        fn any_text_as_seconds(s in "\\PC{0,40}|[-+0-9.eE naifINF]{0,24}") {
            check_seconds(&s)?;
        }

        #[test]
        fn any_number_as_seconds(v in proptest::num::f64::ANY, exp in any::<bool>()) {
            let s = if exp { format!("{v:e}") } else { format!("{v}") };
            check_seconds(&s)?;
        }
    }
}
