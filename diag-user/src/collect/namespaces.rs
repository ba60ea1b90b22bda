//! Taps in every network namespace of the host (`--netns all`): a KubeVirt pod's `tap0`,
//! a container's. A namespace is found by its pins (`/run/netns/NAME`, where iproute2 and
//! containerd keep them) and by the processes in it (`/proc/PID/ns/net`), at start and then
//! twice a second; each gets a thread inside it that follows its links, and goes when
//! nothing pins the namespace any more.
//!
//! The rest of tapwatch knows a tap by an ifindex and a name, and both repeat across
//! namespaces (every pod has a `tap0`, often with the same ifindex). A tap in another
//! namespace is therefore given an id above any real ifindex (an `int`) and a name that no
//! interface can have, `NAMESPACE/IFNAME` (Linux forbids `/` in interface names): the
//! watcher, the engine, the metrics and the live view keep them apart without knowing of
//! namespaces. Records split the name back into `ifname` and `netns`
//! ([`crate::model::netns`]). Where a tap really is, the datapath finds in its
//! link's [`Site`].

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::{FileTypeExt, MetadataExt},
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU32, Ordering},
        Arc, Mutex, Weak,
    },
    time::Duration,
};

use super::links::{Link, LinkChange, LinkMonitor, Selector};

/// Ids of taps in other namespaces start here: a real ifindex is a positive `int`.
pub const FIRST_ID: u32 = 1 << 31;

/// Whether a tap id is one of another namespace's taps.
pub fn is_foreign(id: u32) -> bool {
    id >= FIRST_ID
}

/// Between a namespace's name and an interface's: a character no interface name has.
pub const SEPARATOR: char = '/';

/// A tap's name as the run knows it: `NAMESPACE/IFNAME`.
pub fn qualified(netns: &str, ifname: &str) -> String {
    format!("{netns}{SEPARATOR}{ifname}")
}

/// A run's name for a tap, split into its namespace (none for tapwatch's own) and its
/// interface name.
pub fn split(name: &str) -> (Option<&str>, &str) {
    match name.rsplit_once(SEPARATOR) {
        Some((ns, ifname)) => (Some(ns), ifname),
        None => (None, name),
    }
}

/// A network namespace other than tapwatch's own, held open while it is watched.
pub struct Netns {
    /// The inode of its namespace file: what identity sources key pods by.
    pub inode: u64,
    /// How records and the screen name it: its pin's name under /run/netns, else the PID
    /// of a process in it (either can be given to `--netns`).
    pub label: String,
    /// The kernel's cookie of it, what the eBPF maps key its taps by.
    pub cookie: u64,
    file: File,
}

impl std::fmt::Debug for Netns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "netns {} (inode {})", self.label, self.inode)
    }
}

impl PartialEq for Netns {
    fn eq(&self, other: &Self) -> bool {
        self.inode == other.inode
    }
}

impl Eq for Netns {}

/// Where a tap of another namespace really is.
#[derive(Clone, Debug)]
pub struct Site {
    /// Held weakly: a run keeps its gone taps' links for its summary, and must not keep a
    /// gone pod's namespace alive with them. The namespace's thread and the datapath
    /// (while the tap is attached) hold it.
    ns: Weak<Netns>,
    /// The inode of its namespace: what identity sources key a pod's taps by.
    pub inode: u64,
    /// Its ifindex and name inside its namespace.
    pub ifindex: u32,
    pub ifname: String,
    /// The name of its bridge there, if it is on one.
    pub master_name: Option<String>,
}

impl Site {
    /// Its namespace, while something still follows it.
    pub fn netns(&self) -> io::Result<Arc<Netns>> {
        self.ns.upgrade().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "its network namespace is no longer followed (gone)",
            )
        })
    }
}

impl PartialEq for Site {
    fn eq(&self, other: &Self) -> bool {
        (self.inode, self.ifindex, &self.ifname, &self.master_name)
            == (
                other.inode,
                other.ifindex,
                &other.ifname,
                &other.master_name,
            )
    }
}

impl Eq for Site {}

impl Netns {
    /// A path a child process (the cleanup helper) can open the namespace by while this
    /// run lives: the run's own descriptor of it.
    pub fn path_for_children(&self) -> String {
        format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd())
    }

    /// Runs `f` on a short-lived thread inside the namespace.
    pub fn run_in<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> io::Result<T> {
        super::setns::run_in(&self.file, f)
    }
}

