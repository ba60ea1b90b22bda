//! The watcher: what a run knows of its taps, and the records each change makes. Pure of
//! the system apart from its datapath and the `exists` check, so its logic is tested
//! without root against a stand-in datapath.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use diag_common::FrameEvent;

use super::{
    datapath::{AttachFailure, Datapath, DatapathEvent, EventSource, TapCounts},
    ebpf::parse_event,
    identity::Identities,
    links::{Link, LinkChange, Selector},
};
use crate::{
    collect::identity::IdentityError,
    model::clock::{Ts, WallClock},
    model::identity::VmInterface,
    model::{FrameRecord, NoticeCode, Record, Sink, SummaryRow, TapRow},
    registry::OWN_NETNS,
};

/// One tap the datapath was attached to, live or gone: what the collector needs to follow
/// it (everything else the run knows of the tap is in the registry).
pub(super) struct Tap {
    link: Link,
    /// The identity last said of it, while it is live.
    said: Option<VmInterface>,
    /// Counters read when the tap went away.
    final_counters: Option<TapCounts>,
    /// When it went away, for forgetting it (`serve`).
    gone_at: Option<std::time::Instant>,
}

/// State of a watch run, independent of where its records go.
pub(super) struct Watcher<'s> {
    pub(super) datapath: Box<dyn Datapath>,
    /// The system's links: whether one still exists, and what it is now (stand-ins in
    /// unit tests).
    pub(super) system: System,
    pub(super) clock: WallClock,
    pub(super) selector: Selector,
    /// Every tap attached during the run, in order of attachment.
    pub(super) taps: Vec<Tap>,
    /// ifindex -> position in `taps`, for live taps only.
    pub(super) live: HashMap<u32, usize>,
    pub(super) sink: &'s mut dyn Sink,
    /// Taps that match but could not be attached, by ifindex: name and why. Retried at
    /// every stats tick; those still here at the end make the run fail.
    pub(super) unwatched: BTreeMap<u32, (String, String)>,
    /// When a notice last said that link notifications were lost.
    pub(super) overflow_said: Option<std::time::Instant>,
    pub(super) identities: Identities,
    /// Past the first look at the host: taps attached from now on appeared while watched.
    pub(super) started: bool,
}

/// How a run ended, besides its records.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Taps that matched but could not be watched to the end: name and why.
    pub unwatched: Vec<(String, String)>,
}

/// What the watcher asks the system about links besides the notifications.
#[derive(Clone, Copy)]
pub(super) struct System {
    /// Whether `ifindex` still names a link called `name`.
    pub(super) exists: fn(u32, &str) -> bool,
    /// The link with `ifindex` now.
    pub(super) lookup: fn(u32) -> io::Result<Option<Link>>,
}

impl System {
    pub(super) const REAL: System = System {
        exists: link_exists,
        lookup: link_lookup,
    };
}

impl<'s> Watcher<'s> {
    pub(super) fn new(
        datapath: Box<dyn Datapath>,
        system: System,
        selector: Selector,
        identities: Identities,
        sink: &'s mut dyn Sink,
    ) -> Self {
        Self {
            datapath,
            system,
            clock: WallClock::new(),
            selector,
            taps: Vec::new(),
            live: HashMap::new(),
            sink,
            unwatched: BTreeMap::new(),
            overflow_said: None,
            identities,
            started: false,
        }
    }

    /// The taps that matched but could not be watched and still exist.
    pub(super) fn outcome(&mut self) -> Outcome {
        let exists = self.system.exists;
        Outcome {
            unwatched: std::mem::take(&mut self.unwatched)
                .into_iter()
                .filter(|(i, (name, _))| exists(*i, name))
                .map(|(_, v)| v)
                .collect(),
        }
    }

    pub(super) fn ts(&self) -> Ts {
        Ts(self.clock.now())
    }

    pub(super) fn emit(&mut self, rec: Record) -> io::Result<()> {
        self.sink.emit(&rec)
    }

    pub(super) fn on_link(&mut self, change: LinkChange) -> io::Result<()> {
        match change {
            LinkChange::Present(link) => match self.live.get(&link.ifindex).copied() {
                Some(i) => self.on_known_link(i, link),
                None if self.selector.matches(link.ifname()) => self.attach(link),
                None => {
                    self.unwatched.remove(&link.ifindex);
                    Ok(())
                }
            },
            LinkChange::Removed {
                ifindex, totals, ..
            } => {
                self.unwatched.remove(&ifindex);
                self.detach_with(ifindex, "interface removed".into(), totals)
            }
            LinkChange::Namespaces(message) => self.notice(NoticeCode::Namespaces, None, message),
            LinkChange::Resynced => {
                // Said at most once a minute, in words and as a record.
                if self
                    .overflow_said
                    .is_some_and(|t| t.elapsed() < Duration::from_secs(60))
                {
                    return Ok(());
                }
                self.overflow_said = Some(std::time::Instant::now());
                self.notice(
                    NoticeCode::NetlinkOverflow,
                    None,
                    "link notifications were lost (the kernel's netlink buffer overflowed): \
                     re-read every interface, so no tap and no MAC change is missed"
                        .into(),
                )
            }
        }
    }

