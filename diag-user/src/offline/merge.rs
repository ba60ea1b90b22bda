//! `tapwatch analyze SRC DST`: one migration told from both hosts' bundles. The source's
//! bundle says when the VM stopped there (libvirt's status file, else its last frame);
//! the destination's when it resumed (its first RARP) and how the outage went on (the
//! gaps, the blackout); host.json of each says what the hosts differ in that matters to a
//! migration. The two clocks are compared with their uncertainty stated.

use std::{
    cell::OnceCell,
    collections::{BTreeMap, HashMap, HashSet},
    io,
    path::Path,
};

use super::{analyze_path, read_host_json, AnalyzeError, RunId};
use crate::{
    model::identity::VmInterface,
    model::{
        clock::Ts,
        host::{cpuinfo_flag, HostJson, TapFacts},
        mac::MacAddr,
        HostFact, MigrationRecord, Record, SummaryRow,
    },
};

/// What the source's records say of one tap.
#[derive(Clone, Debug, Default)]
struct SrcTap {
    vm: Option<VmInterface>,
    /// libvirt said the domain paused for a migration.
    paused: Option<Ts>,
    /// The last frame from the VM reported.
    last_frame: Option<Ts>,
    /// The first stats record after the VM's last counted frame, and the one before it.
    counted_until: Option<(Ts, Ts)>,
    last_count: u64,
    prev_stats: Option<Ts>,
}

/// The merge: one record per VM found on both sides, and every compared fact per VM (the
/// record keeps those that differ).
pub struct Merge {
    pub migrations: Vec<(MigrationRecord, Vec<HostFact>)>,
}

/// Merges a source and a destination bundle (directories or `.tar.gz`). One recording
/// given as both (the same path twice, a copy, the bundle and its `.tar.gz`) is refused:
/// one host and one clock make no migration.
pub fn merge(src: &Path, dst: &Path) -> Result<Merge, AnalyzeError> {
    let (src_host, dst_host) = two_runs(src, dst)?;
    let taps = read_source(src)?;
    let dst_side = read_destination(dst)?;
    let src_vms: BTreeMap<&str, &VmInterface> = taps
        .iter()
        .filter_map(|(name, t)| {
            let vm =
                t.vm.as_ref()
                    .or_else(|| src_host.taps.get(name).and_then(|f| f.libvirt.as_ref()))?;
            Some((name.as_str(), vm))
        })
        .collect();
    let sides = Sides {
        src_host: &src_host,
        dst_host: &dst_host,
        taps: &taps,
        src_vms: &src_vms,
        index: VmIndex::new(&src_vms),
        hosts: Compared::new(&src_host, &dst_host),
        dst_vms: &dst_side.vms,
        end: dst_side.end,
    };
    let migrations = dst_side
        .rows
        .iter()
        .filter_map(|row| sides.migration(row))
        .collect();
    Ok(Merge { migrations })
}

/// Both bundles' host.json, once it is sure they are two recordings.
fn two_runs(src: &Path, dst: &Path) -> Result<(HostJson, HostJson), AnalyzeError> {
    let src_host = read_host_json(src)?;
    let dst_host = read_host_json(dst)?;
    let src_run = RunId::of(src, src_host.as_ref())?;
    if same_file(src, dst) || src_run.same(&RunId::of(dst, dst_host.as_ref())?) {
        return Err(AnalyzeError::SameRun {
            src: src.display().to_string(),
            dst: dst.display().to_string(),
            run: src_run.to_string(),
        });
    }
    Ok((src_host.unwrap_or_default(), dst_host.unwrap_or_default()))
}

