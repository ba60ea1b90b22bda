//! The bundle directory, opened once and checked; every file of it is made relative to
//! that open directory, never opened by path again.

use std::{
    ffi::{CStr, CString, OsStr, OsString},
    fs::File,
    io::{self, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Component, Path, PathBuf},
};

use super::{io_at, BundleError};

/// The bundle directory, opened once and checked.
pub(super) struct Dir {
    pub fd: OwnedFd,
    pub parent: OwnedFd,
    pub name: OsString,
    pub path: PathBuf,
}

fn cstr(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn last_os(path: &Path) -> BundleError {
    BundleError::Io {
        path: path.to_path_buf(),
        source: io::Error::last_os_error(),
    }
}

impl Dir {
    /// Opens (making it if needed) the directory `path` names, refusing symlinks under any
    /// spelling (`DIR/`, `DIR/.`), directories of other users, and non-empty ones.
    pub(super) fn open(path: &Path) -> Result<Self, BundleError> {
        let comps: Vec<Component> = path.components().collect();
        let Some(Component::Normal(name)) = comps.last() else {
            return Err(BundleError::BadName(path.into()));
        };
        let parent: PathBuf = comps[..comps.len() - 1].iter().collect();
        let parent_path = if parent.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            parent
        };
        let display: PathBuf = comps.iter().collect();
        let cparent = cstr(parent_path.as_os_str()).map_err(io_at(&parent_path))?;
        // SAFETY: open(2) of a NUL-terminated path; the fd is owned right away.
        let pfd = unsafe {
            libc::open(
                cparent.as_ptr(),
                libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if pfd < 0 {
            return Err(last_os(&parent_path));
        }
        // SAFETY: a fresh, valid fd.
        let parent = unsafe { OwnedFd::from_raw_fd(pfd) };
        let cname = cstr(name).map_err(io_at(&display))?;
        // SAFETY: mkdirat relative to an open directory.
        let created = unsafe { libc::mkdirat(parent.as_raw_fd(), cname.as_ptr(), 0o700) } == 0;
        if !created && io::Error::last_os_error().raw_os_error() != Some(libc::EEXIST) {
            return Err(last_os(&display));
        }
        // SAFETY: openat relative to an open directory; O_NOFOLLOW refuses a symlink.
        let dfd = unsafe {
            libc::openat(
                parent.as_raw_fd(),
                cname.as_ptr(),
                libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if dfd < 0 {
            return Err(refused(
                &parent,
                &cname,
                display,
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: a fresh, valid fd.
        let fd = unsafe { OwnedFd::from_raw_fd(dfd) };
        let dir = Self {
            fd,
            parent,
            name: name.to_os_string(),
            path: display,
        };
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat of our own fd with a valid buffer.
        if unsafe { libc::fstat(dir.fd.as_raw_fd(), &mut st) } != 0 {
            return Err(last_os(&dir.path));
        }
        crate::report::own_dir::check_owner(&dir.path, st.st_uid, st.st_mode, false)?;
        if !created && !dir.is_empty()? {
            return Err(BundleError::NotEmpty(dir.path));
        }
        // SAFETY: fchmod of our own fd.
        if unsafe { libc::fchmod(dir.fd.as_raw_fd(), 0o700) } != 0 {
            return Err(last_os(&dir.path));
        }
        Ok(dir)
    }

    pub(super) fn is_empty(&self) -> Result<bool, BundleError> {
        // SAFETY: dup of our own fd; fdopendir takes ownership of the copy.
        let copy = unsafe { libc::dup(self.fd.as_raw_fd()) };
        if copy < 0 {
            return Err(last_os(&self.path));
        }
        // SAFETY: a valid directory fd.
        let d = unsafe { libc::fdopendir(copy) };
        if d.is_null() {
            // SAFETY: fdopendir failed and left the fd to us.
            unsafe { libc::close(copy) };
            return Err(last_os(&self.path));
        }
        let mut empty = true;
        loop {
            // SAFETY: a valid DIR stream.
            let e = unsafe { libc::readdir(d) };
            if e.is_null() {
                break;
            }
            // SAFETY: readdir returns a valid entry with a NUL-terminated name.
            let name = unsafe { CStr::from_ptr((*e).d_name.as_ptr()) }.to_bytes();
            if name != b"." && name != b".." {
                empty = false;
                break;
            }
        }
        // SAFETY: closes the stream and the copied fd.
        unsafe { libc::closedir(d) };
        Ok(empty)
    }

    pub(super) fn display(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// A new file in the directory: 0600, never through a symlink, never over a file.
    pub(super) fn create(&self, name: &str) -> Result<File, BundleError> {
        create_at(&self.fd, name).map_err(io_at(&self.display(name)))
    }

    pub(super) fn unlink(&self, name: &str) -> io::Result<()> {
        let c = cstr(OsStr::new(name))?;
        // SAFETY: unlinkat relative to our own directory fd.
        if unsafe { libc::unlinkat(self.fd.as_raw_fd(), c.as_ptr(), 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Replaces a report atomically: a crash leaves the old one or the new one, never half.
    pub(super) fn replace(&self, name: &str, bytes: &[u8]) -> Result<(), BundleError> {
        let tmp = format!("{name}.tmp");
        let _ = self.unlink(&tmp);
        let written = self.create(&tmp).and_then(|mut f| {
            f.write_all(bytes)
                .and_then(|_| f.sync_data())
                .map_err(io_at(&self.display(&tmp)))
        });
        if let Err(e) = written {
            // Half a report is worse than none: it would be read as the whole.
            let _ = self.unlink(&tmp);
            return Err(e);
        }
        let (from, to) = (
            cstr(OsStr::new(&tmp)).map_err(io_at(&self.display(&tmp)))?,
            cstr(OsStr::new(name)).map_err(io_at(&self.display(name)))?,
        );
        // SAFETY: renameat within our own directory fd.
        let r = unsafe {
            libc::renameat(
                self.fd.as_raw_fd(),
                from.as_ptr(),
                self.fd.as_raw_fd(),
                to.as_ptr(),
            )
        };
        if r != 0 {
            let e = last_os(&self.display(name));
            let _ = self.unlink(&tmp);
            return Err(e);
        }
        Ok(())
    }
}

pub(super) fn create_at(dir: &OwnedFd, name: &str) -> io::Result<File> {
    let c = cstr(OsStr::new(name))?;
    // SAFETY: openat relative to an open directory; the fd is owned right away.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh, valid fd.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Why `name` under `parent` could not be opened as a directory: a symlink, something
/// else, or the error itself.
fn refused(parent: &OwnedFd, name: &CStr, display: PathBuf, err: io::Error) -> BundleError {
    // SAFETY: a zeroed stat is a valid buffer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstatat with a valid buffer, not following the last component.
    let lst = unsafe {
        libc::fstatat(
            parent.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if lst == 0 && st.st_mode & libc::S_IFMT == libc::S_IFLNK {
        BundleError::Symlink(display)
    } else if lst == 0 && st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        BundleError::NotADirectory(display)
    } else {
        BundleError::Io {
            path: display,
            source: err,
        }
    }
}
