//! Reading captures of tap traffic: pcap or pcapng, Ethernet or Linux cooked headers
//! (`tcpdump -i any`). Every frame comes out as an Ethernet frame with what the capture
//! knew about it; a damaged file is an error naming the byte offset, never a panic.

use std::time::Duration;

use chrono::DateTime;
use pcap_file::{
    pcap::PcapParser,
    pcapng::{
        blocks::{
            enhanced_packet::EnhancedPacketOption,
            interface_description::InterfaceDescriptionOption,
        },
        Block, PcapNgParser,
    },
    DataLink, PcapError,
};

use crate::model::clock::Ts;
use diag_common::Direction;

/// `sll_pkttype` of a frame the host sent (to the VM, on a tap).
const PACKET_OUTGOING: u16 = 4;

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("not a pcap or pcapng file (it starts with {0:02x?})")]
    NotACapture(Vec<u8>),
    #[error("damaged capture at byte offset {offset}: {what}")]
    Corrupt { offset: usize, what: String },
    #[error("link type {0:?} is not supported: capture on the tap (Ethernet) or with -i any (Linux cooked)")]
    LinkType(DataLink),
    #[error("damaged capture at byte offset {offset}: it ends in the middle of a block (cut short: a full disk, a crash, or the capture was still being written)")]
    Truncated { offset: u64 },
    #[error("cannot read at byte offset {offset}: {source}")]
    Read {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub ts: Ts,
    /// The interface it was captured on, when the capture says (pcapng names, SLL2
    /// ifindexes); else "capture".
    pub ifname: String,
    /// An Ethernet frame. For cooked captures the header is rebuilt: the destination MAC
    /// is then unknown (zeros) and `foreign` carries the kernel's verdict instead.
    pub data: Vec<u8>,
    /// The whole frame's length as an Ethernet frame (`data` may be cut short).
    pub orig_len: u32,
    /// Known from pcapng flags or a cooked header's packet type.
    pub direction: Option<Direction>,
    /// The kernel's packet type (`sll_pkttype`: PACKET_HOST, PACKET_OTHERHOST…), from a
    /// cooked header: its verdict on the destination MAC, which the header lacks.
    pub pkttype: Option<u16>,
}

fn corrupt(offset: usize, e: PcapError) -> CaptureError {
    CaptureError::Corrupt {
        offset,
        what: e.to_string(),
    }
}

fn ts_of(d: Duration) -> Ts {
    Ts(DateTime::from_timestamp(d.as_secs() as i64, d.subsec_nanos()).unwrap_or_default())
}

/// The longest block or record a reader accepts: far past any real snap length, and the
/// most memory one block may take.
pub const MAX_BLOCK: usize = 16 << 20;

/// Which file format, and its parser's state.
enum Format {
    Pcap(PcapParser),
    PcapNg(PcapNgParser),
}

/// Reads a capture block by block from any `Read`, holding at most one block (plus a read
/// chunk) in memory whatever the file's size.
pub struct CaptureReader<R> {
    src: R,
    buf: Vec<u8>,
    /// Bytes of `buf` already parsed.
    pos: usize,
    /// File offset of `buf[0]`.
    base: u64,
    eof: bool,
    format: Format,
}

const CHUNK: usize = 64 * 1024;

impl<R: std::io::Read> CaptureReader<R> {
    /// Reads the file header; errs when it is not a pcap or pcapng capture.
    pub fn new(src: R) -> Result<Self, CaptureError> {
        let mut r = Self {
            src,
            buf: Vec::new(),
            pos: 0,
            base: 0,
            eof: false,
            format: Format::Pcap(PcapParser::new(&PCAP_STUB).expect("a valid header").1),
        };
        // Enough for either file header.
        while r.buf.len() < 4 && !r.eof {
            r.fill()?;
        }
        let format = loop {
            let head = &r.buf[..];
            let parsed = match head.get(..4) {
                Some([0x0a, 0x0d, 0x0d, 0x0a]) => PcapNgParser::new(head)
                    .map(|(rest, p)| (head.len() - rest.len(), Format::PcapNg(p))),
                Some(
                    [0xd4, 0xc3, 0xb2, 0xa1]
                    | [0xa1, 0xb2, 0xc3, 0xd4]
                    | [0x4d, 0x3c, 0xb2, 0xa1]
                    | [0xa1, 0xb2, 0x3c, 0x4d],
                ) => PcapParser::new(head)
                    .map(|(rest, p)| (head.len() - rest.len(), Format::Pcap(p))),
                _ => {
                    return Err(CaptureError::NotACapture(
                        head.iter().take(4).copied().collect(),
                    ))
                }
            };
            match parsed {
                Ok((used, f)) => {
                    r.pos = used;
                    break f;
                }
                Err(PcapError::IncompleteBuffer) if !r.eof && r.buf.len() < MAX_BLOCK => {
                    r.fill()?
                }
                Err(PcapError::IncompleteBuffer) => {
                    return Err(CaptureError::Truncated { offset: 0 })
                }
                Err(e) => return Err(corrupt(0, e)),
            }
        };
        r.format = format;
        Ok(r)
    }

