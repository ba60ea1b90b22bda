//! Which VM is behind a tap, from every source that names it: libvirt's status directory
//! (followed with inotify), libvirt's status files inside KubeVirt pods (a scan of
//! `/proc`), Open vSwitch's database (a monitor over its socket) and Proxmox's VM
//! configurations (read when a tap appears, checked again slowly), merged with where each
//! fact came from ([`merge`]); or a fixed table (the lab). See docs/identity.md.
//!
//! A tap is looked up by its network namespace and name: every KubeVirt pod has a `tap0`.

mod host;
pub mod kubevirt;
pub mod libvirt;
pub mod merge;
pub mod ovsdb;
pub mod proxmox;

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
    time::Duration,
};

use tokio::sync::Notify;

use self::{
    host::HostIdentities,
    kubevirt::KubevirtError,
    libvirt::{LibvirtError, VmDirectory},
    ovsdb::OvsdbError,
    proxmox::ProxmoxError,
};
use crate::model::{identity::VmInterface, NoticeCode};

/// How long a source's thread takes at most to see that the run ended.
const STOP_LATENCY: Duration = Duration::from_secs(1);
/// Problems a source's thread keeps until the collector takes them.
const MAX_PENDING: usize = 64;
/// Problems remembered as said, so each is said once.
const MAX_SAID: usize = 4096;

/// What a source could not read, said in a `notice`.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Libvirt(#[from] LibvirtError),
    #[error(transparent)]
    Kubevirt(#[from] KubevirtError),
    #[error(transparent)]
    Ovsdb(#[from] OvsdbError),
    #[error(transparent)]
    Proxmox(#[from] ProxmoxError),
}

impl IdentityError {
    /// The notice that says it.
    pub fn notice(&self) -> (NoticeCode, String) {
        match self {
            IdentityError::Libvirt(e) | IdentityError::Kubevirt(KubevirtError::Libvirt(e)) => (
                NoticeCode::LibvirtFile,
                format!("skipping libvirt domain file {e}"),
            ),
            IdentityError::Kubevirt(e) => (NoticeCode::IdentitySource, format!("KubeVirt: {e}")),
            IdentityError::Ovsdb(e) => (NoticeCode::IdentitySource, e.to_string()),
            IdentityError::Proxmox(e) => (
                NoticeCode::IdentitySource,
                format!("skipping Proxmox VM configuration {e}"),
            ),
        }
    }
}

/// Where a run learns which VM is behind a tap.
#[derive(Clone)]
pub enum IdentitySource {
    None,
    /// This host's sources.
    Host(HostSources),
    /// A fixed table (the lab's simulated VMs), for taps of tapwatch's own namespace.
    Fixed(Arc<dyn VmDirectory + Sync>),
}

impl std::fmt::Debug for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentitySource::None => f.write_str("None"),
            IdentitySource::Host(h) => write!(f, "Host({h:?})"),
            IdentitySource::Fixed(_) => f.write_str("Fixed"),
        }
    }
}

/// This host's identity sources, each where to find it (`None`: not used).
#[derive(Clone, Debug)]
pub struct HostSources {
    /// libvirt's status directory (`/run/libvirt/qemu`), followed as it changes.
    pub libvirt_dir: PathBuf,
    /// The procfs in which KubeVirt's QEMU processes are looked for.
    pub proc: Option<PathBuf>,
    /// The OVSDB server's socket.
    pub ovsdb: Option<OvsdbSocket>,
    /// Proxmox's cluster file system (`/etc/pve`).
    pub proxmox_dir: Option<PathBuf>,
}

#[derive(Clone, Debug)]
pub struct OvsdbSocket {
    pub path: PathBuf,
    /// Named by the user: a missing socket is said (once), not taken as "no OVS here".
    pub explicit: bool,
}

impl HostSources {
    /// libvirt's status directory alone.
    pub fn libvirt(dir: &Path) -> Self {
        Self {
            libvirt_dir: dir.to_path_buf(),
            proc: None,
            ovsdb: None,
            proxmox_dir: None,
        }
    }

    /// Every source, at its standard place.
    pub fn standard() -> Self {
        Self {
            libvirt_dir: libvirt::DEFAULT_DIR.into(),
            proc: Some(kubevirt::PROC.into()),
            ovsdb: Some(OvsdbSocket {
                path: ovsdb::DEFAULT_SOCKET.into(),
                explicit: false,
            }),
            proxmox_dir: Some(proxmox::DEFAULT_DIR.into()),
        }
    }
}

/// What a source's thread hands to the collector.
struct Shared<T> {
    table: Arc<T>,
    errors: Vec<IdentityError>,
}

/// A source's thread's side: publishes what it learnt, wakes the collector.
pub(crate) struct Publisher<T> {
    shared: Arc<Mutex<Shared<T>>>,
    notify: Arc<Notify>,
    /// Disconnected when the run ends.
    stop: mpsc::Receiver<()>,
}

