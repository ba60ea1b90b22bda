use std::sync::{Arc, Mutex};

use super::*;
use crate::{
    collect::identity::libvirt::VmDirectory,
    collect::identity::IdentitySource,
    model::{mac::MacAddr, Backend, Mode},
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
        site: None,
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
        ..VmInterface::default()
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
            Record::Identity { libvirt, .. } => Some(libvirt.as_ref().map(|v| v.domain.clone())),
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
