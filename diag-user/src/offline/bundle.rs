//! Reading a bundle: events.ndjson line by line (with serde, into the typed records), and
//! the entries of a packed bundle, each as a stream of its own.

use std::{
    io::{self, BufRead, BufReader, Read},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use serde_json::Value;

use crate::model::{schema_of, Record, SCHEMA_VERSION};

/// The longest line of events.ndjson accepted (a summary of thousands of taps is long).
const MAX_LINE: usize = 64 << 20;

/// The entry of a tar stream whose file name is `want`, as a reader of its bytes. Walks
/// the 512-byte headers itself (skipping the other entries' data) so that the reader can
/// own the stream: two entries of one archive are read side by side from two streams.
pub(super) fn tar_entry<R: Read + 'static>(
    mut inner: R,
    want: &str,
) -> io::Result<Option<Box<dyn Read>>> {
    let mut long_name: Option<Vec<u8>> = None;
    loop {
        let mut header = [0u8; 512];
        if !read_full(&mut inner, &mut header)? || header.iter().all(|&b| b == 0) {
            return Ok(None);
        }
        let h = tar::Header::from_byte_slice(&header);
        let size = h.entry_size()?;
        let padded = size.div_ceil(512) * 512;
        let kind = h.entry_type();
        if kind.is_gnu_longname() {
            // The next entry's name, too long for its header.
            if size > 64 * 1024 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a tar name longer than 64 KiB",
                ));
            }
            let mut n = vec![0u8; padded as usize];
            read_full(&mut inner, &mut n)?;
            n.truncate(size as usize);
            while n.last() == Some(&0) {
                n.pop();
            }
            long_name = Some(n);
            continue;
        }
        let name = long_name
            .take()
            .unwrap_or_else(|| h.path_bytes().into_owned());
        let file = name.rsplit(|&b| b == b'/').next().unwrap_or(&[]);
        if file == want.as_bytes() && kind.is_file() {
            return Ok(Some(Box::new(inner.take(size))));
        }
        io::copy(&mut (&mut inner).take(padded), &mut io::sink())?;
    }
}

/// Fills `buf`; false at a clean end of stream before any byte.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A reader that fails once more than its limit came out of it, and says so in `tripped`
/// (shared by the readers of one archive).
pub(super) struct Capped<R> {
    pub(super) inner: R,
    pub(super) left: u64,
    pub(super) tripped: Arc<AtomicBool>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.tripped.store(true, Ordering::Relaxed);
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "expands past the decompression limit",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// events.ndjson, line by line: the records that describe taps (frames are re-derived
/// from frames.pcapng; verdicts are re-made).
pub(super) struct EventLines {
    src: BufReader<Box<dyn Read>>,
    name: String,
    line: usize,
    offset: u64,
    buf: Vec<u8>,
    /// Said once: the file is in a newer record format.
    newer_said: bool,
    /// What the reader noticed on the way (besides where it stopped).
    pub(super) notes: Vec<String>,
}

impl EventLines {
    pub(super) fn new(src: Box<dyn Read>, name: String) -> Self {
        Self {
            src: BufReader::with_capacity(64 * 1024, src),
            name,
            line: 0,
            offset: 0,
            buf: Vec::new(),
            newer_said: false,
            notes: Vec::new(),
        }
    }

    /// The next tap record; `Err` with a note where the file stops being readable (a line
    /// cut short by a full disk or a crash, or a damaged one): what came before counts.
    pub(super) fn next_record(&mut self) -> Result<Option<Record>, String> {
        loop {
            self.buf.clear();
            let start = self.offset;
            let n = (&mut self.src)
                .take(MAX_LINE as u64 + 1)
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| format!("{} stops at byte offset {start}: {e}", self.name))?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            self.offset += n as u64;
            let complete = self.buf.last() == Some(&b'\n');
            if !complete && n > MAX_LINE {
                return Err(format!(
                    "{} stops at line {} (byte offset {start}): a line longer than {MAX_LINE} bytes",
                    self.name, self.line
                ));
            }
            let text = String::from_utf8_lossy(&self.buf);
            let text = text.trim_end();
            if text.is_empty() {
                continue;
            }
            let parsed = serde_json::from_str::<Value>(text)
                .map_err(|e| e.to_string())
                .and_then(|v| self.tap_record(v));
            match parsed {
                Ok(Some(r)) => return Ok(Some(r)),
                Ok(None) => continue,
                Err(what) if !complete => {
                    return Err(format!(
                        "{} ends with an incomplete line {} at byte offset {start} ({what}): the \
                         recording was cut short (a full disk or a crash); everything before it \
                         was read",
                        self.name, self.line
                    ))
                }
                Err(what) => {
                    return Err(format!(
                        "{} stops at line {} (byte offset {start}), which is not a tapwatch \
                         record ({what}); everything before it was read",
                        self.name, self.line
                    ))
                }
            }
        }
    }

    /// A record of the kinds that describe taps, or `None` for those re-derived (frames come
    /// from frames.pcapng, verdicts are re-made) and for kinds newer than this version.
    fn tap_record(&mut self, v: Value) -> Result<Option<Record>, String> {
        let schema = schema_of(&v);
        if schema > SCHEMA_VERSION && !self.newer_said {
            self.newer_said = true;
            self.notes.push(format!(
                "{} was written by a newer tapwatch (record format {schema}, this one reads \
                 {SCHEMA_VERSION}): what this version knows is used",
                self.name
            ));
        }
        let wanted = matches!(
            v.get("type").and_then(Value::as_str),
            Some(
                "attached"
                    | "detached"
                    | "mac_change"
                    | "mode_change"
                    | "renamed"
                    | "identity"
                    | "stats"
                    | "summary"
            )
        );
        if !wanted {
            return if v.get("type").is_some_and(Value::is_string) {
                Ok(None)
            } else {
                Err("no \"type\"".into())
            };
        }
        serde_json::from_value(v)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}
