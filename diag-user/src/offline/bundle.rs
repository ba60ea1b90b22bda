//! Reading a bundle: events.ndjson line by line (with serde, into the typed records), and
//! the entries of a packed bundle, each as a stream of its own.

use std::{
    io::{self, BufRead, BufReader, Read},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use serde::{de::IgnoredAny, Deserialize};

use crate::model::{Record, SCHEMA_VERSION};

/// The longest line of events.ndjson accepted (a summary of thousands of taps is long).
const MAX_LINE: usize = 64 << 20;

/// The most JSON values one line of events.ndjson, or host.json, may hold. Reading a
/// record keeps each of its values as a node of up to some 90 bytes however short it is
/// in the text (serde buffers tagged and flattened records whole), so this, beside the
/// length, bounds the memory one record takes: about 100 MB. A summary row holds about
/// 50 values: a summary of some 20,000 taps fits.
pub(super) const MAX_VALUES: usize = 1 << 20;

/// Whether `json` holds at most `max` values, counted as the tokens that start one
/// (`,` `:` `[` `{` outside strings, plus the first): an upper bound, found in one pass
/// without parsing.
pub(super) fn within_values(json: &[u8], max: usize) -> bool {
    let (mut n, mut in_string, mut escaped) = (1usize, false, false);
    for &b in json {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b',' | b':' | b'[' | b'{' => {
                    n += 1;
                    if n > max {
                        return false;
                    }
                }
                _ => {}
            }
        }
    }
    true
}

/// What a line says of itself, read before the rest (which this skips, keeping nothing).
#[derive(Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    schema: Option<Schema>,
}

