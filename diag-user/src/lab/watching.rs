//! tapwatch watching a lab hypervisor, as on-call runs it: the ordinary collector, on a
//! thread in the hypervisor's namespace, into the run's pipeline.

use std::{
    sync::Arc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use super::{vms::LabVms, LabError, LabOptions};
use crate::{
    collect::{self, ebpf::AttachMode, WatchError, WatchOptions},
    lab::netns::{Netns, SandboxError},
    model::{DatapathKind, Record, Sink},
    report::pipeline::{Feed, Pipeline},
};

/// Taps the watcher has said `attached` for: the story waits for its tap there before the
/// guest starts, so all its frames are seen.
#[derive(Clone, Default)]
pub(super) struct Attached(
    Arc<(
        std::sync::Mutex<std::collections::HashSet<String>>,
        std::sync::Condvar,
    )>,
);

impl Attached {
    pub(super) fn add(&self, ifname: &str) {
        let (set, cv) = &*self.0;
        set.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ifname.to_string());
        cv.notify_all();
    }

    /// Waits (at most 5 s: a tap that cannot be watched is reported by the watcher) until
    /// `ifname` is attached.
    pub(super) fn wait(&self, ifname: &str) {
        let (set, cv) = &*self.0;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut guard = set.lock().unwrap_or_else(|e| e.into_inner());
        while !guard.contains(ifname) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            guard = cv
                .wait_timeout(guard, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The watcher's records into the pipeline, noting each tap it attached to.
pub(super) struct Watched {
    pub(super) feed: Feed,
    pub(super) attached: Attached,
}

impl Sink for Watched {
    fn emit(&mut self, rec: &Record) -> std::io::Result<()> {
        if let Record::Attached { ifname, .. } = rec {
            self.attached.add(ifname);
        }
        self.feed.emit(rec)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.feed.flush()
    }
    fn datapath(&mut self, kind: DatapathKind) {
        self.feed.datapath(kind)
    }
}

/// A watcher running in one of the lab's namespaces.
pub(super) struct LabWatcher {
    pub(super) handle: JoinHandle<Result<Result<collect::Outcome, WatchError>, SandboxError>>,
    pub(super) stop: oneshot::Sender<()>,
}

impl LabWatcher {
    /// `tapwatch watch` as the on-call engineer runs it, on hypervisor `ns`, with libvirt's
    /// view `vms`, into `pipeline`; `attached` hears of every tap it attaches to. `pods`:
    /// the node's pods' namespaces are pinned with names that start so (`kubevirt`), and
    /// it watches them as it does every namespace on a real node (where a node's pods are
    /// all there is).
    pub(super) fn start(
        ns: &Netns,
        opts: &LabOptions,
        vms: Arc<LabVms>,
        pipeline: Arc<Pipeline>,
        attached: Attached,
        pods: Option<String>,
    ) -> Result<Self, SandboxError> {
        let (stop, stop_rx) = oneshot::channel::<()>();
        let watch_opts = WatchOptions {
            patterns: vec!["tap*".into()],
            interval: opts.interval,
            duration: None,
            attach_mode: AttachMode::Auto,
            // The datapath an operator gets by default, without the libpcap fallback: the
            // lab is about the kernel's view.
            datapath: crate::collect::DatapathChoice::Ebpf,
            probe_linger: Duration::from_secs(60),
            identities: crate::collect::IdentitySource::Fixed(vms),
            forget_after: None,
            all_namespaces: pods.is_some(),
            namespace_prefix: pods,
        };
        let handle = ns.spawn(move || {
            let mut sink = Watched {
                feed: Feed(pipeline),
                attached,
            };
            collect::run_blocking(watch_opts, &mut sink, async {
                let _ = stop_rx.await;
            })
        })?;
        Ok(Self { handle, stop })
    }

    pub(super) fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    pub(super) fn stop(self) -> Result<collect::Outcome, LabError> {
        let _ = self.stop.send(());
        let r = self.handle.join().map_err(|_| LabError::Thread {
            what: "watcher",
            detail: "panicked".into(),
        })?;
        Ok(r??)
    }
}