    /// Offset in the file of the next byte to parse.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    fn fill(&mut self) -> Result<(), CaptureError> {
        if self.pos > 0 && self.pos >= self.buf.len() / 2 {
            self.buf.drain(..self.pos);
            self.base += self.pos as u64;
            self.pos = 0;
        }
        let old = self.buf.len();
        self.buf.resize(old + CHUNK, 0);
        let n = loop {
            match self.src.read(&mut self.buf[old..]) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.buf.truncate(old);
                    return Err(CaptureError::Read {
                        offset: self.base + old as u64,
                        source: e,
                    });
                }
            }
        };
        self.buf.truncate(old + n);
        if n == 0 {
            self.eof = true;
        }
        Ok(())
    }

    /// The next frame; `None` at the end. A block cut short by the end of the file is
    /// [`CaptureError::Truncated`]; everything before it has been returned.
    pub fn next_packet(&mut self) -> Result<Option<Packet>, CaptureError> {
        loop {
            if self.pos == self.buf.len() {
                if self.eof {
                    return Ok(None);
                }
                self.fill()?;
                continue;
            }
            let offset = self.offset() as usize;
            let avail = &self.buf[self.pos..];
            let step = match &mut self.format {
                Format::Pcap(parser) => parser.next_packet(avail).map(|(rest, pkt)| {
                    let used = avail.len() - rest.len();
                    let link = parser.header().datalink;
                    let p = decode(link, &pkt.data, "capture", offset).map(|d| {
                        d.map(|(data, ifname, direction, pkttype)| Packet {
                            ts: ts_of(pkt.timestamp),
                            ifname,
                            orig_len: frame_len(pkt.orig_len, &pkt.data, &data),
                            data,
                            direction,
                            pkttype,
                        })
                    });
                    (used, p)
                }),
                Format::PcapNg(parser) => parser.next_block(avail).map(|(rest, block)| {
                    let used = avail.len() - rest.len();
                    (used, pcapng_packet(parser, block, offset))
                }),
            };
            match step {
                Ok((used, p)) => {
                    self.pos += used;
                    if let Some(p) = p? {
                        return Ok(Some(p));
                    }
                }
                Err(PcapError::IncompleteBuffer) => {
                    if self.eof {
                        return Err(CaptureError::Truncated {
                            offset: offset as u64,
                        });
                    }
                    if self.buf.len() - self.pos >= MAX_BLOCK {
                        return Err(CaptureError::Corrupt {
                            offset,
                            what: format!("a block longer than {MAX_BLOCK} bytes"),
                        });
                    }
                    self.fill()?;
                }
                Err(e) => return Err(corrupt(offset, e)),
            }
        }
    }
}

/// A pcap file header, for the placeholder parser before the real header is read.
const PCAP_STUB: [u8; 24] = [
    0xd4, 0xc3, 0xb2, 0xa1, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 1, 0, 0, 0,
];