impl<T> Publisher<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared<T>> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn publish(&self, table: T) {
        self.lock().table = Arc::new(table);
        self.notify.notify_one();
    }

    pub(crate) fn report(&self, e: IdentityError) {
        let mut s = self.lock();
        if s.errors.len() < MAX_PENDING {
            s.errors.push(e);
        }
        drop(s);
        self.notify.notify_one();
    }

    /// Waits `d` (the source's period); false once the run ended.
    pub(crate) fn wait(&self, d: Duration) -> bool {
        !matches!(
            self.stop.recv_timeout(d),
            Err(mpsc::RecvTimeoutError::Disconnected)
        )
    }

    pub(crate) fn stopped(&self) -> bool {
        matches!(self.stop.try_recv(), Err(mpsc::TryRecvError::Disconnected))
    }
}

/// A source followed on a thread of its own, so that a slow file system (a pod's root, an
/// unresponsive server) never holds up the collector. The thread ends once this is
/// dropped, within [`STOP_LATENCY`] or its period.
struct Background<T> {
    shared: Arc<Mutex<Shared<T>>>,
    _stop: mpsc::Sender<()>,
}

impl<T: Default + Send + Sync + 'static> Background<T> {
    fn start(
        name: &str,
        notify: &Arc<Notify>,
        body: impl FnOnce(&Publisher<T>) + Send + 'static,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Mutex::new(Shared {
            table: Arc::new(T::default()),
            errors: Vec::new(),
        }));
        let (stop_tx, stop) = mpsc::channel();
        let publisher = Publisher {
            shared: shared.clone(),
            notify: notify.clone(),
            stop,
        };
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || body(&publisher))?;
        Ok(Self {
            shared,
            _stop: stop_tx,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared<T>> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn table(&self) -> Arc<T> {
        self.lock().table.clone()
    }

    fn take_errors(&self) -> Vec<IdentityError> {
        std::mem::take(&mut self.lock().errors)
    }
}

/// The identity sources of a running watcher (or of a test).
pub enum Identities {
    None,
    Host(Box<HostIdentities>),
    Fixed(Arc<dyn VmDirectory + Sync>),
}

impl From<&IdentitySource> for Identities {
    fn from(s: &IdentitySource) -> Self {
        match s {
            IdentitySource::None => Identities::None,
            IdentitySource::Host(h) => Identities::Host(Box::new(HostIdentities::new(h))),
            IdentitySource::Fixed(t) => Identities::Fixed(t.clone()),
        }
    }
}

impl Identities {
    /// Reads the sources once and starts following them; what could not be read.
    pub fn start(&mut self) -> Vec<IdentityError> {
        match self {
            Identities::Host(h) => h.start(),
            _ => Vec::new(),
        }
    }

    /// The VM behind the tap `tap` of network namespace `netns` ([`crate::registry::OWN_NETNS`]: tapwatch's).
    pub fn lookup(&mut self, netns: u64, tap: &str) -> Option<VmInterface> {
        match self {
            Identities::None => None,
            Identities::Host(h) => h.lookup(netns, tap),
            Identities::Fixed(t) => t.lookup_in(netns, tap),
        }
    }

    /// Waits until a source changes; never, for a table that does not.
    pub async fn changed(&mut self) -> Vec<IdentityError> {
        match self {
            Identities::Host(h) => h.changed().await,
            Identities::Fixed(t) => match t.changes() {
                Some(n) => {
                    n.notified().await;
                    Vec::new()
                }
                None => std::future::pending().await,
            },
            Identities::None => std::future::pending().await,
        }
    }

    /// At each interval: follows libvirt's directory once it exists, checks Proxmox's
    /// files when due; what could not be read.
    pub fn retry(&mut self) -> Vec<IdentityError> {
        match self {
            Identities::Host(h) => h.retry(),
            _ => Vec::new(),
        }
    }
}

/// The file at `path` if it is a regular file of at most `max` bytes (`None` when it is
/// longer), without following a symlink or blocking on a FIFO.
pub(crate) fn read_bounded(path: &Path, max: u64) -> std::io::Result<Option<String>> {
    use std::io::Read;
    let f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    if meta.len() > max {
        return Ok(None);
    }
    let mut s = String::new();
    // One byte more than allowed tells a file at the limit from a longer one (it may have
    // grown since its size was read).
    f.take(max + 1).read_to_string(&mut s)?;
    Ok((s.len() as u64 <= max).then_some(s))
}

/// Says each problem once.
#[derive(Default)]
struct Said(HashSet<String>);

impl Said {
    fn fresh(&mut self, errors: Vec<IdentityError>) -> Vec<IdentityError> {
        errors
            .into_iter()
            .filter(|e| {
                let key = e.to_string();
                if self.0.contains(&key) {
                    return false;
                }
                // Past the bound, a problem may be said again: better than memory without
                // end.
                if self.0.len() >= MAX_SAID {
                    self.0.clear();
                }
                self.0.insert(key)
            })
            .collect()
    }
}
