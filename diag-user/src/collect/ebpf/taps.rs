//! Attaching to a tap and following it: the maps, the hooks the rules
//! ([`super::rules`]) decide on, and the probe's coming and going as typed events.

use std::{collections::BTreeMap, sync::Arc, time::Instant};

use aya::programs::TcAttachType;
use diag_common::{FrameEvent, TapConfig, TapMode, TapSite, TapWindow, EVENT_FLAG_DST_MISMATCH};

use super::{
    errors::map_errno,
    rules::{self, Carried, Step},
    tc::TcLinks,
    Probe, ProbeError, ASSIST, EGRESS, INGRESS,
};
use crate::{
    collect::{
        datapath::DatapathEvent,
        links::Link,
        namespaces::{Inside, Netns},
        netlink::{self, LinkTotals},
    },
    model::{mac::MacAddr, probe::ProbeChange, FrameKind, NoticeCode},
};

/// Where a tap really is: its ifindex and name in its namespace, and the namespace when it
/// is not tapwatch's own (the run knows it by an id and a qualified name then).
#[derive(Clone, Debug)]
pub(super) struct At {
    /// The run's id of it (its ifindex in tapwatch's own namespace).
    pub id: u32,
    pub ifindex: u32,
    pub ifname: String,
    pub ns: Option<Arc<Netns>>,
}

impl At {
    /// Where the link is; an error when its namespace is gone already.
    fn of(link: &Link) -> std::io::Result<Self> {
        Ok(match &link.site {
            Some(s) => At {
                id: link.ifindex,
                ifindex: s.ifindex,
                ifname: s.ifname.clone(),
                ns: Some(s.netns()?),
            },
            None => At {
                id: link.ifindex,
                ifindex: link.ifindex,
                ifname: link.name.clone(),
                ns: None,
            },
        })
    }

    /// Moves the calling thread into the tap's namespace for what must be asked there
    /// (its statistics, its tc hooks); nothing to do for tapwatch's own.
    pub fn enter(&self) -> std::io::Result<Option<Inside>> {
        self.ns.as_ref().map(|n| n.enter()).transpose()
    }
}

/// One attached tap.
pub(super) struct Tap {
    /// The run's name for it (qualified in another namespace).
    pub name: String,
    pub at: At,
    pub mac: Option<MacAddr>,
    pub carried: Carried,
    /// The tc links of the probe it carries (the assist or the full probe), if any.
    pub links: Option<TcLinks>,
    /// The link's statistics when attached, and as last read.
    pub base: LinkTotals,
    pub latest: LinkTotals,
    /// Kernel drops by reason name, as last read.
    pub kernel_drops: BTreeMap<String, u64>,
    /// Whether a failure to add the per-frame probe was said (once per tap).
    pub assist_failure_said: bool,
    /// Its own ARP sockets, for a tap of another namespace under the drop-driven datapath
    /// (closed by the run's closer when it goes).
    pub arp: Vec<std::os::fd::OwnedFd>,
}

impl Tap {
    pub fn mode(&self) -> TapMode {
        match self.carried {
            Carried::Full => TapMode::Tc,
            _ => TapMode::Drops,
        }
    }

    /// Whether the VM has written any frame into the tap since it was attached, as of the
    /// last statistics read.
    pub fn sent(&self) -> bool {
        self.latest.since(&self.base).rx_packets > 0
    }
}

impl Probe {
    /// The `TAPS` key of a tap: its namespace's cookie and its real ifindex.
    pub(super) fn site(&self, at: &At) -> TapSite {
        let cookie = match &at.ns {
            Some(ns) => ns.cookie,
            None => self.own_cookie.unwrap_or(0),
        };
        TapSite::new(cookie, at.ifindex)
    }