impl SrcTap {
    /// What a source record says of its taps (`taps`).
    fn follow(taps: &mut HashMap<String, SrcTap>, r: &Record) {
        match r {
            Record::Identity {
                ts,
                ifname,
                libvirt,
            } => {
                let t = taps.entry(ifname.clone()).or_default();
                if let Some(vm) = libvirt {
                    if vm.paused_for_migration() && t.paused.is_none() {
                        t.paused = Some(*ts);
                    }
                    t.vm = Some(vm.clone());
                }
            }
            Record::Attached { ifname, .. } => {
                taps.entry(ifname.clone()).or_default();
            }
            // Only taps the replay knows: a row of a tap never attached adds nothing, so
            // this map grows with the taps, not with the bundle.
            Record::Frame(f) if f.direction == crate::model::Direction::FromVm => {
                if let Some(t) = taps.get_mut(&f.ifname) {
                    t.last_frame = Some(f.ts);
                }
            }
            Record::Stats { ts, taps: rows } => {
                for row in rows {
                    let Some(t) = taps.get_mut(&row.ifname) else {
                        continue;
                    };
                    if row.from_vm_frames > t.last_count {
                        t.last_count = row.from_vm_frames;
                        t.counted_until = t.prev_stats.map(|p| (p, *ts));
                    }
                    t.prev_stats = Some(*ts);
                }
            }
            _ => {}
        }
    }

    /// When the VM stopped on the source, what says so, and the note that goes with it.
    fn pause(&self) -> (Option<Ts>, &'static str, Option<String>) {
        match (self.paused, self.last_frame, self.counted_until) {
            (Some(p), _, _) => (Some(p), "libvirt", None),
            (None, Some(f), _) => (
                Some(f),
                "frames",
                Some(
                    "the pause is the VM's last frame reported on the source (libvirt's status \
                     file did not say when it paused): a lower bound of the pause"
                        .into(),
                ),
            ),
            (None, None, Some((before, after))) => (
                Some(before),
                "stats",
                Some(format!(
                    "the pause is known only to the source's stats interval: the VM's last \
                     frame came between {before} and {after}"
                )),
            ),
            _ => (
                None,
                "unknown",
                Some("the source's bundle does not say when the VM paused".into()),
            ),
        }
    }
}

fn read_source(src: &Path) -> Result<HashMap<String, SrcTap>, AnalyzeError> {
    let mut taps: HashMap<String, SrcTap> = HashMap::new();
    analyze_path(src, None, &mut |r: &Record| -> io::Result<()> {
        SrcTap::follow(&mut taps, r);
        Ok(())
    })?;
    Ok(taps)
}

/// What the destination's records say: its summary's rows and end, and its VMs (its
/// host.json may be missing: a bundle cut short).
struct DstSide {
    end: Ts,
    rows: Vec<SummaryRow>,
    vms: HashMap<String, VmInterface>,
}

fn read_destination(dst: &Path) -> Result<DstSide, AnalyzeError> {
    let mut vms: HashMap<String, VmInterface> = HashMap::new();
    let analysis = analyze_path(dst, None, &mut |r: &Record| {
        if let Record::Identity {
            ifname,
            libvirt: Some(vm),
            ..
        } = r
        {
            vms.insert(ifname.clone(), vm.clone());
        }
        Ok(())
    })?;
    let (end, rows) = match analysis.summary {
        Some(Record::Summary { ts, taps, .. }) => (ts, taps),
        _ => (Ts::default(), Vec::new()),
    };
    Ok(DstSide { end, rows, vms })
}

/// Everything one destination row is paired and told against.
struct Sides<'a> {
    src_host: &'a HostJson,
    dst_host: &'a HostJson,
    taps: &'a HashMap<String, SrcTap>,
    src_vms: &'a BTreeMap<&'a str, &'a VmInterface>,
    index: VmIndex<'a>,
    hosts: Compared<'a>,
    dst_vms: &'a HashMap<String, VmInterface>,
    end: Ts,
}