/// The calling thread's stay in another namespace: back in its own when dropped. For the
/// few requests that must be made from inside (tc hooks, link statistics): setns moves
/// one thread only, and nothing else runs on it meanwhile. Not `Send`: it must drop on
/// the thread it moved.
pub struct Inside {
    home: File,
    _here: std::marker::PhantomData<*const ()>,
}

impl Netns {
    /// Moves the calling thread into the namespace until the guard drops.
    pub fn enter(&self) -> io::Result<Inside> {
        let home = super::setns::current()?;
        // SAFETY: setns on a namespace fd this value holds open; affects this thread only.
        if unsafe { libc::setns(self.file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Inside {
            home,
            _here: std::marker::PhantomData,
        })
    }
}

impl Drop for Inside {
    fn drop(&mut self) {
        // SAFETY: setns back into the namespace the thread came from, held open since.
        if unsafe { libc::setns(self.home.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            // A thread left in a pod's namespace would make every later socket of the run
            // there: nothing the run did after could be trusted.
            eprintln!(
                "tapwatch: cannot return to its own network namespace ({}); stopping",
                io::Error::last_os_error()
            );
            std::process::abort();
        }
    }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(FIRST_ID);

/// The links of other namespaces as last seen, by id: what the watcher's questions about
/// a tap ("does it still exist?") are answered from.
static SITES: Mutex<BTreeMap<u32, Link>> = Mutex::new(BTreeMap::new());

fn sites() -> std::sync::MutexGuard<'static, BTreeMap<u32, Link>> {
    SITES.lock().unwrap_or_else(|p| p.into_inner())
}

/// A watched namespace by its label, while a link of it is known.
pub fn named(label: &str) -> Option<Arc<Netns>> {
    sites()
        .values()
        .filter_map(|l| l.site.as_ref()?.netns().ok())
        .find(|ns| ns.label == label)
}

/// Another namespace's link with id `id`, as last seen.
pub fn link_of(id: u32) -> Option<Link> {
    sites().get(&id).cloned()
}

/// The next id for a tap of another namespace; none once they ran out (after 2^31 taps).
fn next_id() -> Option<u32> {
    NEXT_ID
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_add(1))
        .ok()
}

/// Turns a namespace's own link changes into the run's: ids and qualified names, for the
/// links the run's globs select (and those it already knows, so a rename away is said).
/// Other links cost nothing: a namespace may have any number of them.
struct Translate {
    ns: Arc<Netns>,
    ids: HashMap<u32, u32>,
    selector: Selector,
}

impl Translate {
    fn link(&mut self, real: Link) -> Option<Link> {
        let id = match self.ids.get(&real.ifindex) {
            Some(&id) => id,
            None if self.selector.matches(&real.name) => {
                let id = next_id()?;
                self.ids.insert(real.ifindex, id);
                id
            }
            None => return None,
        };
        // Asked here, on the namespace's own thread, where its ifindexes mean something.
        let master_name = real.master_name();
        let link = Link {
            ifindex: id,
            name: qualified(&self.ns.label, &real.name),
            site: Some(Site {
                ns: Arc::downgrade(&self.ns),
                inode: self.ns.inode,
                ifindex: real.ifindex,
                ifname: real.name.clone(),
                master_name,
            }),
            ..real
        };
        sites().insert(id, link.clone());
        Some(link)
    }

    fn change(&mut self, c: LinkChange) -> Option<LinkChange> {
        Some(match c {
            LinkChange::Present(l) => LinkChange::Present(self.link(l)?),
            LinkChange::Removed {
                ifindex,
                name,
                totals,
            } => {
                let id = self.ids.remove(&ifindex)?;
                sites().remove(&id);
                LinkChange::Removed {
                    ifindex: id,
                    name: qualified(&self.ns.label, &name),
                    totals,
                }
            }
            other => other,
        })
    }

    /// The namespace went: every link it had goes with it.
    fn gone(&mut self) -> Vec<LinkChange> {
        let mut ids: Vec<u32> = self.ids.drain().map(|(_, id)| id).collect();
        ids.sort_unstable();
        let mut s = sites();
        ids.into_iter()
            .filter_map(|id| s.remove(&id))
            .map(|l| LinkChange::Removed {
                ifindex: l.ifindex,
                name: l.name,
                totals: None,
            })
            .collect()
    }
}

/// Where a namespace's link changes go: the run's channel, translated.
pub(super) struct Outbox {
    tx: tokio::sync::mpsc::UnboundedSender<LinkChange>,
    translate: Option<Translate>,
}

impl Outbox {
    pub(super) fn plain(tx: tokio::sync::mpsc::UnboundedSender<LinkChange>) -> Self {
        Self {
            tx,
            translate: None,
        }
    }