    /// Starts counting on the tap from zero. When this returns, every frame crossing the
    /// interface is counted.
    pub fn attach(&mut self, link: &Link, appeared: bool) -> Result<(), ProbeError> {
        let (ifindex, ifname) = (link.ifindex, link.name.as_str());
        let fail = |reason: String, errno: Option<i32>| ProbeError::Attach {
            ifname: ifname.to_string(),
            reason,
            errno,
        };
        if self.taps.contains_key(&ifindex) {
            return Ok(());
        }
        let at = At::of(link).map_err(|e| fail(e.to_string(), e.raw_os_error()))?;
        if at.ns.is_some() && self.own_cookie.is_none() {
            return Err(fail(
                format!(
                    "taps in other network namespaces need the kernel's BTF ({}) to be told \
                     apart from the host's",
                    super::layout::VMLINUX_BTF
                ),
                None,
            ));
        }
        let inside = at.enter().map_err(|e| {
            fail(
                format!("cannot enter its network namespace: {e}"),
                e.raw_os_error(),
            )
        })?;
        // Filters of a killed run stay attached and cost every frame; whatever this tap's
        // hook, remove those whose owner is gone (never a live run's). Best effort: they
        // do not touch this run's counters.
        let elsewhere = at.ns.is_some();
        if let Some((code, message)) = self.hooks.remove_orphans(at.ifindex, &at.ifname, elsewhere)
        {
            self.notice(code, Some(ifname), message);
        }
        let base = netlink::link_totals(Some(at.ifindex))
            .map(|t| t.get(&at.ifindex).copied().unwrap_or_default())
            .map_err(|e| fail(format!("cannot read its statistics: {e}"), e.raw_os_error()))?;
        // A tap of another namespace has its ARP seen by sockets of its own there.
        let arp = match (&self.drop_hook, &at.ns) {
            (Some(hook), Some(_)) => hook.sockets_for(at.ifindex).map_err(|e| {
                fail(
                    format!("cannot open its ARP sockets: {e}"),
                    e.raw_os_error(),
                )
            })?,
            _ => Vec::new(),
        };
        self.add_maps(ifindex).map_err(|(r, e)| fail(r, e))?;
        let (carried, step) = rules::on_attach(self.drops(), link.master.is_some(), appeared);
        let links = match carried {
            Carried::Full => match self.full_probe(&at, ifname) {
                Ok(links) => Some(links),
                Err((reason, errno)) => {
                    self.remove_maps(ifindex);
                    return Err(fail(reason, errno));
                }
            },
            _ => None,
        };
        drop(inside);
        let site = self.site(&at);
        let tap = Tap {
            name: ifname.to_string(),
            at,
            mac: link.mac,
            carried,
            links,
            base,
            latest: base,
            kernel_drops: BTreeMap::new(),
            assist_failure_said: false,
            arp,
        };
        if let Err(e) = self
            .taps_map
            .insert(site, TapConfig::new(tap.mode(), ifindex), 0)
        {
            if let Some(links) = tap.links {
                self.unhook_links(&tap.at, links);
            }
            self.remove_maps(ifindex);
            return Err(fail(format!("cannot add it: {e}"), map_errno(&e)));
        }
        self.taps.insert(ifindex, tap);
        self.apply(ifindex, step);
        Ok(())
    }

    /// The tap's counters and window, from zero.
    fn add_maps(&mut self, ifindex: u32) -> Result<(), (String, Option<i32>)> {
        let zeroed =
            super::read::zeroed_per_cpu().map_err(|e| (e.to_string(), e.raw_os_error()))?;
        self.counters
            .insert(ifindex, zeroed, 0)
            .map_err(|e| (format!("cannot add its counters: {e}"), map_errno(&e)))?;
        if let Err(e) = self.windows.insert(ifindex, TapWindow::default(), 0) {
            self.remove_maps(ifindex);
            return Err((format!("cannot add its state: {e}"), map_errno(&e)));
        }
        Ok(())
    }

    /// Removes the tap's counters and window (its `TAPS` entry goes first, in `detach`).
    pub(super) fn remove_maps(&mut self, ifindex: u32) {
        let _ = self.counters.remove(&ifindex);
        let _ = self.windows.remove(&ifindex);
    }

    fn full_probe(&mut self, at: &At, ifname: &str) -> Result<TcLinks, (String, Option<i32>)> {
        self.hook(
            at,
            ifname,
            &[
                (INGRESS, TcAttachType::Ingress),
                (EGRESS, TcAttachType::Egress),
            ],
        )
    }

