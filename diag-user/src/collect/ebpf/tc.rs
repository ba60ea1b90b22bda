//! Hooking the per-frame tc programs to a tap, and unhooking them: TCX links or clsact
//! filters, the cleanup helper for the latter, and the leftovers of killed runs.

use std::collections::HashSet;

use aya::{
    programs::{
        tc::{self, NlOptions, SchedClassifierLinkId, TcAttachOptions},
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
    },
    Ebpf,
};

use super::{
    errors::{error_chain, program_errno},
    reaper::Reaper,
};
use crate::{
    collect::netlink::{self, BpfFilter, CLSACT_EGRESS, CLSACT_INGRESS},
    model::NoticeCode,
};

/// How the per-frame programs are hooked to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachMode {
    /// clsact, with the cleanup helper: a probe is on in about 1 ms, without holding the
    /// host's interface changes (the per-frame probe added to a tap with stale frames must
    /// be there before they end; a host may have hundreds of bridged taps).
    Auto,
    /// TCX links (Linux >= 6.6): gone with the process even after SIGKILL. But the kernel
    /// waits for an RCU grace period under the rtnl lock for every link made or removed
    /// (about 12 ms each on the benchmark machine): 1000 taps take 25 s to attach, and
    /// meanwhile every other interface change on the host (a VM's new tap) waits.
    Tcx,
    /// clsact qdisc + netlink filters, about 1 ms per tap: for hosts with hundreds of taps.
    /// Removed at exit; if the run is killed, by its cleanup helper; if both are killed, by
    /// the next run before it attaches.
    Clsact,
}

