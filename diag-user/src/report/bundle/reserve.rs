//! Room kept on the disk for a bundle's reports, given back when the disk is full.

use std::{fs::File, os::fd::AsRawFd};

use super::RESERVE_STEP;

/// Allocates `len` bytes of `f` on the disk (all or nothing on the usual file systems).
pub(super) fn allocate(f: &File, len: u64) -> bool {
    let Ok(len) = libc::off_t::try_from(len) else {
        return false;
    };
    // SAFETY: fallocate on a descriptor we own.
    unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, len) == 0 }
}

/// Disk space set aside in a file, lent to reports that must be written when the disk is
/// full, and taken back afterwards as far as there is room.
pub struct Reserve {
    file: File,
    want: u64,
    /// Given back by [`Reserve::release`] and not yet taken back.
    lent: u64,
}

impl Reserve {
    /// Sets aside `want` bytes in `file` (new or truncated), if the file system has them.
    pub fn new(file: File, want: u64) -> Self {
        let mut r = Self {
            file,
            want,
            lent: 0,
        };
        r.refill();
        r
    }

    /// The bytes it holds now.
    pub fn held(&self) -> u64 {
        self.file.metadata().map_or(0, |m| m.len())
    }

    /// Gives all of it back to the file system.
    pub fn release(&mut self) {
        self.lent += self.held();
        let _ = self.file.set_len(0);
    }

    /// Grows it to `len` bytes, or leaves it as it was.
    fn try_to(&mut self, len: u64) -> bool {
        let before = self.held();
        if allocate(&self.file, len) {
            return true;
        }
        // ext4 may keep what it allocated before running out.
        let _ = self.file.set_len(before);
        false
    }

    /// Makes it whole if the file system has room; else takes back as much of what it lent
    /// as is free now (the reports written into that room keep their part), never more: a
    /// reserve that could not be made is not made of the last free bytes. Whether it is
    /// whole.
    pub fn refill(&mut self) -> bool {
        if self.try_to(self.want) {
            self.lent = 0;
            return true;
        }
        let mut step = self.lent.min(self.want.saturating_sub(self.held()));
        while step >= RESERVE_STEP {
            if self.try_to(self.held() + step) {
                self.lent = self.lent.saturating_sub(step);
                step = step.min(self.lent);
            } else {
                step /= 2;
            }
        }
        self.lent = 0;
        self.held() >= self.want
    }
}
