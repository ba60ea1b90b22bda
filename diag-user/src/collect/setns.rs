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