/// Whether the kernel has TCX (Linux >= 6.6).
pub fn tcx_supported() -> bool {
    use aya::util::KernelVersion;
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// One program hooked to one interface.
pub(super) struct TcLink {
    pub prog: &'static str,
    pub id: SchedClassifierLinkId,
}

/// A set of programs hooked to one interface the same way.
pub(super) struct TcLinks {
    pub links: Vec<TcLink>,
    pub clsact: bool,
}

/// What the run knows about hooking tc programs.
pub(super) struct TcHooks {
    mode: AttachMode,
    /// Interfaces that had a clsact qdisc when the run started: the only ones where a
    /// killed run's filters can be (`None`: unknown, so every tap is looked at).
    candidates: Option<HashSet<u32>>,
    orphans: Orphans,
    /// Started with the first clsact filter.
    reaper: Option<Reaper>,
    /// The run's program ids, for the helper.
    programs: Vec<u32>,
    /// tapwatch's own network namespace, where the helper is started: the first filter
    /// may be a pod's, hooked from inside the pod's namespace, and a child inherits the
    /// namespace of the thread that starts it.
    home: Option<std::fs::File>,
    reaper_said: bool,
}

impl TcHooks {
    pub fn new(mode: AttachMode, programs: Vec<u32>) -> Self {
        Self {
            mode,
            candidates: netlink::clsact_ifindexes().ok(),
            orphans: Orphans::default(),
            reaper: None,
            programs,
            home: crate::collect::setns::current().ok(),
            reaper_said: false,
        }
    }

    /// Removes a killed run's filters from `ifindex` (of the calling thread's namespace;
    /// `elsewhere`: another than tapwatch's, whose interfaces the run did not look at when
    /// it started); what the user should hear of it.
    pub fn remove_orphans(
        &mut self,
        ifindex: u32,
        ifname: &str,
        elsewhere: bool,
    ) -> Option<(NoticeCode, String)> {
        if !elsewhere
            && self
                .candidates
                .as_mut()
                .is_some_and(|c| !c.remove(&ifindex))
        {
            return None;
        }
        match self.orphans.remove(ifindex) {
            Ok(0) => None,
            Ok(n) => Some((
                NoticeCode::LeftoverFilters,
                format!("removed {n} tc filter(s) of a tapwatch run that was killed from {ifname}"),
            )),
            Err(e) if !self.orphans.said => {
                self.orphans.said = true;
                Some((
                    NoticeCode::LeftoverFilters,
                    format!(
                        "cannot tell whether tc filters left on {ifname} by another tapwatch \
                         run belong to a live run: {e}; they are left in place"
                    ),
                ))
            }
            Err(_) => None,
        }
    }

    /// Hooks `progs` to the interface (of the calling thread's namespace: tapwatch's own,
    /// or another with the tap's run id); all or none. A notice when the cleanup helper
    /// could not start (the filters work, but a SIGKILL would leave them).
    pub fn attach(
        &mut self,
        ebpf: &mut Ebpf,
        ifindex: u32,
        ifname: &str,
        progs: &[(&'static str, TcAttachType)],
        elsewhere: Option<(&crate::collect::namespaces::Netns, u32)>,
        notices: &mut Vec<(NoticeCode, String)>,
    ) -> Result<TcLinks, (String, Option<i32>)> {
        let ns = elsewhere.map(|(ns, _)| ns);
        let clsact = self.mode != AttachMode::Tcx;
        if clsact {
            if let Err(e) = tc::qdisc_add_clsact(ifname) {
                // EEXIST: the qdisc is already there (another tool, or an earlier run).
                if !matches!(&e, tc::TcError::NetlinkError(n) if n.raw_os_error() == Some(libc::EEXIST))
                {
                    return Err((format!("cannot add a clsact qdisc: {e}"), tc_errno(&e)));
                }
            }
            self.tell_reaper(ifindex, ns, notices);
        }
        let mut done = TcLinks {
            links: Vec::new(),
            clsact,
        };
        for &(prog, ty) in progs {
            let options = if clsact {
                // A program's filters are known to aya by ifindex, hook, priority and
                // handle, and every pod's tap0 may have the same ifindex: in another
                // namespace the handle is the tap's run id, unique in the run.
                TcAttachOptions::Netlink(NlOptions {
                    handle: elsewhere.map_or(0, |(_, id)| id).into(),
                    ..NlOptions::default()
                })
            } else {
                TcAttachOptions::TcxOrder(LinkOrder::default())
            };
            match program(ebpf, prog).attach_with_options(ifname, ty, options) {
                Ok(id) => done.links.push(TcLink { prog, id }),
                Err(e) => {
                    let side = if ty == TcAttachType::Ingress {
                        "ingress"
                    } else {
                        "egress"
                    };
                    let failure = (format!("{side}: {}", error_chain(&e)), program_errno(&e));
                    self.detach(ebpf, ifindex, ns.map_or(0, |n| n.inode), done);
                    return Err(failure);
                }
            }
        }
        Ok(done)
    }

    fn tell_reaper(
        &mut self,
        ifindex: u32,
        ns: Option<&crate::collect::namespaces::Netns>,
        notices: &mut Vec<(NoticeCode, String)>,
    ) {
        if self.reaper.is_none() && !self.reaper_said {
            let programs = self.programs.clone();
            let started = match &self.home {
                Some(home) => crate::collect::setns::run_in(home, move || Reaper::start(&programs))
                    .unwrap_or_else(|e| Err(super::reaper::ReaperError::spawn(e))),
                None => Reaper::start(&programs),
            };
            match started {
                Ok(r) => self.reaper = Some(r),
                Err(e) => {
                    self.reaper_said = true;
                    notices.push((
                        NoticeCode::CleanupHelper,
                        format!(
                            "{e}: if this run is killed with SIGKILL, its tc filters stay \
                             until the next run removes them"
                        ),
                    ));
                }
            }
        }
        if let Some(r) = self.reaper.as_mut() {
            if let Err(e) = r.holds(ifindex, ns) {
                self.reaper = None;
                self.reaper_said = true;
                notices.push((
                    NoticeCode::CleanupHelper,
                    format!(
                        "the cleanup helper ended ({e}): if this run is killed with SIGKILL, \
                         its tc filters stay until the next run removes them"
                    ),
                ));
            }
        }
    }

    /// Unhooks (clsact filters: from the calling thread's namespace, the interface's, of
    /// inode `netns`, 0 for tapwatch's own); safe on an interface that is already gone (its
    /// hooks died with it).
    pub fn detach(&mut self, ebpf: &mut Ebpf, ifindex: u32, netns: u64, links: TcLinks) {
        for l in links.links {
            let _ = program(ebpf, l.prog).detach(l.id);
        }
        if links.clsact {
            if let Some(r) = self.reaper.as_mut() {
                let _ = r.released(ifindex, netns);
            }
        }
    }
}

pub(super) fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut SchedClassifier {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .expect("programs were checked at load")
}

pub(super) fn tc_errno(e: &tc::TcError) -> Option<i32> {
    match e {
        tc::TcError::NetlinkError(n) => n.raw_os_error(),
        tc::TcError::IoError(io) => io.raw_os_error(),
        other => super::chain_errno(other),
    }
}

/// tapwatch's filters on a tap whose owning process is gone: a run killed with clsact
/// filters attached (and its cleanup helper with it). A filter's owner is alive while some
/// process holds a descriptor of the filter's BPF program (every run holds its programs
/// until it exits); the kernel says who does in /proc/PID/fdinfo. Where that cannot be
/// read (no CAP_SYS_PTRACE), nothing is removed.
#[derive(Default)]
struct Orphans {
    /// Program ids held by live processes, read when first needed and again whenever a
    /// filter's program is not among them (it may belong to a run started since).
    held: Option<HashSet<u32>>,
    /// Whether a failure to tell has been reported (once per run).
    said: bool,
}

/// Names of the filters tapwatch's programs make (the assist probe's starts the same).
const OUR_FILTERS: [&str; 2] = ["tap_ingress", "tap_egress"];

impl Orphans {
    /// Removes orphaned tapwatch filters from `ifindex`; how many were removed.
    fn remove(&mut self, ifindex: u32) -> std::io::Result<usize> {
        let mut removed = 0;
        for parent in [CLSACT_INGRESS, CLSACT_EGRESS] {
            let ours: Vec<BpfFilter> = netlink::bpf_filters(ifindex, parent)?
                .into_iter()
                .filter(|f| OUR_FILTERS.iter().any(|n| f.name.starts_with(n)))
                .collect();
            for f in ours {
                if self.is_held(f.prog_id)? {
                    continue;
                }
                match netlink::delete_filter(ifindex, &f) {
                    Ok(()) => removed += 1,
                    // Removed meanwhile by someone else.
                    Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(removed)
    }

    fn is_held(&mut self, prog_id: u32) -> std::io::Result<bool> {
        if let Some(held) = &self.held {
            if held.contains(&prog_id) {
                return Ok(true);
            }
        }
        let held = held_program_ids()?;
        let is = held.contains(&prog_id);
        self.held = Some(held);
        Ok(is)
    }
}

/// Ids of every BPF program some process holds a descriptor of. Errs (and so removes
/// nothing) if any process's descriptors cannot be read.
fn held_program_ids() -> std::io::Result<HashSet<u32>> {
    let mut ids = HashSet::new();
    for proc_entry in std::fs::read_dir("/proc")? {
        let Ok(proc_entry) = proc_entry else { continue };
        let pid = proc_entry.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let fd_dir = proc_entry.path().join("fd");
        let fds = match std::fs::read_dir(&fd_dir) {
            Ok(f) => f,
            // The process ended meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("{}: {e} (deciding whether a tc filter's owner is alive needs CAP_SYS_PTRACE or root)", fd_dir.display()),
                ))
            }
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if target.as_os_str() != "anon_inode:bpf-prog" {
                continue;
            }
            let info = proc_entry.path().join("fdinfo").join(fd.file_name());
            let Ok(info) = std::fs::read_to_string(info) else {
                continue;
            };
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
            {
                ids.insert(id);
            }
        }
    }
    Ok(ids)
}

/// Names of the TCX programs attached to `ifname` (ingress then egress), as the kernel
/// reports them. Lets tests and operators check what is hooked where.
pub fn tcx_program_names(ifname: &str) -> Result<Vec<String>, ProgramError> {
    let mut names = Vec::new();
    for ty in [TcAttachType::Ingress, TcAttachType::Egress] {
        let (_, progs) = SchedClassifier::query_tcx(ifname, ty)?;
        names.extend(
            progs
                .iter()
                .map(|p| p.name_as_str().unwrap_or("?").to_string()),
        );
    }
    Ok(names)
}