    pub(super) fn notice(
        &mut self,
        code: NoticeCode,
        ifname: Option<String>,
        message: String,
    ) -> io::Result<()> {
        let ts = self.ts();
        self.emit(Record::Notice {
            ts,
            code,
            ifname,
            message,
            probe: None,
        })
    }

    /// Says what the datapath did or met.
    pub(super) fn datapath_notices(&mut self) -> io::Result<()> {
        for e in self.datapath.take_events() {
            match e {
                DatapathEvent::Notice {
                    code,
                    ifname,
                    message,
                } => self.notice(code, ifname, message)?,
                DatapathEvent::Probe { ifname, change } => {
                    let code = if change.added {
                        NoticeCode::ProbeAdded
                    } else {
                        NoticeCode::ProbeRemoved
                    };
                    let ts = self.ts();
                    self.emit(Record::Notice {
                        ts,
                        code,
                        message: change.message(&ifname),
                        ifname: Some(ifname),
                        probe: Some(change),
                    })?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn attach(&mut self, link: Link) -> io::Result<()> {
        let attached = self.datapath.attach(&link, self.started);
        self.datapath_notices()?;
        if let Err(AttachFailure { reason, errno }) = attached {
            // A tap removed right after it appeared (libvirt re-creates and deletes taps
            // within milliseconds while destroying a domain): its removal follows, and
            // there is nothing to report.
            if !(self.system.exists)(link.ifindex, &link.name) {
                return Ok(());
            }
            let reason = match crate::collect::caps::OutOfDescriptors::from_errno(
                errno,
                format!("attaching to {}", link.name),
            ) {
                Some(d) => d.to_string(),
                None => reason,
            };
            // Said once per tap, however often the retries fail.
            let known = self.unwatched.contains_key(&link.ifindex);
            self.unwatched
                .insert(link.ifindex, (link.name.clone(), reason.clone()));
            if known {
                return Ok(());
            }
            return self.notice(
                NoticeCode::AttachFailed,
                Some(link.name.clone()),
                format!("{} is not watched: {reason}", link.name),
            );
        }
        self.unwatched.remove(&link.ifindex);
        // The VM's identity comes first, so the tap's first verdict already names it.
        let vm = self.identity_of(&link);
        if vm.is_some() {
            let ts = self.ts();
            self.emit(Record::Identity {
                ts,
                ifname: link.name.clone(),
                libvirt: vm.clone(),
            })?;
        }
        let ts = self.ts();
        self.live.insert(link.ifindex, self.taps.len());
        let rec = Record::Attached {
            ts,
            ifname: link.name.clone(),
            ifindex: real_ifindex(&link),
            mac: link.mac,
            mode: link.mode(),
            backend: self.datapath.kind(),
            datapath: Some(self.datapath.datapath_of(link.ifindex)),
            appeared: self.started,
            mtu: link.mtu,
            master: link.master_name(),
        };
        self.taps.push(Tap {
            said: vm,
            link,
            final_counters: None,
            gone_at: None,
        });
        self.emit(rec)
    }

    pub(super) fn on_known_link(&mut self, i: usize, link: Link) -> io::Result<()> {
        let ifindex = link.ifindex;
        if link.name != self.taps[i].link.name {
            if !self.selector.matches(link.ifname()) {
                return self.detach(ifindex, format!("renamed to {}", link.name));
            }
            // Still watched: the same tap under a new name keeps its counters and verdict.
            // Its events still in the ring buffer go out under the old name first.
            let old_ifname = self.taps[i].link.name.clone();
            self.taps[i].link.name = link.name.clone();
            let ts = self.ts();
            self.emit(Record::Renamed {
                ts,
                ifname: link.name.clone(),
                old_ifname,
                ifindex: real_ifindex(&link),
            })?;
            self.follow_identity(ifindex, &link.name)?;
        }
        let (old_mac, old_mode) = (self.taps[i].link.mac, self.taps[i].link.mode());
        let old = &self.taps[i].link;
        if (old.mac, old.master, &old.name) != (link.mac, link.master, &link.name) {
            self.datapath.update(&link);
        }
        let ts = self.ts();
        let tap = &mut self.taps[i];
        tap.link = link;
        let ifname = tap.link.name.clone();
        let (new_mac, new_mode) = (tap.link.mac, tap.link.mode());
        let tap_master = tap.link.master_name();
        if new_mac != old_mac {
            self.emit(Record::MacChange {
                ts,
                ifname: ifname.clone(),
                old_mac,
                new_mac,
            })?;
        }
        if new_mode != old_mode {
            self.emit(Record::ModeChange {
                ts,
                ifname,
                old_mode,
                new_mode,
                master: tap_master,
            })?;
        }
        self.datapath_notices()
    }

    pub(super) fn detach(&mut self, ifindex: u32, reason: String) -> io::Result<()> {
        self.detach_with(ifindex, reason, None)
    }

    fn detach_with(
        &mut self,
        ifindex: u32,
        reason: String,
        totals: Option<super::netlink::LinkTotals>,
    ) -> io::Result<()> {
        let Some(i) = self.live.remove(&ifindex) else {
            return Ok(());
        };
        self.taps[i].said = None;
        self.taps[i].final_counters =
            Some(self.datapath.detach(ifindex, totals).unwrap_or_default());
        self.taps[i].gone_at = Some(std::time::Instant::now());
        self.datapath_notices()?;
        let rec = Record::Detached {
            ts: self.ts(),
            ifname: self.taps[i].link.name.clone(),
            reason,
        };
        self.emit(rec)
    }

    pub(super) fn on_event(&mut self, ev: &FrameEvent) -> io::Result<()> {
        // The datapath may add a probe first: once the record is out, the probe is there.
        self.datapath.on_event(ev);
        self.datapath_notices()?;
        // Events still in the ring buffer of a tap that went go out under its last name.
        let known = match self.live.get(&ev.ifindex) {
            Some(&i) => Some(&self.taps[i]),
            None => self
                .taps
                .iter()
                .rev()
                .find(|t| t.link.ifindex == ev.ifindex),
        };
        let name = match known {
            Some(t) => t.link.name.clone(),
            None => format!("if{}", ev.ifindex),
        };
        match FrameRecord::from_event(ev, &name, Ts(self.clock.to_utc(ev.ts_ns))) {
            Some(f) => self.emit(Record::Frame(f)),
            None => Ok(()),
        }
    }

    pub(super) fn drain(&mut self, src: &mut EventSource) -> io::Result<()> {
        self.datapath.flush_log();
        match src {
            EventSource::Ring(ring) => self.drain_ring(ring.get_mut()),
            EventSource::Channel(rx) => {
                while let Ok(ev) = rx.try_recv() {
                    self.on_event(&ev)?;
                }
                Ok(())
            }
        }
    }

    pub(super) fn drain_ring(&mut self, ring: &mut RingBuf<MapData>) -> io::Result<()> {
        while let Some(item) = ring.next() {
            let ev = parse_event(&item);
            drop(item);
            if let Some(ev) = ev {
                self.on_event(&ev)?;
            }
        }
        Ok(())
    }

    pub(super) fn current(&self, tap: &Tap) -> TapCounts {
        match &tap.final_counters {
            Some(c) => c.clone(),
            None => self.datapath.counters(tap.link.ifindex).unwrap_or_default(),
        }
    }

    fn row(&self, tap: &Tap) -> TapRow {
        let c = self.current(tap);
        let since = c.window_since_ns.map(|ns| Ts(self.clock.to_utc(ns)));
        TapRow::new(&tap.link.name, &c.counters)
            .with_kernel_drops(c.kernel_drops)
            .with_window(since)
    }

    /// The VM behind a tap, looked up where the tap really is.
    fn identity_of(&mut self, link: &Link) -> Option<VmInterface> {
        match &link.site {
            Some(site) => self.identities.lookup(site.inode, &site.ifname),
            None => self.identities.lookup(OWN_NETNS, &link.name),
        }
    }

    /// Says the identity of a live tap if it changed since it was last said.
    pub(super) fn follow_identity(&mut self, ifindex: u32, name: &str) -> io::Result<()> {
        let Some(&i) = self.live.get(&ifindex) else {
            return Ok(());
        };
        let link = self.taps[i].link.clone();
        let vm = self.identity_of(&link);
        if self.taps[i].said == vm {
            return Ok(());
        }
        self.taps[i].said.clone_from(&vm);
        let ts = self.ts();
        self.emit(Record::Identity {
            ts,
            ifname: name.to_string(),
            libvirt: vm,
        })
    }

    /// The identity source changed: say what changed for the live taps.
    pub(super) fn on_identities(&mut self, errors: Vec<IdentityError>) -> io::Result<()> {
        self.identity_notices(errors)?;
        let live: Vec<(u32, String)> = self
            .live
            .iter()
            .map(|(&i, &t)| (i, self.taps[t].link.name.clone()))
            .collect();
        for (ifindex, name) in live {
            self.follow_identity(ifindex, &name)?;
        }
        Ok(())
    }

    /// Says what the identity sources could not read.
    pub(super) fn identity_notices(&mut self, errors: Vec<IdentityError>) -> io::Result<()> {
        for e in errors {
            let (code, message) = e.notice();
            self.notice(code, None, message)?;
        }
        Ok(())
    }

    /// Tries the taps that could not be attached again (descriptors freed, a transient
    /// error gone).
    pub(super) fn retry_unwatched(&mut self) -> io::Result<()> {
        let pending: Vec<u32> = self.unwatched.keys().copied().collect();
        for ifindex in pending {
            let Some((name, _)) = self.unwatched.get(&ifindex).cloned() else {
                continue;
            };
            match (self.system.lookup)(ifindex) {
                Ok(Some(link)) if link.name == name => self.attach(link)?,
                Ok(_) => {
                    self.unwatched.remove(&ifindex);
                }
                Err(_) => {}
            }
        }
        Ok(())
    }

    /// Forgets the taps that went away more than `grace` ago: a run of weeks keeps what
    /// its live taps need, not every tap it ever saw.
    pub(super) fn forget_gone(&mut self, grace: std::time::Duration) {
        let before = self.taps.len();
        self.taps
            .retain(|t| t.gone_at.is_none_or(|g| g.elapsed() < grace));
        if self.taps.len() == before {
            return;
        }
        self.live = self
            .taps
            .iter()
            .enumerate()
            .filter(|(_, t)| t.gone_at.is_none())
            .map(|(i, t)| (t.link.ifindex, i))
            .collect();
    }

    pub(super) fn stats(&mut self) -> io::Result<()> {
        self.datapath.refresh();
        self.datapath_notices()?;
        let mut live: Vec<usize> = self.live.values().copied().collect();
        live.sort_unstable();
        let taps = live.into_iter().map(|i| self.row(&self.taps[i])).collect();
        let rec = Record::Stats {
            ts: self.ts(),
            taps,
        };
        self.emit(rec)
    }

    pub(super) fn summary(&mut self) -> io::Result<()> {
        self.datapath.refresh();
        self.datapath_notices()?;
        let taps = self
            .taps
            .iter()
            .map(|t| SummaryRow {
                counters: self.row(t),
                ifindex: real_ifindex(&t.link),
                mode: t.link.mode(),
                // The registry has every MAC the tap had (the pipeline's engine adds them).
                mac_history: Vec::new(),
                detached: t.final_counters.is_some(),
                verdict: None,
            })
            .collect();
        // The pipeline's engine adds the forecasts' counts.
        let rec = Record::Summary {
            ts: self.ts(),
            taps,
            forecasts: None,
        };
        self.emit(rec)
    }
}

/// A link's ifindex in its own namespace, as records say it (the run knows a tap of
/// another namespace by an id of its own).
fn real_ifindex(link: &Link) -> u32 {
    link.site.as_ref().map_or(link.ifindex, |s| s.ifindex)
}

/// The link with `ifindex` now (a tap of another namespace: as its thread last saw it).
fn link_lookup(ifindex: u32) -> io::Result<Option<Link>> {
    if super::namespaces::is_foreign(ifindex) {
        return Ok(super::namespaces::link_of(ifindex));
    }
    super::links::lookup(ifindex)
}

/// Whether `ifindex` still names a link called `name` in this namespace (or, for a tap of
/// another namespace, whether that namespace's thread last saw it so).
pub(super) fn link_exists(ifindex: u32, name: &str) -> bool {
    if super::namespaces::is_foreign(ifindex) {
        return super::namespaces::link_of(ifindex).is_some_and(|l| l.name == name);
    }
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: a valid NUL-terminated string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        // Only "no such device" says it is gone; when the question itself fails (out of
        // descriptors for its socket) the tap is taken as present, so the attach failure
        // is reported instead of passing for a tap that vanished.
        0 => io::Error::last_os_error().raw_os_error() != Some(libc::ENODEV),
        i => i == ifindex,
    }
}

#[cfg(test)]
mod tests;