    pub(super) fn send(&mut self, c: LinkChange) -> Result<(), ()> {
        let c = match self.translate.as_mut() {
            Some(t) => match t.change(c) {
                Some(c) => c,
                None => return Ok(()),
            },
            None => c,
        };
        self.tx.send(c).map_err(|_| ())
    }
}

/// A namespace being watched: its thread's flags, and its label (unique in the run).
struct Followed {
    stop: Arc<AtomicBool>,
    /// Cleared when its thread ended for whatever reason: followed again at the next look
    /// if it is still there (a transient failure to enter it).
    alive: Arc<AtomicBool>,
    label: String,
}

/// What every namespace thread of a run shares.
struct Shared {
    tx: tokio::sync::mpsc::UnboundedSender<LinkChange>,
    selector: Selector,
    /// Whether a failure to follow a namespace was said (once per run).
    failure_said: AtomicBool,
}

/// How often namespaces are looked for: a pod's tap is seen within a second of its
/// namespace appearing.
const SCAN_EVERY: Duration = Duration::from_millis(500);

/// The most namespaces a run follows (a thread and a socket each): a node runs a few
/// hundred pods, and a local user can make namespaces without end.
pub const MAX_NAMESPACES: usize = 4096;

/// Finds every other namespace of the host there is now, and the links of theirs that
/// `selector` selects (already in the run's terms); follows them, and those that appear
/// later, until the monitor drops. `prefix`: only the namespaces whose pin's name starts so.
pub fn follow_all(
    selector: Selector,
    prefix: Option<String>,
) -> io::Result<(LinkMonitor, Vec<Link>)> {
    let own = std::fs::metadata("/proc/thread-self/ns/net")?.ino();
    let scan = move |own| {
        let mut found = scan(own);
        if let Some(p) = &prefix {
            found.retain(|_, f: &mut Found| f.label.starts_with(p.as_str()));
        }
        found
    };
    let (tx, events) = tokio::sync::mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        tx,
        selector,
        failure_said: AtomicBool::new(false),
    });
    let stop = Arc::new(AtomicBool::new(false));
    let mut state = Watching::default();
    let mut started = Vec::new();
    state.look(scan(own), &shared, Some(&mut started));
    // All namespaces dump their links at once, each on its own thread.
    let mut initial = Vec::new();
    for waiting in started {
        if let Ok(links) = waiting.recv() {
            initial.extend(links);
        }
    }
    let flag = stop.clone();
    std::thread::Builder::new()
        .name("tapwatch-netns".into())
        .spawn(move || rescan(own, &scan, state, &shared, &flag))?;
    Ok((LinkMonitor::of(events, stop), initial))
}

/// The namespaces a run follows, and those it leaves alone.
#[derive(Default)]
struct Watching {
    followed: HashMap<u64, Followed>,
    /// Namespaces of another user namespace, by inode: not followed (see `Follow`).
    skipped: std::collections::HashSet<u64>,
    /// When the limit was last said.
    over_said: Option<std::time::Instant>,
}

impl Watching {
    /// One look at the host's namespaces: those gone are let go, new ones followed. At a
    /// run's first look, `waiting` gets the receivers of their first links (the run waits
    /// for them); later, they come with the changes, as links that appeared.
    fn look(
        &mut self,
        now: BTreeMap<u64, Found>,
        shared: &Arc<Shared>,
        mut waiting: Option<&mut Vec<std::sync::mpsc::Receiver<Vec<Link>>>>,
    ) {
        self.followed.retain(|inode, f| {
            let keep = now.contains_key(inode) && f.alive.load(Ordering::Relaxed);
            if !keep {
                f.stop.store(true, Ordering::Relaxed);
            }
            keep
        });
        self.skipped.retain(|inode| now.contains_key(inode));
        let mut over = 0;
        for (inode, found) in now {
            if self.followed.contains_key(&inode) || self.skipped.contains(&inode) {
                continue;
            }
            if self.followed.len() >= MAX_NAMESPACES {
                over += 1;
                continue;
            }
            let label = self.unique(found.label, inode);
            let (first, receiver) = match waiting {
                Some(_) => {
                    let (tx, rx) = std::sync::mpsc::channel();
                    (Some(tx), Some(rx))
                }
                None => (None, None),
            };
            match follow(inode, &found.path, found.pinned, label, shared, first) {
                Follow::Started(f) => {
                    self.followed.insert(inode, f);
                    if let (Some(w), Some(rx)) = (waiting.as_deref_mut(), receiver) {
                        w.push(rx);
                    }
                }
                Follow::Skipped => {
                    self.skipped.insert(inode);
                }
                Follow::Gone => {}
            }
        }
        if over > 0
            && self
                .over_said
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
        {
            self.over_said = Some(std::time::Instant::now());
            let _ = shared.tx.send(LinkChange::Namespaces(format!(
                "{} network namespaces, more than the {MAX_NAMESPACES} a run follows: the \
                 taps of {over} are not watched (watch one with --netns PID)",
                MAX_NAMESPACES + over
            )));
        }
    }