impl Sides<'_> {
    /// The migration record of one destination tap with a verdict, paired with its source
    /// tap where both bundles know the VM; none for a tap the source never had.
    fn migration(&self, row: &SummaryRow) -> Option<(MigrationRecord, Vec<HostFact>)> {
        let v = row.verdict.as_ref()?;
        let dst_ifname = &row.counters.ifname;
        let dst_facts = self.dst_host.taps.get(dst_ifname);
        let dst_vm = dst_facts
            .and_then(|f| f.libvirt.as_ref())
            .or_else(|| self.dst_vms.get(dst_ifname));
        let found = match dst_vm.and_then(|d| self.index.find(d)) {
            Some(name) => Some(name.to_string()),
            // Tap names repeat across hosts (libvirt's vnet0, vnet1, …): a name alone is
            // the same VM only when neither host says which VM is behind it.
            None if dst_vm.is_none() && self.taps.contains_key(dst_ifname) => {
                (!self.src_vms.contains_key(dst_ifname.as_str())).then(|| dst_ifname.clone())
            }
            None if self.taps.contains_key(dst_ifname) => None,
            None => return None,
        };
        // What dates a record when neither the pause nor the resume is known: when the
        // destination first saw the tap, else the end of its recording.
        let seen = row.mac_history.first().map(|h| h.ts);
        let mut record = MigrationRecord {
            ts: v.switchover_ts.flatten().or(seen).unwrap_or(self.end),
            vm: v.vm.clone(),
            dst_ifname: dst_ifname.clone(),
            pause_from: "unknown".into(),
            resume_ts: v.switchover_ts.flatten(),
            inbound_gap_ms: v.inbound_gap_ms.flatten(),
            outbound_gap_ms: v.outbound_gap_ms.flatten(),
            blackout_ms: v.blackout_ms,
            ..MigrationRecord::default()
        };
        let Some(src_ifname) = found else {
            record.notes.push(not_found(
                dst_ifname,
                dst_vm,
                self.src_vms.get(dst_ifname.as_str()).copied(),
            ));
            let all = self.hosts.facts(None, dst_vm);
            record.host_diff = all.iter().filter(|f| f.src != f.dst).cloned().collect();
            return Some((record, all));
        };
        self.pair(&mut record, &src_ifname, seen);
        let all = self.hosts.facts(
            Some((self.src_host.taps.get(&src_ifname), dst_facts)),
            dst_vm.or(self.src_vms.get(src_ifname.as_str()).copied()),
        );
        record.host_diff = all.iter().filter(|f| f.src != f.dst).cloned().collect();
        Some((record, all))
    }

    /// The source's side of a paired record: the pause, the clocks, the downtime.
    fn pair(&self, record: &mut MigrationRecord, src_ifname: &str, seen: Option<Ts>) {
        let (pause, pause_from, note) = self.taps[src_ifname].pause();
        record.notes.extend(note);
        record.src_ifname = Some(src_ifname.to_string());
        record.pause_ts = pause;
        record.pause_from = pause_from.into();
        record.ts = record.resume_ts.or(pause).or(seen).unwrap_or(self.end);
        record.clock_uncertainty_ms = match (self.src_host.host.clock, self.dst_host.host.clock) {
            (Some(a), Some(b)) => a
                .uncertainty_ms()
                .zip(b.uncertainty_ms())
                .map(|(a, b)| a + b),
            _ => None,
        };
        if record.clock_uncertainty_ms.is_none() {
            record.notes.push(
                "one host's clock is not known to be synchronised (NTP): the times of the two \
                 hosts may be off by more than the downtime"
                    .into(),
            );
        }
        if let (Some(p), Some(r)) = (pause, record.resume_ts) {
            let ms = r.ms_since(p);
            if ms < 0 {
                record.notes.push(format!(
                    "the destination's resume comes {} ms before the source's pause on the two \
                     clocks: they disagree by at least that much",
                    -ms
                ));
            }
            record.downtime_ms = Some(ms.max(0) as u64);
        }
    }
}