/// The frame of a pcapng block, if it is a packet.
fn pcapng_packet(
    parser: &PcapNgParser,
    block: Block<'_>,
    offset: usize,
) -> Result<Option<Packet>, CaptureError> {
    let Block::EnhancedPacket(epb) = block else {
        return Ok(None);
    };
    let Some(idb) = parser.packet_interface(&epb) else {
        return Err(CaptureError::Corrupt {
            offset,
            what: format!("packet of unknown interface {}", epb.interface_id),
        });
    };
    let mut ifname = format!("if{}", epb.interface_id);
    // Timestamps count units of 10^-tsresol s (default microseconds); the parser hands
    // the raw count over as if it were nanoseconds.
    let mut resol = 6u32;
    for o in &idb.options {
        match o {
            InterfaceDescriptionOption::IfName(n) => ifname = n.to_string(),
            InterfaceDescriptionOption::IfTsResol(r) if *r <= 9 => resol = *r as u32,
            _ => {}
        }
    }
    let ns = epb
        .timestamp
        .as_nanos()
        .saturating_mul(10u128.pow(9 - resol));
    let ts = ts_of(Duration::from_nanos(ns.min(u64::MAX as u128) as u64));
    let flag_dir = epb.options.iter().find_map(|o| match o {
        EnhancedPacketOption::Flags(f) if f & 3 == 1 => Some(Direction::FromVm),
        EnhancedPacketOption::Flags(f) if f & 3 == 2 => Some(Direction::ToVm),
        _ => None,
    });
    Ok(
        decode(idb.linktype, &epb.data, &ifname, offset)?.map(
            |(data, name, direction, pkttype)| Packet {
                ts,
                ifname: name,
                orig_len: frame_len(epb.original_len, &epb.data, &data),
                data,
                direction: direction.or(flag_dir),
                pkttype,
            },
        ),
    )
}

/// Reads a whole capture in memory (tests and small inputs).
pub fn read(bytes: &[u8]) -> Result<Vec<Packet>, CaptureError> {
    let mut r = CaptureReader::new(bytes)?;
    let mut out = Vec::new();
    while let Some(p) = r.next_packet()? {
        out.push(p);
    }
    Ok(out)
}

type Decoded = Option<(Vec<u8>, String, Option<Direction>, Option<u16>)>;

/// The length of the whole frame as the VM wrote it, from a record's: a cooked header
/// (16 or 20 bytes) is longer than the Ethernet header that [`decode`] puts in its place.
fn frame_len(orig_len: u32, record: &[u8], frame: &[u8]) -> u32 {
    orig_len.saturating_sub(record.len().saturating_sub(frame.len()) as u32)
}

/// Turns a link-layer frame into an Ethernet frame plus what its header knew.
fn decode(
    link: DataLink,
    data: &[u8],
    ifname: &str,
    offset: usize,
) -> Result<Decoded, CaptureError> {
    let short = |need: usize| CaptureError::Corrupt {
        offset,
        what: format!(
            "cooked header needs {need} bytes, the frame has {}",
            data.len()
        ),
    };
    match link {
        DataLink::ETHERNET => Ok(Some((data.to_vec(), ifname.to_string(), None, None))),
        DataLink::LINUX_SLL => {
            // pkttype(2) hatype(2) halen(2) addr(8) protocol(2)
            let h = data.get(..16).ok_or_else(|| short(16))?;
            let pkttype = u16::from_be_bytes([h[0], h[1]]);
            Ok(cooked(
                pkttype,
                &h[6..12],
                [h[14], h[15]],
                &data[16..],
                ifname.to_string(),
            ))
        }
        DataLink::LINUX_SLL2 => {
            // protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) halen(1) addr(8)
            let h = data.get(..20).ok_or_else(|| short(20))?;
            let ifindex = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            Ok(cooked(
                h[10] as u16,
                &h[12..18],
                [h[0], h[1]],
                &data[20..],
                format!("if{ifindex}"),
            ))
        }
        other => Err(CaptureError::LinkType(other)),
    }
}