    /// `label`, or, when a followed namespace has it already (a PID reused, a pin named
    /// like a PID), `label@inode`: records and nudges must not confuse the two.
    fn unique(&self, label: String, inode: u64) -> String {
        if self.followed.values().any(|f| f.label == label) {
            format!("{label}@{inode}")
        } else {
            label
        }
    }
}

/// The scanning thread: new namespaces are followed, gone ones let go.
fn rescan(
    own: u64,
    scan: &dyn Fn(u64) -> BTreeMap<u64, Found>,
    mut state: Watching,
    shared: &Arc<Shared>,
    stop: &AtomicBool,
) {
    while !stop.load(Ordering::Relaxed) && !shared.tx.is_closed() {
        std::thread::sleep(SCAN_EVERY);
        state.look(scan(own), shared, None);
    }
    for f in state.followed.values() {
        f.stop.store(true, Ordering::Relaxed);
    }
}

/// A namespace a look found: a path to open it by, its label, and whether it is pinned
/// (only root pins under /run/netns).
struct Found {
    path: PathBuf,
    label: String,
    pinned: bool,
}

/// The namespaces of the host other than `own`, by inode: a path to open each by, and its
/// label. Pins first (their names are the ones users know), then processes.
fn scan(own: u64) -> BTreeMap<u64, Found> {
    let mut found = BTreeMap::new();
    for dir in ["/run/netns", "/var/run/netns"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            // A pin is a bind mount of the namespace over an empty file; one that is not
            // mounted (its namespace gone) is a plain empty file of the tmpfs.
            if !is_nsfs(&path, &meta) {
                continue;
            }
            let label = label_of(&e.file_name().to_string_lossy());
            found.entry(meta.ino()).or_insert(Found {
                path,
                label,
                pinned: true,
            });
        }
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let name = p.file_name();
            let Some(pid) = name
                .to_str()
                .filter(|s| s.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let path = PathBuf::from(format!("/proc/{pid}/ns/net"));
            // Kernel threads and processes that exited meanwhile have none to stat.
            let Ok(meta) = std::fs::metadata(&path) else {
                continue;
            };
            found.entry(meta.ino()).or_insert_with(|| Found {
                path,
                label: pid.to_string(),
                pinned: false,
            });
        }
    }
    found.remove(&own);
    found
}

/// A pin's name as records and lines show it: what iproute2 and containerd name them with
/// passes as it is; anything else (a newline, a quote) becomes `_`, so no name can forge a
/// line of text output.
fn label_of(pin: &str) -> String {
    pin.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.@+".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Whether `path` is a namespace file (nsfs), not the empty file a stale pin leaves.
fn is_nsfs(path: &Path, meta: &std::fs::Metadata) -> bool {
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    if meta.file_type().is_dir() || meta.file_type().is_socket() {
        return false;
    }
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs with a NUL-terminated path and a zeroed out-struct.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type as i64 == NSFS_MAGIC
    }
}

/// What became of a namespace the run tried to follow.
enum Follow {
    Started(Followed),
    /// Of another user namespace and not pinned: a local user's own, which the run leaves
    /// alone (each would cost a thread; a user can make them without end).
    Skipped,
    /// Gone meanwhile, or not a namespace.
    Gone,
}