    /// Hooks `progs` to the tap, from inside its namespace (the caller may already be
    /// there; entering again is harmless). `ifname`: the run's name, for notices.
    fn hook(
        &mut self,
        at: &At,
        ifname: &str,
        progs: &[(&'static str, TcAttachType)],
    ) -> Result<TcLinks, (String, Option<i32>)> {
        let _inside = at.enter().map_err(|e| {
            (
                format!("cannot enter its network namespace: {e}"),
                e.raw_os_error(),
            )
        })?;
        let mut notes = Vec::new();
        let r = self.hooks.attach(
            &mut self.ebpf,
            at.ifindex,
            &at.ifname,
            progs,
            at.ns.as_deref().map(|ns| (ns, at.id)),
            &mut notes,
        );
        for (code, message) in notes {
            self.notice(code, Some(ifname), message);
        }
        r
    }

    /// The tap changed (name, MAC, bridge).
    pub fn update(&mut self, link: &Link) {
        let ifindex = link.ifindex;
        let drops = self.drops();
        let Some(tap) = self.taps.get_mut(&ifindex) else {
            return;
        };
        tap.name.clone_from(&link.name);
        if let Ok(at) = At::of(link) {
            tap.at = at;
        }
        let mac_changed = std::mem::replace(&mut tap.mac, link.mac) != link.mac;
        let mut carried = tap.carried;
        let step = rules::on_change(
            &mut carried,
            drops,
            link.master.is_some(),
            mac_changed,
            || self.has_sent(ifindex),
            Instant::now(),
        );
        if let Some(tap) = self.taps.get_mut(&ifindex) {
            tap.carried = carried;
        }
        self.apply(ifindex, step);
    }

    /// Whether the VM wrote any frame into the tap since it was attached (asked now).
    fn has_sent(&self, ifindex: u32) -> bool {
        let Some(tap) = self.taps.get(&ifindex) else {
            return false;
        };
        let Ok(_inside) = tap.at.enter() else {
            return false;
        };
        netlink::link_totals(Some(tap.at.ifindex))
            .ok()
            .and_then(|t| t.get(&tap.at.ifindex).copied())
            .is_some_and(|now| now.since(&tap.base).rx_packets > 0)
    }

    /// A frame event came: a stale frame or a RARP gives the tap the per-frame probe,
    /// before the event goes on, so the end of the stale frames is timed to the frame.
    pub fn on_event(&mut self, ev: &FrameEvent) {
        let kind = FrameKind::from_u8(ev.kind);
        let also_mismatch = ev.flags & EVENT_FLAG_DST_MISMATCH != 0;
        if let Some(reason) = kind.and_then(|k| rules::trouble_of(k, also_mismatch)) {
            self.trouble(ev.ifindex, reason);
        }
    }

    pub(super) fn trouble(&mut self, ifindex: u32, reason: crate::model::probe::ProbeReason) {
        let Some(tap) = self.taps.get_mut(&ifindex) else {
            return;
        };
        let step = rules::on_trouble(&mut tap.carried, reason, Instant::now());
        self.apply(ifindex, step);
    }

    /// Once an interval, after the statistics were read: the probes the rules add or take.
    pub(super) fn follow_probes(&mut self, pending: &std::collections::HashSet<u32>) {
        let now = Instant::now();
        let ifindexes: Vec<u32> = self.taps.keys().copied().collect();
        for ifindex in ifindexes {
            let tap = self.taps.get_mut(&ifindex).expect("listed above");
            let sent = tap.sent();
            let step = rules::on_interval(
                &mut tap.carried,
                pending.contains(&ifindex),
                sent,
                self.linger,
                now,
            );
            self.apply(ifindex, step);
        }
    }

    /// Does what the rules decided, and says so.
    fn apply(&mut self, ifindex: u32, step: Step) {
        let Some((name, at)) = self
            .taps
            .get(&ifindex)
            .map(|t| (t.name.clone(), t.at.clone()))
        else {
            return;
        };
        let site = self.site(&at);
        match step {
            Step::Nothing => {}
            Step::AddAssist(change) => self.add_assist(ifindex, &at, &name, change),
            Step::RemoveAssist(change) => {
                self.unhook(ifindex, Carried::Drops);
                self.probe_event(&name, change);
            }
            Step::ToFull(change) => match self.full_probe(&at, &name) {
                Ok(links) => {
                    let _ = self
                        .taps_map
                        .insert(site, TapConfig::new(TapMode::Tc, ifindex), 0);
                    self.unhook(ifindex, Carried::Full);
                    if let Some(tap) = self.taps.get_mut(&ifindex) {
                        tap.links = Some(links);
                    }
                    self.probe_event(&name, change);
                }
                Err((reason, _)) => self.notice(
                    NoticeCode::AttachFailed,
                    Some(&name),
                    format!(
                        "{name} joined a bridge but the per-frame probe cannot be added \
                         ({reason}): its frames to other MACs are not counted"
                    ),
                ),
            },
            Step::ToDrops(change) => {
                let _ = self
                    .taps_map
                    .insert(site, TapConfig::new(TapMode::Drops, ifindex), 0);
                self.unhook(ifindex, Carried::Drops);
                self.probe_event(&name, change);
            }
        }
    }

    /// Removes the tap's tc links, if any; it carries `now` from here on.
    fn unhook(&mut self, ifindex: u32, now: Carried) {
        let Some(tap) = self.taps.get_mut(&ifindex) else {
            return;
        };
        tap.carried = now;
        let at = tap.at.clone();
        if let Some(links) = tap.links.take() {
            self.unhook_links(&at, links);
        }
    }

    /// Unhooks `links` from the tap at `at`, from inside its namespace (clsact filters are
    /// removed over netlink there); a namespace that is gone took them with it.
    fn unhook_links(&mut self, at: &At, links: TcLinks) {
        let inside = at.enter();
        let inode = at.ns.as_ref().map_or(0, |n| n.inode);
        self.hooks.detach(&mut self.ebpf, at.ifindex, inode, links);
        drop(inside);
    }

    fn add_assist(&mut self, ifindex: u32, at: &At, name: &str, change: ProbeChange) {
        // Egress as on a full probe: the host's ARP to the VM, during the trouble.
        let r = self.hook(
            at,
            name,
            &[
                (ASSIST, TcAttachType::Ingress),
                (EGRESS, TcAttachType::Egress),
            ],
        );
        let tap = self.taps.get_mut(&ifindex).expect("present: named above");
        match r {
            Ok(links) => {
                tap.links = Some(links);
                tap.carried = Carried::Assist {
                    last_trouble: Instant::now(),
                    until_sent: change.until_sent,
                };
                self.probe_event(name, change);
            }
            // The tap went while the probe was being added (libvirt re-creates and deletes
            // taps within milliseconds): its removal follows, there is nothing to say.
            Err((_, Some(libc::ENODEV))) => {}
            Err((reason, _)) if !tap.assist_failure_said => {
                tap.assist_failure_said = true;
                let what = if change.until_sent {
                    "its VM's first frames are not kernel-timed (the probe is tried again \
                     on its first stale frame or RARP)"
                } else {
                    "the end of its stale frames is not timed (tried again every interval)"
                };
                self.notice(
                    NoticeCode::AttachFailed,
                    Some(name),
                    format!(
                        "{name}: {}, but the per-frame probe cannot be added ({reason}): {what}",
                        change.why()
                    ),
                );
            }
            Err(_) => {}
        }
    }

    fn probe_event(&mut self, ifname: &str, change: ProbeChange) {
        self.events.push(DatapathEvent::Probe {
            ifname: ifname.to_string(),
            change,
        });
    }

    /// Stops counting; returns the final counters. `totals`: the link's last statistics
    /// when it went away (read now otherwise). Safe on an interface that is already gone
    /// (its hooks died with it).
    pub fn detach(
        &mut self,
        ifindex: u32,
        totals: Option<LinkTotals>,
    ) -> Option<crate::collect::datapath::TapCounts> {
        // No program counts the tap from here on.
        let at = self.taps.get(&ifindex)?.at.clone();
        let _ = self.taps_map.remove(&self.site(&at));
        let totals = totals.or_else(|| {
            let _inside = at.enter().ok()?;
            netlink::link_totals(Some(at.ifindex))
                .ok()
                .and_then(|t| t.get(&at.ifindex).copied())
        });
        if let (Some(t), Some(tap)) = (totals, self.taps.get_mut(&ifindex)) {
            tap.latest = t;
        }
        self.read_drops(Some(ifindex));
        let last = self.counters(ifindex);
        let mut tap = self.taps.remove(&ifindex)?;
        self.closer.close(std::mem::take(&mut tap.arp));
        if let Some(links) = tap.links {
            self.unhook_links(&tap.at, links);
        }
        self.remove_maps(ifindex);
        last
    }
}