/// Whether two paths name one file or directory (however spelled, through links).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// An identifier of the VM behind a source tap, as it is compared with a destination's.
/// The strongest identifier both know decides whether two are one VM: the UUID, else the
/// domain name (Nova keeps it across hosts), else the guest MAC. A domain name is compared
/// only when not both have a UUID, so it is keyed with whether the source's has one; a
/// guest MAC likewise with whether it has a UUID and a domain name.
#[derive(Debug, PartialEq, Eq, Hash)]
enum Key<'a> {
    Uuid(&'a str),
    Domain(&'a str, bool),
    Mac(MacAddr, bool, bool),
}

fn uuid(vm: &VmInterface) -> Option<&str> {
    vm.uuid.as_deref().filter(|u| !u.is_empty())
}

fn domain(vm: &VmInterface) -> Option<&str> {
    Some(vm.domain.as_str()).filter(|d| !d.is_empty())
}

/// The source's taps by the identifiers of their VMs, so that each destination VM is
/// looked up once instead of compared with every source tap.
struct VmIndex<'a>(HashMap<Key<'a>, &'a str>);

impl<'a> VmIndex<'a> {
    /// `vms` in name order: the first tap with an identifier keeps it.
    fn new(vms: &BTreeMap<&'a str, &'a VmInterface>) -> Self {
        let mut index = HashMap::new();
        for (&name, &vm) in vms {
            let (u, d) = (uuid(vm), domain(vm));
            let keys = [
                u.map(Key::Uuid),
                d.map(|d| Key::Domain(d, u.is_some())),
                vm.guest_mac.map(|m| Key::Mac(m, u.is_some(), d.is_some())),
            ];
            for key in keys.into_iter().flatten() {
                index.entry(key).or_insert(name);
            }
        }
        Self(index)
    }

    /// The source tap whose VM is `vm` (the first by name), if any.
    fn find(&self, vm: &VmInterface) -> Option<&'a str> {
        let (u, d) = (uuid(vm), domain(vm));
        // A weaker identifier counts only when not both have a stronger one: if `vm` has
        // the stronger one, only with sources that lack it; if not, with any source.
        let either = |has: bool| {
            if has {
                &[false][..]
            } else {
                &[false, true][..]
            }
        };
        let mut keys = Vec::new();
        keys.extend(u.map(Key::Uuid));
        if let Some(d) = d {
            keys.extend(either(u.is_some()).iter().map(|&su| Key::Domain(d, su)));
        }
        if let Some(m) = vm.guest_mac {
            for &su in either(u.is_some()) {
                for &sd in either(d.is_some()) {
                    keys.push(Key::Mac(m, su, sd));
                }
            }
        }
        keys.iter().filter_map(|k| self.0.get(k).copied()).min()
    }
}

/// Why the destination's VM on `dst_ifname` has no source tap, though the source has a tap
/// of that name.
fn not_found(dst_ifname: &str, dst: Option<&VmInterface>, src: Option<&VmInterface>) -> String {
    let name = |vm: &VmInterface| shown(vm.display_name());
    match (dst, src) {
        (Some(_), Some(s)) => format!(
            "the VM was not found in the source's bundle: no tap there has its UUID, domain or \
             guest MAC, and the source's {dst_ifname} is another VM's ({}): tap names repeat \
             across hosts; give the bundle of the host the VM left",
            name(s)
        ),
        (Some(_), None) => format!(
            "the VM was not found in the source's bundle: no tap there has its UUID, domain or \
             guest MAC, and the source's {dst_ifname} does not say which VM is behind it: tap \
             names repeat across hosts, so a name alone is not the same VM"
        ),
        (None, Some(s)) => format!(
            "the VM was not found in the source's bundle: the destination's bundle does not say \
             which VM is behind {dst_ifname}, and the source's {dst_ifname} is {}'s: tap names \
             repeat across hosts, so a name alone is not the same VM",
            name(s)
        ),
        (None, None) => format!("the VM was not found in the source's bundle ({dst_ifname})"),
    }
}

/// The most characters of a fact shown: host.json is foreign input, and a fact is
/// repeated for every VM.
const FACT_CHARS: usize = 200;
/// The most missing CPU flags named (the rest are counted).
const FLAGS_NAMED: usize = 16;