/// The record format's version; anything but a number reads as absent (version 1).
#[derive(Deserialize)]
#[serde(untagged)]
enum Schema {
    Version(u64),
    Other(IgnoredAny),
}

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
        // A size field in base 256 may claim up to 2^64 bytes.
        let padded = size.checked_next_multiple_of(512).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a tar entry claims {size} bytes"),
            )
        })?;
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
    max_line: usize,
    max_values: usize,
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
            max_line: MAX_LINE,
            max_values: MAX_VALUES,
            line: 0,
            offset: 0,
            buf: Vec::new(),
            newer_said: false,
            notes: Vec::new(),
        }
    }

    /// The same with other limits (for tests near them).
    #[cfg(test)]
    fn with_limits(src: Box<dyn Read>, max_line: usize, max_values: usize) -> Self {
        Self {
            max_line,
            max_values,
            ..Self::new(src, "events.ndjson".into())
        }
    }

    /// The next tap record and the length of its line; `Err` with a note where the file
    /// stops being readable (a line cut short by a full disk or a crash, or a damaged
    /// one): what came before counts.
    pub(super) fn next_record(&mut self) -> Result<Option<(Record, usize)>, String> {
        loop {
            self.buf.clear();
            let start = self.offset;
            let n = (&mut self.src)
                .take(self.max_line as u64 + 1)
                .read_until(b'\n', &mut self.buf)
                .map_err(|e| format!("{} stops at byte offset {start}: {e}", self.name))?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            self.offset += n as u64;
            let complete = self.buf.last() == Some(&b'\n');
            if !complete && n > self.max_line {
                return Err(format!(
                    "{} stops at line {} (byte offset {start}): a line longer than {} bytes",
                    self.name, self.line, self.max_line
                ));
            }
            let text = String::from_utf8_lossy(&self.buf);
            let text = text.trim_end();
            if text.is_empty() {
                continue;
            }
            let parsed = if within_values(text.as_bytes(), self.max_values) {
                tap_record(text, &mut self.newer_said, &mut self.notes, &self.name)
            } else {
                Err(format!("more than {} JSON values", self.max_values))
            };
            match parsed {
                Ok(Some(r)) => return Ok(Some((r, n))),
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
}

/// A record of the kinds that describe taps (and the lab's truth and nudges, which the
/// report page shows), or `None` for those re-derived (frames come from frames.pcapng,
/// verdicts are re-made) and for kinds newer than this version. Only
/// the line's type and version are read of the others.
fn tap_record(
    text: &str,
    newer_said: &mut bool,
    notes: &mut Vec<String>,
    name: &str,
) -> Result<Option<Record>, String> {
    let head: Head = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let schema = match head.schema {
        Some(Schema::Version(v)) => v.min(u32::MAX as u64) as u32,
        _ => 1,
    };
    if schema > SCHEMA_VERSION && !*newer_said {
        *newer_said = true;
        notes.push(format!(
            "{name} was written by a newer tapwatch (record format {schema}, this one reads \
             {SCHEMA_VERSION}): what this version knows is used"
        ));
    }
    let Some(kind) = head.kind else {
        return Err("no \"type\"".into());
    };
    let wanted = matches!(
        &*kind,
        "attached"
            | "detached"
            | "mac_change"
            | "mode_change"
            | "renamed"
            | "identity"
            | "stats"
            | "summary"
            | "lab"
            | "nudge"
    );
    if !wanted {
        return Ok(None);
    }
    if text.contains("\"netns\"") {
        let mut v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        crate::model::netns::join_names(&mut v);
        return serde_json::from_value(v)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const ATTACHED: &str = r#"{"type":"attached","ts":"2026-11-22T09:07:04.821526Z","ifname":"tapA","ifindex":2,"mac":"fe:16:3e:aa:bb:cc","mode":"routed","backend":"ebpf","mtu":1500,"schema":2}"#;
    const STATS: &str = r#"{"type":"stats","ts":"2026-11-22T09:07:05.821526Z","taps":[{"ifname":"tapA","from_vm_frames":2,"from_vm_bytes":120,"to_vm_frames":0,"to_vm_bytes":0,"dst_mismatch_frames":0,"rarp_frames":2,"garp_frames":0,"arp_requests":0,"arp_replies":0,"events_lost":0}],"schema":2}"#;
    const FRAME: &str = r#"{"type":"frame","ts":"2026-11-22T09:07:04.825439Z","ifname":"tapA","direction":"from_vm","kind":"rarp","src_mac":"fa:16:3e:aa:bb:cc","dst_mac":"ff:ff:ff:ff:ff:ff","len":60,"schema":2}"#;

    fn lines(text: impl Into<Vec<u8>>) -> EventLines {
        EventLines::new(
            Box::new(io::Cursor::new(text.into())),
            "events.ndjson".into(),
        )
    }

    /// Every record up to where reading stops, and why it stopped (`None`: the end).
    fn read_all(mut l: EventLines) -> (Vec<Record>, Option<String>) {
        let mut out = Vec::new();
        loop {
            match l.next_record() {
                Ok(Some((r, _))) => out.push(r),
                Ok(None) => return (out, None),
                Err(e) => return (out, Some(e)),
            }
        }
    }

    /// A stats record carrying `n` more values in a field no version writes: what a record
    /// costs to read is in its values, not its bytes.
    fn stats_with_values(n: usize) -> String {
        let extra = vec![r#"{"a":0}"#; n / 3].join(",");
        STATS.replacen(r#""schema":2"#, &format!(r#""x":[{extra}],"schema":2"#), 1)
    }

    #[test]
    fn the_tap_records_are_read_and_the_rest_skipped() {
        let text = format!("{ATTACHED}\n{FRAME}\n\n{STATS}\n");
        let (recs, stop) = read_all(lines(text));
        assert_eq!(stop, None);
        assert!(matches!(
            recs[..],
            [Record::Attached { .. }, Record::Stats { .. }]
        ));
    }

    /// Each value costs tens of bytes to hold however short its text: a line of a million
    /// small values is refused where reading stops, one just under the limit is read.
    #[test]
    fn a_line_of_more_values_than_the_limit_stops_the_reading() {
        let near = stats_with_values(MAX_VALUES - 100);
        let (recs, stop) = read_all(lines(format!("{ATTACHED}\n{near}\n")));
        assert_eq!((recs.len(), stop), (2, None));
        let over = stats_with_values(MAX_VALUES + 100);
        let (recs, stop) = read_all(lines(format!("{ATTACHED}\n{over}\n{STATS}\n")));
        assert_eq!(recs.len(), 1);
        let stop = stop.unwrap();
        assert!(
            stop.contains("stops at line 2") && stop.contains("more than 1048576 JSON values"),
            "{stop}"
        );
    }

    #[test]
    fn values_are_counted_outside_strings_only() {
        assert!(within_values(br#"{"a":[1,2],"b":"x,y:[{"}"#, 7));
        assert!(!within_values(br#"{"a":[1,2],"b":"x,y:[{"}"#, 6));
        // An escaped quote does not end the string.
        assert!(within_values(br#"["a\",:,:,:", 1]"#, 3));
        assert!(within_values(b"", 1));
    }

    /// What serde_json refuses past its recursion limit: never a stack overflow.
    #[test]
    fn deep_nesting_is_refused() {
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let n = 100_000;
            let deep = format!(
                "{{\"type\":\"stats\",\"x\":{}0{}}}",
                open.repeat(n),
                close.repeat(n)
            );
            let (recs, stop) = read_all(lines(format!("{ATTACHED}\n{deep}\n")));
            assert_eq!(recs.len(), 1);
            let stop = stop.unwrap();
            assert!(stop.contains("recursion limit"), "{stop}");
        }
    }

    /// A line longer than the limit stops the reading without holding more than it.
    #[test]
    fn a_line_past_the_length_limit_stops_the_reading() {
        let long = format!("{ATTACHED}\n{}\n{STATS}\n", " ".repeat(5000));
        let (recs, stop) = read_all(EventLines::with_limits(
            Box::new(io::Cursor::new(long)),
            4096,
            MAX_VALUES,
        ));
        assert_eq!(recs.len(), 1);
        assert!(stop.unwrap().contains("a line longer than 4096 bytes"));
    }

    /// Lines a damaged or hostile events.ndjson may hold.
    fn line() -> impl Strategy<Value = String> {
        let record = prop_oneof![Just(ATTACHED), Just(STATS), Just(FRAME)];
        prop_oneof![
            // A record cut anywhere.
            (record.clone(), any::<prop::sample::Index>())
                .prop_map(|(r, at)| r[..at.index(r.len() + 1)].to_string()),
            // A record with bytes changed.
            (
                record,
                prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6)
            )
                .prop_map(|(r, flips)| {
                    let mut b = r.as_bytes().to_vec();
                    for (at, v) in flips {
                        let i = at.index(b.len());
                        b[i] = v;
                    }
                    String::from_utf8_lossy(&b).into_owned()
                }),
            // Deep nesting, wide arrays, long strings, near the test's limits.
            (1usize..2000).prop_map(|n| format!("{}{}", "[".repeat(n), "]".repeat(n))),
            (0usize..600).prop_map(|n| format!(
                r#"{{"type":"stats","ts":"2026-11-22T09:07:05Z","taps":[{}]}}"#,
                vec!["0"; n].join(",")
            )),
            (0usize..5000).prop_map(|n| format!(r#"{{"type":"{}"}}"#, "x".repeat(n))),
            ".{0,200}",
        ]
    }

    /// A tar header: `name`, `size` as the size field's 12 bytes, `kind` as its type.
    fn tar_header(name: &[u8], size: [u8; 12], kind: u8) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        h[124..136].copy_from_slice(&size);
        h[156] = kind;
        h
    }

    /// Octal, as tar writes a size up to 8 GiB.
    fn octal(n: u64) -> [u8; 12] {
        let mut f = [0u8; 12];
        f[..11].copy_from_slice(format!("{n:011o}").as_bytes());
        f
    }

    /// A size field in base 256 (GNU) may claim up to 2^64 - 1 bytes: refused as such,
    /// never an overflow.
    #[test]
    fn a_tar_entry_claiming_any_size_is_read_or_refused() {
        let mut huge = [0xffu8; 12];
        huge[0] = 0x80;
        let tar = [tar_header(b"b/other", huge, b'0').as_slice(), &[0; 1024]].concat();
        let err = tar_entry(io::Cursor::new(tar), "events.ndjson")
            .err()
            .unwrap();
        assert!(err
            .to_string()
            .contains("a tar entry claims 18446744073709551615 bytes"));
        // An entry that claims more than the archive holds ends where the archive does.
        let tar = [
            tar_header(b"b/events.ndjson", octal(1 << 30), b'0').as_slice(),
            b"{}",
        ]
        .concat();
        let mut got = Vec::new();
        let mut entry = tar_entry(io::Cursor::new(tar), "events.ndjson")
            .unwrap()
            .unwrap();
        entry.read_to_end(&mut got).unwrap();
        assert_eq!(got, b"{}");
    }

    /// A gzip stream that expands past its limit trips it, in bounded memory; one that
    /// expands to exactly the limit is read.
    #[test]
    fn a_decompression_bomb_trips_its_limit() {
        use std::io::Write as _;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![0u8; 4 << 20]).unwrap();
        let bomb = gz.finish().unwrap();
        let read = |left: u64| {
            let tripped = Arc::new(AtomicBool::new(false));
            let mut capped = Capped {
                inner: flate2::read::GzDecoder::new(&bomb[..]),
                left,
                tripped: tripped.clone(),
            };
            let n = io::copy(&mut capped, &mut io::sink());
            (n.map_err(|e| e.kind()), tripped.load(Ordering::Relaxed))
        };
        assert_eq!(read(4 << 20), (Ok(4 << 20), false));
        assert_eq!(
            read((4 << 20) - 1),
            (Err(io::ErrorKind::FileTooLarge), true)
        );
    }

    /// Tar headers as a damaged or hostile archive holds them.
    fn tar_part() -> impl Strategy<Value = Vec<u8>> {
        let name = prop_oneof![
            Just(b"b/events.ndjson".to_vec()),
            Just(b"events.ndjson".to_vec()),
            Just(b"b/frames.pcapng".to_vec()),
            prop::collection::vec(any::<u8>(), 0..100),
        ];
        let size = prop_oneof![
            (0u64..2048).prop_map(octal),
            // Base 256, up to the largest sizes.
            prop_oneof![any::<u64>(), (u64::MAX - 1024)..=u64::MAX].prop_map(|n| {
                let mut f = [0u8; 12];
                f[0] = 0x80;
                f[4..].copy_from_slice(&n.to_be_bytes());
                f
            }),
            any::<[u8; 12]>(),
        ];
        let kind = prop_oneof![Just(b'0'), Just(b'L'), Just(b'x'), Just(b'5'), any::<u8>()];
        (
            name,
            size,
            kind,
            prop::collection::vec(any::<u8>(), 0..1100),
        )
            .prop_map(|(name, size, kind, data)| {
                [tar_header(&name, size, kind).as_slice(), &data].concat()
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Whatever its headers claim, finding an entry ends (found, absent or refused),
        /// never panics, and the entry found ends within the archive.
        #[test]
        fn any_tar_archive_is_walked_to_an_end(
            parts in prop::collection::vec(tar_part(), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut tar = parts.concat();
            tar.truncate(cut.index(tar.len() + 1));
            let len = tar.len() as u64;
            if let Ok(Some(mut entry)) = tar_entry(io::Cursor::new(tar), "events.ndjson") {
                let n = io::copy(&mut entry, &mut io::sink()).unwrap_or(0);
                prop_assert!(n <= len);
            }
        }

        /// Any bytes as a gzip stream: an error or what they expand to, never a panic, and
        /// never past the limit.
        #[test]
        fn any_gzip_stream_is_read_within_its_limit(
            bytes in prop::collection::vec(any::<u8>(), 0..512),
            gzip_header in any::<bool>(),
        ) {
            let mut b = if gzip_header { vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3] } else { Vec::new() };
            b.extend_from_slice(&bytes);
            let mut capped = Capped {
                inner: flate2::read::GzDecoder::new(&b[..]),
                left: 4096,
                tripped: Arc::new(AtomicBool::new(false)),
            };
            if let Ok(n) = io::copy(&mut capped, &mut io::sink()) {
                prop_assert!(n <= 4096);
            }
        }

        /// Whatever the lines, reading ends (at the end or at a line it cannot read), never
        /// panics, and never returns more records than there are lines.
        #[test]
        fn any_events_file_is_read_to_its_end_or_a_stop(
            ls in prop::collection::vec(line(), 0..12),
            tail in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let mut text = ls.join("\n").into_bytes();
            text.extend_from_slice(&tail);
            let reader = EventLines::with_limits(Box::new(io::Cursor::new(text)), 4096, 512);
            let (recs, stop) = read_all(reader);
            prop_assert!(recs.len() <= ls.len() + 1);
            if let Some(stop) = stop {
                prop_assert!(stop.starts_with("events.ndjson "), "{}", stop);
            }
        }
    }
}
