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
    /// tapwatch's own (the host's, where it runs on the host).
    #[default]
    Host,
    /// Every namespace of the host at once.
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
            "" => return Err("give host, all, a PID or a namespace file".into()),
            "host" => Self::Host,
            "all" => Self::All,
            s if s.bytes().all(|b| b.is_ascii_digit()) => {
                Self::Pid(s.parse().map_err(|_| format!("{s} is not a PID"))?)
            }
            s => Self::Path(s.into()),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error(
        "--netns all (every network namespace at once) is not supported yet: run one \
         tapwatch per namespace with --netns PID (a pod's QEMU process) or --netns \
         /var/run/netns/NAME"
    )]
    AllUnsupported,
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
/// exists. Returns the namespace file entered (none for the host's).
pub fn enter(choice: &NetnsChoice) -> Result<Option<String>, NetnsError> {
    let path = match choice {
        NetnsChoice::Host => return Ok(None),
        NetnsChoice::All => return Err(NetnsError::AllUnsupported),
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
        assert_eq!("all".parse(), Ok(NetnsChoice::All));
        assert_eq!("4242".parse(), Ok(NetnsChoice::Pid(4242)));
        assert_eq!(
            "/var/run/netns/cni-1".parse(),
            Ok(NetnsChoice::Path("/var/run/netns/cni-1".into()))
        );
        assert!("".parse::<NetnsChoice>().is_err());
    }

    #[test]
    fn all_and_missing_namespaces_are_refused_with_what_to_do() {
        let all = enter(&NetnsChoice::All).unwrap_err().to_string();
        assert!(all.contains("--netns PID"), "{all}");
        let missing = enter(&NetnsChoice::Path("/nonexistent/ns".into()))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/ns"), "{missing}");
        // A file that is not a namespace: refused by the kernel, before anything runs.
        let not = enter(&NetnsChoice::Path("/proc/self/status".into()));
        assert!(not.is_err());
    }
}
