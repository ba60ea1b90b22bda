//! The one rule for a directory tapwatch writes bundles into (and may remove from): a
//! directory, never a symlink, the user's own, and, where tapwatch also removes what it
//! finds there, writable by no one else. A directory another local user controls could be
//! turned against a run as root: its files swapped for links to the host's.

use std::{
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("{0}: not a directory")]
    NotADirectory(PathBuf),
    #[error("{0}: a symbolic link: give the directory it points to")]
    Symlink(PathBuf),
    #[error(
        "{path}: owned by uid {owner}, not by this user (uid {me}): choose a directory of your own"
    )]
    NotOwner { path: PathBuf, owner: u32, me: u32 },
    #[error("{0}: others may write to it, so a local user could swap what tapwatch writes and removes there: `chmod go-w` it or choose another")]
    Writable(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether a directory of owner `uid` and permission bits `mode` may take tapwatch's
/// bundles (`private`: tapwatch also removes what it finds there).
pub fn check_owner(path: &Path, uid: u32, mode: u32, private: bool) -> Result<(), DirError> {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if uid != me {
        return Err(DirError::NotOwner {
            path: path.to_path_buf(),
            owner: uid,
            me,
        });
    }
    if private && mode & 0o022 != 0 {
        return Err(DirError::Writable(path.to_path_buf()));
    }
    Ok(())
}

/// Makes `path` (0700, with its parents) when it is missing; refuses it when it breaks the
/// rule.
pub fn ensure(path: &Path, private: bool) -> Result<(), DirError> {
    let io = |source| DirError::Io {
        path: path.to_path_buf(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io)?,
        Err(e) => return Err(io(e)),
        Ok(_) => {}
    }
    let m = std::fs::symlink_metadata(path).map_err(io)?;
    if m.file_type().is_symlink() {
        return Err(DirError::Symlink(path.to_path_buf()));
    }
    if !m.is_dir() {
        return Err(DirError::NotADirectory(path.to_path_buf()));
    }
    check_owner(path, m.uid(), m.permissions().mode(), private)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        let dir = std::env::temp_dir().join(format!("tw-owndir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let made = dir.join("a/b");
        ensure(&made, true).unwrap();
        let mode = std::fs::metadata(&made).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(ensure(&made, true), Err(DirError::Writable(_))));
        ensure(&made, false).unwrap();
        let link = dir.join("link");
        std::os::unix::fs::symlink(&made, &link).unwrap();
        assert!(matches!(ensure(&link, false), Err(DirError::Symlink(_))));
        let file = dir.join("file");
        std::fs::write(&file, b"").unwrap();
        assert!(matches!(
            ensure(&file, false),
            Err(DirError::NotADirectory(_))
        ));
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        let other = check_owner(&made, me + 1, 0o700, false).unwrap_err();
        assert!(other.to_string().contains("choose a directory of your own"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