fn cooked(pkttype: u16, src: &[u8], proto: [u8; 2], payload: &[u8], ifname: String) -> Decoded {
    let mut f = Vec::with_capacity(14 + payload.len());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(src);
    f.extend_from_slice(&proto);
    f.extend_from_slice(payload);
    let direction = if pkttype == PACKET_OUTGOING {
        Direction::ToVm
    } else {
        Direction::FromVm
    };
    Some((f, ifname, Some(direction), Some(pkttype)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A pcap with one 60-byte Ethernet frame, written by pcap-file.
    fn tiny_pcap() -> Vec<u8> {
        use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
        let mut w = PcapWriter::with_header(Vec::new(), PcapHeader::default()).unwrap();
        let frame = crate::lab::frames::rarp_announce(
            crate::model::mac::MacAddr([0xfa, 0x16, 0x3e, 1, 2, 3]),
            None,
        );
        w.write_packet(&PcapPacket::new(
            Duration::from_micros(1_790_000_000_123_456),
            60,
            &frame,
        ))
        .unwrap();
        w.into_writer()
    }

    #[test]
    fn reads_pcap() {
        let p = read(&tiny_pcap()).unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].data.len(), 60);
        assert_eq!(p[0].ts.0.timestamp_micros(), 1_790_000_000_123_456);
    }

    #[test]
    fn truncated_file_names_the_offset() {
        let bytes = tiny_pcap();
        let cut = &bytes[..bytes.len() - 10];
        let err = read(cut).unwrap_err().to_string();
        assert!(err.contains("byte offset 24"), "{err}");
        assert!(read(b"hello world")
            .unwrap_err()
            .to_string()
            .contains("not a pcap"));
    }

    #[test]
    fn cooked_headers() {
        // SLL: outgoing (to the VM), ARP.
        let mut sll = vec![
            0, 4, 0, 1, 0, 6, 0xfe, 0x16, 0x3e, 1, 2, 3, 0, 0, 0x08, 0x06,
        ];
        sll.extend_from_slice(&[0u8; 28]);
        let (f, _, dir, pkttype) = decode(DataLink::LINUX_SLL, &sll, "any", 0)
            .unwrap()
            .unwrap();
        assert_eq!((dir, pkttype), (Some(Direction::ToVm), Some(4)));
        assert_eq!(&f[6..14], &[0xfe, 0x16, 0x3e, 1, 2, 3, 0x08, 0x06]);
        // SLL2: PACKET_OTHERHOST on ifindex 7.
        let mut sll2 = vec![
            0x08, 0x00, 0, 0, 0, 0, 0, 7, 0, 1, 3, 6, 0xfa, 0x16, 0x3e, 1, 2, 3, 0, 0,
        ];
        sll2.extend_from_slice(&[0x45; 20]);
        let (_, name, dir, pkttype) = decode(DataLink::LINUX_SLL2, &sll2, "any", 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            (name.as_str(), dir, pkttype),
            ("if7", Some(Direction::FromVm), Some(3))
        );
        assert!(decode(DataLink::LINUX_SLL, &sll[..10], "any", 0).is_err());
    }

    /// A cooked record's header is longer than the Ethernet header it stands for: the
    /// frame's length is the Ethernet frame's, as the VM wrote it.
    #[test]
    fn cooked_lengths_are_the_frames() {
        use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
        let frame = crate::lab::frames::rarp_announce(
            crate::model::mac::MacAddr([0xfa, 0x16, 0x3e, 1, 2, 3]),
            Some(12),
        );
        let sll: Vec<u8> = [
            &[0, 0, 0, 1, 0, 6][..],
            &frame[6..12],
            &[0, 0],
            &frame[12..],
        ]
        .concat();
        let sll2: Vec<u8> = [
            &frame[12..14],
            &[0, 0, 0, 0, 0, 7, 0, 1, 0, 6][..],
            &frame[6..12],
            &[0, 0],
            &frame[14..],
        ]
        .concat();
        for (link, record) in [
            (DataLink::LINUX_SLL, sll),
            (DataLink::LINUX_SLL2, sll2),
            (DataLink::ETHERNET, frame.clone()),
        ] {
            let mut w = PcapWriter::with_header(
                Vec::new(),
                PcapHeader {
                    datalink: link,
                    ..PcapHeader::default()
                },
            )
            .unwrap();
            w.write_packet(&PcapPacket::new(
                Duration::ZERO,
                record.len() as u32,
                &record,
            ))
            .unwrap();
            let p = read(&w.into_writer()).unwrap();
            assert_eq!(
                (p[0].orig_len as usize, p[0].data.len()),
                (frame.len(), frame.len()),
                "{link:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = read(&bytes);
        }

        #[test]
        fn damaged_captures_never_panic(flips in proptest::collection::vec((0usize..200, any::<u8>()), 1..8), cut in 0usize..200) {
            let mut bytes = tiny_pcap();
            for (at, v) in flips {
                let n = bytes.len();
                bytes[at % n] = v;
            }
            bytes.truncate(cut.max(1).min(bytes.len()));
            let _ = read(&bytes);
        }
    }
}