/// `v` cut to [`FACT_CHARS`].
fn shown(v: &str) -> String {
    match v.char_indices().nth(FACT_CHARS) {
        Some((at, _)) => format!("{}…", &v[..at]),
        None => v.to_string(),
    }
}

/// What is compared of the two hosts, worked out once for all their VMs: the work per VM
/// is then its own facts, never the hosts' again.
struct Compared<'a> {
    src: &'a HostJson,
    dst: &'a HostJson,
    /// The facts of the hosts themselves (the same for every VM).
    host: Vec<HostFact>,
    src_flags: HashSet<&'a str>,
    dst_flags: HashSet<&'a str>,
    /// A host-passthrough guest depends on all of the source's flags: the same check for
    /// every such VM.
    passthrough: OnceCell<(String, String)>,
}

impl<'a> Compared<'a> {
    fn new(src: &'a HostJson, dst: &'a HostJson) -> Self {
        let or_unknown = |v: Option<&str>| v.map_or_else(|| "unknown".to_string(), shown);
        let kernel = |h: &HostJson| {
            or_unknown(Some(h.host.kernel_release.as_str()).filter(|s| !s.is_empty()))
        };
        let clock = |h: &HostJson| match h.host.clock {
            Some(c) if c.synchronised => format!(
                "synchronised, estimated error {:.1} ms",
                c.estimated_error_us as f64 / 1000.0
            ),
            Some(_) => "not synchronised".into(),
            None => "unknown".into(),
        };
        let fact = |fact: &str, src: String, dst: String| HostFact {
            fact: fact.into(),
            src,
            dst,
        };
        let host = vec![
            fact("kernel", kernel(src), kernel(dst)),
            fact(
                "libvirt",
                or_unknown(src.host.libvirt_version.as_deref()),
                or_unknown(dst.host.libvirt_version.as_deref()),
            ),
            fact(
                "QEMU",
                or_unknown(src.host.qemu_version.as_deref()),
                or_unknown(dst.host.qemu_version.as_deref()),
            ),
            fact(
                "CPU model",
                or_unknown(src.host.cpu_model.as_deref()),
                or_unknown(dst.host.cpu_model.as_deref()),
            ),
            fact("clock", clock(src), clock(dst)),
        ];
        let flags = |h: &'a HostJson| h.host.cpu_flags.iter().map(String::as_str).collect();
        Self {
            src,
            dst,
            host,
            src_flags: flags(src),
            dst_flags: flags(dst),
            passthrough: OnceCell::new(),
        }
    }

