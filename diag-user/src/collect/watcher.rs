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
    model::clock::{Ts, WallClock},
    model::{FrameRecord, NoticeCode, Record, Sink, SummaryRow, TapRow},
    collect::identity::libvirt::LibvirtError,
    model::identity::VmInterface,
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
        lookup: super::links::lookup,
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
                None if self.selector.matches(&link.name) => self.attach(link),
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
        let vm = self.identities.lookup(&link.name);
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
            ifindex: link.ifindex,
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
            if !self.selector.matches(&link.name) {
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
                ifindex,
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

    /// Says the identity of a live tap if it changed since it was last said.
    pub(super) fn follow_identity(&mut self, ifindex: u32, name: &str) -> io::Result<()> {
        let vm = self.identities.lookup(name);
        let Some(&i) = self.live.get(&ifindex) else {
            return Ok(());
        };
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
    pub(super) fn on_identities(&mut self, errors: Vec<LibvirtError>) -> io::Result<()> {
        self.libvirt_notices(errors)?;
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

    pub(super) fn libvirt_notices(&mut self, errors: Vec<LibvirtError>) -> io::Result<()> {
        for e in errors {
            self.notice(
                NoticeCode::LibvirtFile,
                None,
                format!("skipping libvirt domain file {e}"),
            )?;
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
                ifindex: t.link.ifindex,
                mode: t.link.mode(),
                // The registry has every MAC the tap had (the pipeline's engine adds them).
                mac_history: Vec::new(),
                detached: t.final_counters.is_some(),
                verdict: None,
            })
            .collect();
        let rec = Record::Summary {
            ts: self.ts(),
            taps,
        };
        self.emit(rec)
    }
}

/// Whether `ifindex` still names a link called `name` in this namespace.
pub(super) fn link_exists(ifindex: u32, name: &str) -> bool {
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
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::{
        collect::identity::IdentitySource,
        model::{mac::MacAddr, Backend, Mode},
        collect::identity::libvirt::VmDirectory,
    };

    type MacCalls = Vec<(u32, Option<MacAddr>)>;

    /// A datapath that counts what the test says, and fails attaches it is told to.
    #[derive(Default)]
    struct Fake {
        counters: HashMap<u32, TapCounts>,
        refuse: Option<(String, Option<i32>)>,
        /// Every `update` the watcher made (ifindex, MAC), shared with the test.
        macs: Arc<Mutex<MacCalls>>,
    }

    impl Datapath for Fake {
        fn kind(&self) -> Backend {
            Backend::Ebpf
        }
        fn attach(&mut self, link: &Link, _appeared: bool) -> Result<(), AttachFailure> {
            if let Some((reason, errno)) = &self.refuse {
                return Err(AttachFailure {
                    reason: reason.clone(),
                    errno: *errno,
                });
            }
            self.counters.insert(link.ifindex, TapCounts::default());
            Ok(())
        }
        fn detach(
            &mut self,
            ifindex: u32,
            _totals: Option<crate::collect::netlink::LinkTotals>,
        ) -> Option<TapCounts> {
            self.counters.remove(&ifindex)
        }
        fn counters(&self, ifindex: u32) -> Option<TapCounts> {
            self.counters.get(&ifindex).cloned()
        }
        fn datapath_of(&self, _ifindex: u32) -> crate::model::DatapathKind {
            crate::model::DatapathKind::Drops
        }
        fn run_kind(&self) -> crate::model::DatapathKind {
            crate::model::DatapathKind::Drops
        }
        fn update(&mut self, link: &Link) {
            self.macs.lock().unwrap().push((link.ifindex, link.mac));
        }
    }

    /// The records, as a run's pipeline has them: the summary with what the registry
    /// adds.
    struct Records(Vec<Record>, crate::verdict::Engine);
    impl Default for Records {
        fn default() -> Self {
            Self(Vec::new(), crate::verdict::Engine::new(Default::default()))
        }
    }
    impl Sink for Records {
        fn emit(&mut self, rec: &Record) -> io::Result<()> {
            self.1.apply(rec);
            let mut rec = rec.clone();
            self.1.annotate_summary(&mut rec);
            self.0.push(rec);
            Ok(())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    const GONE: System = System {
        exists: |_, _| false,
        lookup: |_| Ok(None),
    };
    const THERE: System = System {
        exists: |_, _| true,
        lookup: |i| Ok(Some(link(i, "tapfail", None))),
    };

    fn link(ifindex: u32, name: &str, mac: Option<MacAddr>) -> Link {
        Link {
            ifindex,
            name: name.into(),
            mac,
            master: None,
            mtu: Some(1500),
            kind: Some("tun".into()),
        }
    }

    const MAC: MacAddr = MacAddr([0xfe, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]);
    const NEW: MacAddr = MacAddr([0x00, 0x61, 0xfe, 0xed, 0xca, 0xfe]);

    fn watcher<'s>(fake: Fake, system: System, sink: &'s mut Records) -> Watcher<'s> {
        Watcher::new(
            Box::new(fake),
            system,
            Selector::new(&["tap*"]).unwrap(),
            Identities::from(&IdentitySource::None),
            sink,
        )
    }

    fn types(recs: &[Record]) -> Vec<String> {
        recs.iter()
            .map(|r| {
                serde_json::to_value(r).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    /// A run of weeks (`serve`): taps that went away are forgotten after the grace
    /// period, live ones never; the summary then has the live ones.
    #[test]
    fn departed_taps_are_forgotten() {
        let mut out = Records::default();
        let mut w = watcher(Fake::default(), GONE, &mut out);
        for i in 0..100 {
            w.on_link(LinkChange::Present(link(
                100 + i,
                &format!("tap{i}"),
                Some(MAC),
            )))
            .unwrap();
        }
        for i in 0..99 {
            w.detach(100 + i, "deleted".into()).unwrap();
        }
        w.forget_gone(std::time::Duration::from_secs(3600));
        assert_eq!(w.taps.len(), 100, "within the grace period");
        w.forget_gone(std::time::Duration::ZERO);
        assert_eq!(w.taps.len(), 1);
        assert_eq!(w.live.get(&199), Some(&0), "the live tap's index follows");
        // Nothing of a forgotten tap is kept, not even its name for its late events.
        let mut late = FrameEvent::zeroed();
        late.ifindex = 100;
        late.kind = crate::model::FrameKind::Rarp as u8;
        late.direction = crate::model::Direction::FromVm as u8;
        late.data[..6].copy_from_slice(&[0xff; 6]);
        late.data[12..14].copy_from_slice(&diag_common::ETH_P_RARP.to_be_bytes());
        (late.captured, late.frame_len) = (60, 60);
        w.on_event(&late).unwrap();
        w.summary().unwrap();
        let Some(Record::Summary { taps, .. }) = out.0.last() else {
            panic!("no summary")
        };
        assert_eq!(taps.len(), 1);
        assert_eq!(taps[0].counters.ifname, "tap99");
        let late: Vec<&str> = out
            .0
            .iter()
            .filter_map(|r| match r {
                Record::Frame(f) => Some(f.ifname.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(late, ["if100"], "a forgotten tap's name is not kept");
    }

    #[test]
    fn a_tap_is_attached_renamed_changed_and_removed() {
        let mut out = Records::default();
        let mut w = watcher(Fake::default(), GONE, &mut out);
        w.on_link(LinkChange::Present(link(5, "tapA", Some(MAC))))
            .unwrap();
        // Another link, not matching: ignored.
        w.on_link(LinkChange::Present(link(6, "eth0", None)))
            .unwrap();
        w.on_link(LinkChange::Present(link(5, "tapA", Some(NEW))))
            .unwrap();
        w.on_link(LinkChange::Present(link(5, "tapB", Some(NEW))))
            .unwrap();
        w.on_link(LinkChange::Present(link(5, "other", Some(NEW))))
            .unwrap();
        w.summary().unwrap();
        assert_eq!(
            types(&out.0),
            ["attached", "mac_change", "renamed", "detached", "summary"]
        );
        let Record::Detached { reason, ifname, .. } = &out.0[3] else {
            panic!()
        };
        assert_eq!(
            (ifname.as_str(), reason.as_str()),
            ("tapB", "renamed to other")
        );
        let Record::Summary { taps, .. } = &out.0[4] else {
            panic!()
        };
        assert_eq!(taps.len(), 1, "one tap, under its last watched name");
        assert_eq!(taps[0].counters.ifname, "tapB");
        assert!(taps[0].detached);
        let macs: Vec<_> = taps[0].mac_history.iter().map(|h| h.mac).collect();
        assert_eq!(macs, [Some(MAC), Some(NEW)]);
        assert_eq!(taps[0].mode, Mode::Routed);
    }

    #[test]
    fn counters_go_on_under_a_new_name() {
        let mut out = Records::default();
        let mut w = watcher(Fake::default(), GONE, &mut out);
        w.on_link(LinkChange::Present(link(5, "tapA", Some(MAC))))
            .unwrap();
        w.on_link(LinkChange::Present(link(5, "tapZ", Some(MAC))))
            .unwrap();
        w.stats().unwrap();
        drop(w);
        let Some(Record::Stats { taps, .. }) = out.0.last() else {
            panic!()
        };
        assert_eq!(taps.len(), 1);
        assert_eq!(taps[0].ifname, "tapZ");
    }

    /// A tap that vanished before it could be attached is nobody's business.
    #[test]
    fn a_tap_gone_before_attach_says_nothing() {
        let mut out = Records::default();
        let fake = Fake {
            refuse: Some(("No such device".into(), Some(libc::ENODEV))),
            ..Fake::default()
        };
        let mut w = watcher(fake, GONE, &mut out);
        w.on_link(LinkChange::Present(link(9, "tapgone", None)))
            .unwrap();
        assert!(w.unwatched.is_empty());
        assert_eq!(w.outcome().unwatched, []);
        drop(w);
        assert!(out.0.is_empty(), "{:?}", out.0);
    }

    /// A tap that cannot be attached: said once, retried, and the run's outcome.
    #[test]
    fn a_tap_that_cannot_be_attached_is_said_once_and_retried() {
        let mut out = Records::default();
        let fake = Fake {
            refuse: Some(("the kernel said no".into(), Some(libc::EPERM))),
            ..Fake::default()
        };
        let mut w = watcher(fake, THERE, &mut out);
        w.on_link(LinkChange::Present(link(9, "tapfail", None)))
            .unwrap();
        w.retry_unwatched().unwrap();
        w.retry_unwatched().unwrap();
        assert_eq!(
            w.outcome().unwatched,
            [("tapfail".to_string(), "the kernel said no".to_string())]
        );
        drop(w);
        let notices: Vec<&Record> = out
            .0
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    Record::Notice {
                        code: NoticeCode::AttachFailed,
                        ..
                    }
                )
            })
            .collect();
        assert_eq!(notices.len(), 1, "{:?}", out.0);
    }

    #[test]
    fn a_resync_is_said_at_most_once_a_minute() {
        let mut out = Records::default();
        let mut w = watcher(Fake::default(), GONE, &mut out);
        for _ in 0..3 {
            w.on_link(LinkChange::Resynced).unwrap();
        }
        drop(w);
        assert_eq!(types(&out.0), ["notice"]);
    }

    /// Which VM is behind a tap follows the identity source, and is said before the tap's
    /// `attached` record when known then.
    #[test]
    fn identities_come_first_and_follow_changes() {
        struct Table(Mutex<HashMap<String, VmInterface>>);
        impl VmDirectory for Table {
            fn lookup(&self, tap: &str) -> Option<VmInterface> {
                self.0.lock().unwrap().get(tap).cloned()
            }
        }
        let vm = |name: &str| VmInterface {
            domain: name.into(),
            uuid: None,
            nova_name: None,
            tap: "tapA".into(),
            guest_mac: None,
            iface_type: "ethernet".into(),
            managed: None,
            bridge: None,
            reason: None,
            state: None,
            cpu: None,
        };
        let table = Arc::new(Table(Mutex::new(HashMap::from([(
            "tapA".to_string(),
            vm("one"),
        )]))));
        let mut out = Records::default();
        let mut w = Watcher::new(
            Box::new(Fake::default()),
            GONE,
            Selector::new(&["tap*"]).unwrap(),
            Identities::from(&IdentitySource::Fixed(table.clone())),
            &mut out,
        );
        w.on_link(LinkChange::Present(link(5, "tapA", None)))
            .unwrap();
        table.0.lock().unwrap().insert("tapA".into(), vm("two"));
        w.on_identities(Vec::new()).unwrap();
        w.on_identities(Vec::new()).unwrap();
        table.0.lock().unwrap().clear();
        w.on_identities(Vec::new()).unwrap();
        drop(w);
        assert_eq!(
            types(&out.0),
            ["identity", "attached", "identity", "identity"]
        );
        let domains: Vec<Option<String>> = out
            .0
            .iter()
            .filter_map(|r| match r {
                Record::Identity { libvirt, .. } => {
                    Some(libvirt.as_ref().map(|v| v.domain.clone()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(domains, [Some("one".into()), Some("two".into()), None]);
    }

    /// libpcap judges mismatches against the MAC the watcher tells it.
    #[test]
    fn the_datapath_hears_of_mac_changes() {
        let fake = Fake::default();
        let macs = fake.macs.clone();
        let mut out = Records::default();
        let mut w = watcher(fake, GONE, &mut out);
        w.on_link(LinkChange::Present(link(5, "tapA", Some(MAC))))
            .unwrap();
        w.on_link(LinkChange::Present(link(5, "tapA", Some(NEW))))
            .unwrap();
        w.on_link(LinkChange::Present(link(5, "tapA", Some(NEW))))
            .unwrap();
        assert_eq!(*macs.lock().unwrap(), [(5, Some(NEW))]);
    }
}
