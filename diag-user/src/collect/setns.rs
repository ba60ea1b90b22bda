//! Work done inside a given network namespace: a socket or a netlink request belongs to
//! the namespace of the thread that made it, so it is made on a short-lived thread that
//! entered the namespace (setns affects one thread only).

use std::{fs::File, io, os::fd::AsRawFd};

/// The calling thread's network namespace, to come back to it from any thread.
pub fn current() -> io::Result<File> {
    File::open("/proc/thread-self/ns/net")
}

/// Runs `f` on a thread inside the namespace `ns`.
pub fn run_in<T: Send + 'static>(
    ns: &File,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<T> {
    let ns = ns.try_clone()?;
    std::thread::Builder::new()
        .name("tapwatch-netns".into())
        .spawn(move || {
            // SAFETY: setns on a valid namespace fd; affects only this new thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })?
        .join()
        .map_err(|_| io::Error::other("a thread inside a network namespace panicked"))?
}

/// Which network namespace a run watches (`--netns`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NetnsChoice {
    /// Every namespace when tapwatch runs on the host itself (in the namespace of PID 1),
    /// else its own: run inside a container or `ip netns exec`, that is the one meant.
    #[default]
    Auto,
    /// tapwatch's own only (the host's, where it runs on the host).
    Host,
    /// tapwatch's own and every other namespace of the host, as they come and go.
    All,
    /// The namespace of a process: a KubeVirt pod's QEMU, a container.
    Pid(u32),
    /// A namespace file: `/var/run/netns/NAME` (iproute2's, containerd's `cni-…`).
    Path(std::path::PathBuf),
}

impl std::str::FromStr for NetnsChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "" => return Err("give auto, all, host, a PID or a namespace file".into()),
            "auto" => Self::Auto,
            "host" => Self::Host,
            "all" => Self::All,
            s if s.bytes().all(|b| b.is_ascii_digit()) => {
                Self::Pid(s.parse().map_err(|_| format!("{s} is not a PID"))?)
            }
            s => Self::Path(s.into()),
        })
    }
}

impl NetnsChoice {
    /// Whether the run watches every namespace's taps besides its own.
    pub fn watches_all(&self) -> bool {
        match self {
            Self::All => true,
            Self::Auto => in_the_hosts_namespace(),
            _ => false,
        }
    }
}

/// The inode of the host's initial network namespace on kernels that give the initial
/// namespaces fixed ones (`PROC_NET_INIT_INO`); never a dynamic one, which start at
/// 0xf0000000.
const INIT_NET_INO: u64 = 0xefff_fff9;

/// Whether tapwatch runs in the host's initial network namespace, not in a container's or
/// one of `ip netns exec`: its fixed inode says so, else PID 1's namespace (on older
/// kernels). Unknown (PID 1 not readable there) counts as no.
fn in_the_hosts_namespace() -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let own = ino("/proc/self/ns/net");
    if own.is_some_and(|(_, i)| i == INIT_NET_INO) {
        return true;
    }
    matches!((ino("/proc/1/ns/net"), own), (Some(a), Some(b)) if a == b)
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open the network namespace {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter the network namespace {path} (is it one? is tapwatch root?): {source}")]
    Enter {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// Moves the calling thread into the chosen namespace, so that every socket, netlink
/// request and thread made afterwards belongs to it; `main` calls it before any thread
/// exists. Returns the namespace file entered (none for tapwatch's own, which is where a
/// run watching every namespace stays).
pub fn enter(choice: &NetnsChoice) -> Result<Option<String>, NetnsError> {
    let path = match choice {
        NetnsChoice::Auto | NetnsChoice::Host | NetnsChoice::All => return Ok(None),
        NetnsChoice::Pid(pid) => format!("/proc/{pid}/ns/net"),
        NetnsChoice::Path(p) => p.display().to_string(),
    };
    let ns = File::open(&path).map_err(|source| NetnsError::Open {
        path: path.clone(),
        source,
    })?;
    // SAFETY: setns on an open fd; the kernel refuses (EINVAL) a file that is not a
    // network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(NetnsError::Enter {
            path,
            source: io::Error::last_os_error(),
        });
    }
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_choices_parse() {
        assert_eq!("host".parse(), Ok(NetnsChoice::Host));
        assert_eq!("auto".parse(), Ok(NetnsChoice::Auto));
        assert_eq!("all".parse(), Ok(NetnsChoice::All));
        assert_eq!("4242".parse(), Ok(NetnsChoice::Pid(4242)));
        assert_eq!(
            "/var/run/netns/cni-1".parse(),
            Ok(NetnsChoice::Path("/var/run/netns/cni-1".into()))
        );
        assert!("".parse::<NetnsChoice>().is_err());
    }

    #[test]
    fn missing_namespaces_are_refused_and_all_stays_home() {
        assert_eq!(enter(&NetnsChoice::All).unwrap(), None);
        assert!(NetnsChoice::All.watches_all() && !NetnsChoice::Host.watches_all());
        assert!(!NetnsChoice::Pid(1).watches_all());
        let missing = enter(&NetnsChoice::Path("/nonexistent/ns".into()))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/ns"), "{missing}");
        // A file that is not a namespace: refused by the kernel, before anything runs.
        let not = enter(&NetnsChoice::Path("/proc/self/status".into()));
        assert!(not.is_err());
    }
}