    /// Which of `needed` each host lacks, in words.
    fn missing<'n>(&self, needed: impl Iterator<Item = &'n str> + Clone) -> (String, String) {
        let lacks = |h: &HostJson, flags: &HashSet<&str>| {
            if h.host.cpu_flags.is_empty() {
                return "unknown (no CPU flags recorded)".to_string();
            }
            let mut gone = needed.clone().filter(|n| !flags.contains(n));
            let named: Vec<String> = gone.by_ref().take(FLAGS_NAMED).map(shown).collect();
            let more = gone.count();
            match (named.len(), more) {
                (0, _) => format!("all {} present", needed.clone().count()),
                (_, 0) => format!("missing: {}", named.join(", ")),
                (n, more) => format!("missing {}: {} and {more} more", n + more, named.join(", ")),
            }
        };
        (
            lacks(self.src, &self.src_flags),
            lacks(self.dst, &self.dst_flags),
        )
    }

    /// Every fact compared, as each host has it. `taps`: the VM's tap on each host (its
    /// facts when host.json has them); `None` when the VM has no tap on the source, which
    /// leaves the taps' facts out.
    fn facts(
        &self,
        taps: Option<(Option<&TapFacts>, Option<&TapFacts>)>,
        vm: Option<&VmInterface>,
    ) -> Vec<HostFact> {
        let (clock, host) = self
            .host
            .split_last()
            .expect("the host facts end with the clock");
        let mut out = host.to_vec();
        let tap = |t: Option<&TapFacts>, f: &dyn Fn(&TapFacts) -> Option<String>| {
            t.and_then(f)
                .map_or_else(|| "unknown".into(), |v| shown(&v))
        };
        if let Some((src_tap, dst_tap)) = taps {
            out.push(HostFact {
                fact: "tap MAC".into(),
                src: tap(src_tap, &|t| t.mac.map(|m| m.to_string())),
                dst: tap(dst_tap, &|t| t.mac.map(|m| m.to_string())),
            });
            out.push(HostFact {
                fact: "tap MAC derivation".into(),
                src: tap(src_tap, &|t| t.mac_derivation.clone()),
                dst: tap(dst_tap, &|t| t.mac_derivation.clone()),
            });
            out.push(HostFact {
                fact: "MTU".into(),
                src: tap(src_tap, &|t| t.mtu.map(|m| m.to_string())),
                dst: tap(dst_tap, &|t| t.mtu.map(|m| m.to_string())),
            });
        }
        if let Some(cpu) = vm.and_then(|v| v.cpu.as_ref()) {
            // What the guest's CPU depends on: the features its definition requires, or
            // all of the source's flags when it sees the host's CPU as it is.
            let (src, dst) = if cpu.mode.as_deref() == Some("host-passthrough") {
                self.passthrough
                    .get_or_init(|| {
                        self.missing(self.src.host.cpu_flags.iter().map(String::as_str))
                    })
                    .clone()
            } else {
                let needed: Vec<String> = cpu.features.iter().map(|f| cpuinfo_flag(f)).collect();
                self.missing(needed.iter().map(String::as_str))
            };
            out.push(HostFact {
                fact: shown(
                    format!(
                        "guest CPU flags ({} {})",
                        cpu.mode.as_deref().unwrap_or("?"),
                        cpu.model.as_deref().unwrap_or("")
                    )
                    .trim_end(),
                ),
                src,
                dst,
            });
        }
        out.push(clock.clone());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::host::{ClockFacts, HostFacts},
        model::identity::GuestCpu,
    };

    fn host(flags: &[&str], libvirt: &str) -> HostJson {
        HostJson {
            host: HostFacts {
                kernel_release: "6.8.0-45-generic".into(),
                libvirt_version: Some(libvirt.into()),
                cpu_flags: flags.iter().map(|s| s.to_string()).collect(),
                clock: Some(ClockFacts {
                    synchronised: true,
                    estimated_error_us: 500,
                    maximum_error_us: 9000,
                }),
                ..HostFacts::default()
            },
            ..HostJson::default()
        }
    }

    /// host.json is foreign input: a host claiming 300,000 CPU flags is checked in time
    /// linear in them (each flag was searched for in a list: minutes).
    #[test]
    fn a_host_claiming_300k_cpu_flags_is_checked_in_linear_time() {
        let flags: Vec<String> = (0..300_000).map(|i| format!("flag{i}")).collect();
        let src = HostJson {
            host: HostFacts {
                cpu_flags: flags.clone(),
                ..HostFacts::default()
            },
            ..HostJson::default()
        };
        let mut dst = src.clone();
        // The destination lacks every tenth flag.
        dst.host.cpu_flags.retain(|f| !f.ends_with('7'));
        let passthrough = VmInterface {
            cpu: Some(GuestCpu {
                mode: Some("host-passthrough".into()),
                ..GuestCpu::default()
            }),
            ..VmInterface::default()
        };
        let all = Compared::new(&src, &dst).facts(None, Some(&passthrough));
        let cpu = all
            .iter()
            .find(|f| f.fact.starts_with("guest CPU"))
            .unwrap();
        assert_eq!(cpu.src, "all 300000 present");
        assert!(
            cpu.dst.starts_with("missing 30000: flag7, flag17, "),
            "{}",
            &cpu.dst[..100]
        );
        assert!(cpu.dst.ends_with(" and 29984 more"), "{}", cpu.dst);
        // A fact is repeated for every VM: never longer than a line or two.
        dst.host.cpu_model = Some("x".repeat(1 << 20));
        let all = Compared::new(&src, &dst).facts(None, None);
        let model = all.iter().find(|f| f.fact == "CPU model").unwrap();
        assert_eq!(model.dst.chars().count(), FACT_CHARS + 1);
    }

    fn vm(uuid: Option<&str>, domain: &str, mac: Option<u8>) -> VmInterface {
        VmInterface {
            uuid: uuid.map(str::to_string),
            domain: domain.into(),
            guest_mac: mac.map(|b| MacAddr([0xfa, 0x16, 0x3e, 0, 0, b])),
            ..VmInterface::default()
        }
    }

    /// The strongest identifier both sides know decides: two VMs with different UUIDs are
    /// different whatever their names, and a shared name or MAC counts only when nothing
    /// stronger is known to both.
    #[test]
    fn a_vm_is_found_by_the_strongest_identifier_both_know() {
        let (a, b, c, d) = (
            vm(Some("uuid-a"), "web", Some(1)),
            vm(None, "web", Some(2)),
            vm(None, "", Some(3)),
            vm(Some("uuid-d"), "", Some(4)),
        );
        let vms: BTreeMap<&str, &VmInterface> =
            [("vnet0", &a), ("vnet1", &b), ("vnet2", &c), ("vnet3", &d)].into();
        let index = VmIndex::new(&vms);
        let find = |u, dom, mac| index.find(&vm(u, dom, mac));
        assert_eq!(find(Some("uuid-a"), "other", None), Some("vnet0"));
        // Same name, another UUID: only the source without a UUID can be it.
        assert_eq!(find(Some("uuid-x"), "web", Some(1)), Some("vnet1"));
        // No UUID: the name decides, the first tap by name.
        assert_eq!(find(None, "web", None), Some("vnet0"));
        // The guest MAC, where neither UUID nor name is known to both.
        assert_eq!(find(Some("uuid-x"), "db", Some(3)), Some("vnet2"));
        assert_eq!(find(Some("uuid-x"), "", Some(4)), None);
        assert_eq!(find(None, "", Some(4)), Some("vnet3"));
        assert_eq!(find(None, "db", Some(2)), None);
        assert_eq!(find(Some("uuid-x"), "db", Some(9)), None);
    }

    /// A guest whose CPU needs avx512f cannot go to a host without it: named; the libvirt
    /// versions either side of 9.5.0 show, and facts that agree are not a difference.
    #[test]
    fn the_facts_that_differ_are_named() {
        let vm = VmInterface {
            cpu: Some(GuestCpu {
                mode: Some("custom".into()),
                model: Some("Cascadelake-Server".into()),
                features: vec!["avx512f".into(), "sse4.2".into()],
            }),
            ..VmInterface::default()
        };
        let src = host(&["avx512f", "sse4_2"], "libvirtd (libvirt) 8.0.0");
        let dst = host(&["sse4_2"], "libvirtd (libvirt) 10.0.0");
        let all = Compared::new(&src, &dst).facts(None, Some(&vm));
        let get = |name: &str| all.iter().find(|f| f.fact.starts_with(name)).unwrap();
        let cpu = get("guest CPU flags");
        assert_eq!(
            (cpu.src.as_str(), cpu.dst.as_str()),
            ("all 2 present", "missing: avx512f")
        );
        assert_ne!(get("libvirt").src, get("libvirt").dst);
        assert_eq!(get("kernel").src, get("kernel").dst);
        assert_eq!(get("clock").src, "synchronised, estimated error 0.5 ms");
        // host-passthrough: the guest depends on every flag of the source.
        let passthrough = VmInterface {
            cpu: Some(GuestCpu {
                mode: Some("host-passthrough".into()),
                ..GuestCpu::default()
            }),
            ..VmInterface::default()
        };
        let all = Compared::new(&src, &dst).facts(None, Some(&passthrough));
        let cpu = all
            .iter()
            .find(|f| f.fact.starts_with("guest CPU"))
            .unwrap();
        assert_eq!(cpu.dst, "missing: avx512f");
    }
}