/// Starts following one namespace on a thread inside it; its first links go to `first`,
/// or with the changes as links that appeared.
fn follow(
    inode: u64,
    path: &Path,
    pinned: bool,
    label: String,
    shared: &Arc<Shared>,
    first: Option<std::sync::mpsc::Sender<Vec<Link>>>,
) -> Follow {
    let Ok(file) = File::open(path) else {
        return Follow::Gone;
    };
    // The path may name another namespace by now (a PID reused).
    if file.metadata().ok().map(|m| m.ino()) != Some(inode) {
        return Follow::Gone;
    }
    if !pinned && !of_our_user_namespace(&file) {
        return Follow::Skipped;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let alive = Arc::new(AtomicBool::new(true));
    let (flag, lives, shared, name) = (stop.clone(), alive.clone(), shared.clone(), label.clone());
    let spawned = std::thread::Builder::new()
        .name("tapwatch-ns-links".into())
        .stack_size(256 << 10)
        .spawn(move || {
            inside(file, inode, name, &shared, first, &flag);
            lives.store(false, Ordering::Relaxed);
        });
    match spawned {
        Ok(_) => Follow::Started(Followed { stop, alive, label }),
        Err(_) => Follow::Gone,
    }
}

/// Whether the namespace belongs to tapwatch's own user namespace (the host's, where VMs'
/// and pods' namespaces are made). Unknown (an old kernel) counts as yes.
fn of_our_user_namespace(ns: &File) -> bool {
    // NS_GET_USERNS: _IO(0xb7, 0x1).
    const NS_GET_USERNS: libc::c_ulong = 0xb701;
    // SAFETY: an ioctl on an open namespace descriptor; a new descriptor or -1 comes back.
    let fd = unsafe { libc::ioctl(ns.as_raw_fd(), NS_GET_USERNS as _) };
    if fd < 0 {
        return true;
    }
    // SAFETY: a fresh descriptor nobody else owns.
    let owner = unsafe { File::from_raw_fd(fd) };
    let ours = std::fs::metadata("/proc/self/ns/user").map(|m| m.ino());
    match (owner.metadata().map(|m| m.ino()), ours) {
        (Ok(a), Ok(b)) => a == b,
        _ => true,
    }
}

/// A namespace's thread: enters it for good, follows its links until told to stop, then
/// says that every link it had is gone.
fn inside(
    file: File,
    inode: u64,
    label: String,
    shared: &Shared,
    first: Option<std::sync::mpsc::Sender<Vec<Link>>>,
    stop: &AtomicBool,
) {
    // Whatever happens, the run's first look does not wait for this namespace, and the
    // first failure is said (entering a namespace needs CAP_SYS_ADMIN).
    let failed = |what: &str, e: io::Error| {
        if let Some(first) = &first {
            let _ = first.send(Vec::new());
        }
        if !shared.failure_said.swap(true, Ordering::Relaxed) {
            let _ = shared.tx.send(LinkChange::Namespaces(format!(
                "cannot {what} the network namespace {label} ({e}): its taps are not \
                 watched; tried again while it is there (entering namespaces needs \
                 CAP_SYS_ADMIN)"
            )));
        }
    };
    // SAFETY: setns on an open namespace fd; this thread lives in it from now on.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return failed("enter", io::Error::last_os_error());
    }
    let cookie = match super::netlink::netns_cookie() {
        Ok(c) => c,
        Err(e) => return failed("name", e),
    };
    let (sock, links) = match super::links::subscribe_and_dump() {
        Ok(x) => x,
        Err(e) => return failed("follow the links of", e),
    };
    let ns = Arc::new(Netns {
        inode,
        label: label.clone(),
        cookie,
        file,
    });
    let mut translate = Translate {
        ns,
        ids: HashMap::new(),
        selector: shared.selector.clone(),
    };
    let known = links.iter().map(|l| (l.ifindex, l.clone())).collect();
    let ours: Vec<Link> = links
        .into_iter()
        .filter_map(|l| translate.link(l))
        .collect();
    let mut outbox = Outbox {
        tx: shared.tx.clone(),
        translate: Some(translate),
    };
    match first {
        Some(first) => {
            let _ = first.send(ours);
        }
        None => {
            for l in ours {
                if outbox.tx.send(LinkChange::Present(l)).is_err() {
                    return;
                }
            }
        }
    }
    super::links::follow(sock, known, &mut outbox, stop);
    if let Some(t) = outbox.translate.as_mut() {
        for c in t.gone() {
            if outbox.tx.send(c).is_err() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names_split_back_and_host_names_have_no_namespace() {
        let q = qualified("cni-4f1c", "tap0");
        assert_eq!(q, "cni-4f1c/tap0");
        assert_eq!(split(&q), (Some("cni-4f1c"), "tap0"));
        assert_eq!(split("tap0"), (None, "tap0"));
        assert!(is_foreign(FIRST_ID) && !is_foreign(i32::MAX as u32));
        assert_eq!(label_of("cni-4f1c2a9e-0711"), "cni-4f1c2a9e-0711");
        assert_eq!(label_of("evil\n{\"x\"} ns"), "evil___x___ns");
    }

    #[test]
    fn the_scan_finds_no_own_namespace_and_labels_processes_by_pid() {
        let own = std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino();
        let found = scan(own);
        assert!(!found.contains_key(&own));
        for f in found.values() {
            assert!(
                !f.label.is_empty() && !f.label.contains(SEPARATOR),
                "{:?}",
                f.path
            );
        }
    }
}
