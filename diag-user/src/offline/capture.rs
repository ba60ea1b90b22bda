//! Reading captures of tap traffic: pcap or pcapng, Ethernet or Linux cooked headers
//! (`tcpdump -i any`). Every frame comes out as an Ethernet frame with what the capture
//! knew about it; a damaged file is an error naming the byte offset, never a panic.

use std::{io::Read, time::Duration};

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

use super::MAX_TAPS;
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
/// The longest pcapng section header or interface description accepted, and the most
/// bytes of options of a packet block: what is parsed into lists (real ones are a few
/// hundred bytes).
pub const MAX_DESCRIPTION: usize = 64 << 10;
/// The longest interface name accepted: it names every frame of the interface (Linux
/// allows 15 bytes).
pub const MAX_IFNAME: usize = 256;

const SECTION_HEADER: u32 = 0x0A0D_0D0A;
const INTERFACE_DESCRIPTION: u32 = 1;
const ENHANCED_PACKET: u32 = 6;

/// What a frame needs of its interface, read once from its description.
struct Interface {
    name: String,
    linktype: DataLink,
    /// Timestamps count units of 10^-tsresol s.
    tsresol: u32,
}

impl Interface {
    fn of(
        idb: &pcap_file::pcapng::blocks::interface_description::InterfaceDescriptionBlock<'_>,
        id: usize,
        offset: usize,
    ) -> Result<Self, CaptureError> {
        let mut me = Interface {
            name: format!("if{id}"),
            linktype: idb.linktype,
            tsresol: 6,
        };
        for o in &idb.options {
            match o {
                InterfaceDescriptionOption::IfName(n) if n.len() > MAX_IFNAME => {
                    return Err(CaptureError::Corrupt {
                        offset,
                        what: format!(
                            "an interface name longer than {MAX_IFNAME} bytes ({} bytes)",
                            n.len()
                        ),
                    })
                }
                InterfaceDescriptionOption::IfName(n) => me.name = n.to_string(),
                InterfaceDescriptionOption::IfTsResol(r) if *r <= 9 => me.tsresol = *r as u32,
                _ => {}
            }
        }
        Ok(me)
    }
}

/// A pcapng block's type and length from its first bytes, when they are there: a
/// section header says its byte order itself, other blocks are in their section's.
fn block_head(b: &[u8], order: pcap_file::Endianness) -> Option<(u32, usize)> {
    let word = |at: usize, big: bool| {
        let w: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
        Some(if big {
            u32::from_be_bytes(w)
        } else {
            u32::from_le_bytes(w)
        })
    };
    let kind = word(0, true)?;
    let big = if kind == SECTION_HEADER {
        word(8, true)? == 0x1A2B_3C4D
    } else {
        order == pcap_file::Endianness::Big
    };
    let kind = if kind == SECTION_HEADER {
        kind
    } else {
        word(0, big)?
    };
    Some((kind, word(4, big)? as usize))
}

/// How a pcapng block is read.
enum BlockRead {
    /// Parsed: a section header, an interface description, an enhanced packet block.
    Parse,
    /// Stepped over unparsed: nothing a frame needs is in it (name resolution,
    /// statistics, secrets, blocks of later versions).
    Skip,
}

/// How to read the block that `head` starts, checked before it is parsed: parsing keeps
/// a section header or an interface description for the whole section and makes a list
/// entry of tens of bytes of every option, so each is at most [`MAX_DESCRIPTION`] bytes
/// (a packet block's options too), and a section at most [`MAX_TAPS`] interfaces.
fn plan(
    head: &[u8],
    order: pcap_file::Endianness,
    interfaces: usize,
    offset: usize,
) -> Result<BlockRead, CaptureError> {
    let Some((kind, len)) = block_head(head, order) else {
        // Too short to tell: the parser asks for more.
        return Ok(BlockRead::Parse);
    };
    let refuse = |what: String| CaptureError::Corrupt { offset, what };
    match kind {
        SECTION_HEADER | INTERFACE_DESCRIPTION => {
            let what = if kind == SECTION_HEADER {
                "a section header"
            } else {
                "an interface description"
            };
            if len > MAX_DESCRIPTION {
                return Err(refuse(format!(
                    "{what} of {len} bytes; tapwatch reads ones of up to {MAX_DESCRIPTION}"
                )));
            }
            if kind == INTERFACE_DESCRIPTION && interfaces >= MAX_TAPS {
                return Err(refuse(format!(
                    "more than {MAX_TAPS} interfaces in one section"
                )));
            }
            Ok(BlockRead::Parse)
        }
        ENHANCED_PACKET => {
            let Some((_, caplen)) = block_head(head.get(16..).unwrap_or(&[]), order) else {
                return Ok(BlockRead::Parse);
            };
            // Type, length, interface, timestamp, lengths (28 bytes), the frame padded to
            // 4 bytes, the options, the length again.
            let options = len.saturating_sub(32 + caplen.div_ceil(4) * 4);
            if options > MAX_DESCRIPTION {
                return Err(refuse(format!(
                    "a packet block with {options} bytes of options; tapwatch reads up to \
                     {MAX_DESCRIPTION}"
                )));
            }
            Ok(BlockRead::Parse)
        }
        _ => Ok(BlockRead::Skip),
    }
}

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
    /// The interfaces of the current pcapng section, in order.
    interfaces: Vec<Interface>,
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
            interfaces: Vec::new(),
        };
        // Enough for either file header.
        while r.buf.len() < 4 && !r.eof {
            r.fill()?;
        }
        let format = loop {
            let head = &r.buf[..];
            let parsed = match head.get(..4) {
                Some([0x0a, 0x0d, 0x0d, 0x0a]) => {
                    plan(head, pcap_file::Endianness::Big, 0, 0)?;
                    PcapNgParser::new(head)
                        .map(|(rest, p)| (head.len() - rest.len(), Format::PcapNg(p)))
                }
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
        // Up to a chunk, however little each read gives (a decompressor, a pipe): the cost
        // is in the bytes read, never a chunk's worth per read.
        let n = (&mut self.src)
            .take(CHUNK as u64)
            .read_to_end(&mut self.buf)
            .map_err(|source| CaptureError::Read {
                offset: self.base + self.buf.len() as u64,
                source,
            })?;
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
                Format::PcapNg(parser) => {
                    let order = parser.section().endianness;
                    let interfaces = &mut self.interfaces;
                    match plan(avail, order, interfaces.len(), offset)? {
                        BlockRead::Parse => parser.next_block(avail).map(|(rest, block)| {
                            let used = avail.len() - rest.len();
                            (used, pcapng_packet(interfaces, block, offset))
                        }),
                        BlockRead::Skip => parser
                            .next_raw_block(avail)
                            .map(|(rest, _)| (avail.len() - rest.len(), Ok(None))),
                    }
                }
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

/// The frame of a pcapng block, if it is a packet; a section header or an interface
/// description updates `interfaces` (as the parser does its own).
fn pcapng_packet(
    interfaces: &mut Vec<Interface>,
    block: Block<'_>,
    offset: usize,
) -> Result<Option<Packet>, CaptureError> {
    let epb = match block {
        Block::EnhancedPacket(epb) => epb,
        Block::SectionHeader(_) => {
            interfaces.clear();
            return Ok(None);
        }
        Block::InterfaceDescription(idb) => {
            interfaces.push(Interface::of(&idb, interfaces.len(), offset)?);
            return Ok(None);
        }
        _ => return Ok(None),
    };
    let Some(idb) = interfaces.get(epb.interface_id as usize) else {
        return Err(CaptureError::Corrupt {
            offset,
            what: format!("packet of unknown interface {}", epb.interface_id),
        });
    };
    // The parser hands the raw count of 10^-tsresol s over as if it were nanoseconds.
    let ns = epb
        .timestamp
        .as_nanos()
        .saturating_mul(10u128.pow(9 - idb.tsresol));
    let ts = ts_of(Duration::from_nanos(ns.min(u64::MAX as u128) as u64));
    let flag_dir = epb.options.iter().find_map(|o| match o {
        EnhancedPacketOption::Flags(f) if f & 3 == 1 => Some(Direction::FromVm),
        EnhancedPacketOption::Flags(f) if f & 3 == 2 => Some(Direction::ToVm),
        _ => None,
    });
    Ok(decode(idb.linktype, &epb.data, &idb.name, offset)?.map(
        |(data, name, direction, pkttype)| Packet {
            ts,
            ifname: name,
            orig_len: frame_len(epb.original_len, &epb.data, &data),
            data,
            direction: direction.or(flag_dir),
            pkttype,
        },
    ))
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
        let frame = crate::frames::rarp_announce(
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
        let frame = crate::frames::rarp_announce(
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

    /// A pcapng's section and one interface described by `idb`, and one 60-byte frame on
    /// it (an Enhanced Packet Block), apart.
    fn pcapng_parts(idb: Vec<InterfaceDescriptionOption<'static>>) -> (Vec<u8>, Vec<u8>) {
        use pcap_file::pcapng::{
            blocks::{
                enhanced_packet::EnhancedPacketBlock,
                interface_description::InterfaceDescriptionBlock,
            },
            PcapNgWriter,
        };
        let mut w = PcapNgWriter::new(Vec::new()).unwrap();
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: 0,
            options: idb,
        })
        .unwrap();
        let head = w.get_ref().len();
        let frame = crate::frames::rarp_announce(
            crate::model::mac::MacAddr([0xfa, 0x16, 0x3e, 1, 2, 3]),
            None,
        );
        w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_secs(1_790_000_000),
            original_len: 60,
            data: frame.as_slice().into(),
            options: vec![],
        })
        .unwrap();
        let mut bytes = w.into_inner();
        let packet = bytes.split_off(head);
        (bytes, packet)
    }

    /// The capture as a stream: the section and interface, then `packets` frames, made as
    /// they are read (a capture of millions of frames without holding it).
    fn pcapng(
        idb: Vec<InterfaceDescriptionOption<'static>>,
        packets: usize,
    ) -> CaptureReader<Repeated> {
        let (head, packet) = pcapng_parts(idb);
        CaptureReader::new(Repeated {
            head,
            packet,
            left: packets,
            at: 0,
        })
        .unwrap()
    }

    /// `head`, then `packet` `left` times.
    struct Repeated {
        head: Vec<u8>,
        packet: Vec<u8>,
        left: usize,
        /// Where in the current part the next read starts.
        at: usize,
    }

    impl std::io::Read for Repeated {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let part = if !self.head.is_empty() {
                &self.head
            } else if self.left > 0 {
                &self.packet
            } else {
                return Ok(0);
            };
            let n = buf.len().min(part.len() - self.at);
            buf[..n].copy_from_slice(&part[self.at..self.at + n]);
            self.at += n;
            if self.at == part.len() {
                self.at = 0;
                if self.head.is_empty() {
                    self.left -= 1;
                } else {
                    self.head.clear();
                }
            }
            Ok(n)
        }
    }

    /// How many frames `r` gives, or where it stopped and why.
    fn count(mut r: CaptureReader<impl std::io::Read>) -> Result<usize, String> {
        let mut n = 0;
        while r.next_packet().map_err(|e| e.to_string())?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// An interface described with 16,000 options, then a million frames on it: each frame
    /// looked through all the options (minutes); now the interface is read once.
    #[test]
    fn an_interface_of_many_options_is_read_once() {
        let mut options = vec![InterfaceDescriptionOption::IfName("tap0".into())];
        options.extend((0..16_000).map(|_| InterfaceDescriptionOption::Comment("".into())));
        let mut r = pcapng(options, 1_000_000);
        assert_eq!(r.next_packet().unwrap().unwrap().ifname, "tap0");
        assert_eq!(count(r), Ok(999_999));
    }

    /// Interface descriptions are held for the whole file and their names copied into every
    /// frame: one longer than 64 KiB, or a name longer than 256 bytes, is refused.
    #[test]
    fn an_interface_description_past_the_limits_is_refused() {
        let name = |n: usize| vec![InterfaceDescriptionOption::IfName("t".repeat(n).into())];
        assert_eq!(count(pcapng(name(256), 3)), Ok(3));
        let err = count(pcapng(name(257), 1_000_000)).unwrap_err();
        assert!(
            err.contains("an interface name longer than 256 bytes"),
            "{err}"
        );
        let big = vec![InterfaceDescriptionOption::Comment(
            "c".repeat(1 << 20).into(),
        )];
        let err = count(pcapng(big, 3)).unwrap_err();
        assert!(
            err.contains("an interface description of 1048604 bytes") && err.contains("65536"),
            "{err}"
        );
    }

    /// A little-endian pcapng block of `kind` around `body`.
    fn raw_block(kind: u32, body: &[u8]) -> Vec<u8> {
        let len = (body.len().div_ceil(4) * 4 + 12) as u32;
        let mut b = [kind.to_le_bytes(), len.to_le_bytes()].concat();
        b.extend_from_slice(body);
        b.resize(len as usize - 4, 0);
        b.extend_from_slice(&len.to_le_bytes());
        b
    }

    /// A block that says nothing a frame needs is stepped over unparsed, however large
    /// (parsing a name resolution block made tens of bytes of every record); a packet
    /// block's options are parsed only up to MAX_DESCRIPTION bytes of them.
    #[test]
    fn blocks_are_parsed_only_for_what_frames_need() {
        let (head, packet) = pcapng_parts(vec![]);
        let names = raw_block(4, &[1, 0, 4, 0, 10, 0, 0, 1].repeat(1 << 17));
        let bytes = [head.clone(), names, packet.clone()].concat();
        assert_eq!(read(&bytes).unwrap().len(), 1);
        // The same frame with options, their end marker included: at the limit, past it.
        let epb = |options: usize| {
            let body = &packet[8..packet.len() - 4];
            let mut b = body.to_vec();
            b.extend(std::iter::repeat_n([1u8, 0, 0, 0], options / 4).flatten());
            b.extend_from_slice(&[0, 0, 0, 0]);
            raw_block(ENHANCED_PACKET, &b)
        };
        let near = [head.clone(), epb(MAX_DESCRIPTION - 4)].concat();
        assert_eq!(read(&near).unwrap().len(), 1);
        let over = [head, epb(MAX_DESCRIPTION + 4)].concat();
        let err = read(&over).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("a packet block with 65544 bytes of options"),
            "{err}"
        );
    }

    /// A reader that gives one byte a read (a pipe, a decompressor at its block edges).
    struct Trickle<'a>(&'a [u8]);
    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let Some((&b, rest)) = self.0.split_first() else {
                return Ok(0);
            };
            match buf.first_mut() {
                Some(slot) => {
                    *slot = b;
                    self.0 = rest;
                    Ok(1)
                }
                None => Ok(0),
            }
        }
    }

    /// Each read cost a chunk's worth of work (64 KiB zeroed) however little it gave: a
    /// capture read a byte at a time took minutes a megabyte.
    #[test]
    fn a_capture_read_a_byte_at_a_time_is_read_in_linear_time() {
        use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
        let mut w = PcapWriter::with_header(Vec::new(), PcapHeader::default()).unwrap();
        let frame = crate::frames::rarp_announce(
            crate::model::mac::MacAddr([0xfa, 0x16, 0x3e, 1, 2, 3]),
            None,
        );
        for i in 0..12_000 {
            w.write_packet(&PcapPacket::new(Duration::from_micros(i), 60, &frame))
                .unwrap();
        }
        let bytes = w.into_writer();
        assert!(bytes.len() > 900_000);
        assert_eq!(
            count(CaptureReader::new(Trickle(&bytes)).unwrap()),
            Ok(12_000)
        );
    }

    /// A block that claims more than MAX_BLOCK is refused once that much is buffered,
    /// never read on; one just under it is read.
    #[test]
    fn a_block_past_the_size_limit_is_refused() {
        use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
        let mut w = PcapWriter::with_header(
            Vec::new(),
            PcapHeader {
                snaplen: u32::MAX,
                ..PcapHeader::default()
            },
        )
        .unwrap();
        let near = vec![0u8; MAX_BLOCK - 16];
        w.write_packet(&PcapPacket::new(Duration::ZERO, near.len() as u32, &near))
            .unwrap();
        let mut bytes = w.into_writer();
        assert_eq!(count(CaptureReader::new(&bytes[..]).unwrap()), Ok(1));
        // A record header that claims 4 GiB, and more than MAX_BLOCK after it.
        bytes.extend_from_slice(&[0; 8]);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        bytes.resize(bytes.len() + MAX_BLOCK + 1, 0);
        let err = count(CaptureReader::new(&bytes[..]).unwrap()).unwrap_err();
        assert!(
            err.contains(&format!("byte offset {}", 24 + 16 + MAX_BLOCK - 16))
                && err.contains("a block longer than 16777216 bytes"),
            "{err}"
        );
    }

    /// pcapng blocks as a damaged or hostile file may hold them: any type, a length that
    /// is right, wrong or huge, any body, any byte order.
    fn pcapng_block() -> impl Strategy<Value = Vec<u8>> {
        let kind = prop_oneof![
            Just(SECTION_HEADER),
            Just(INTERFACE_DESCRIPTION),
            Just(6u32),
            Just(3u32),
            Just(4u32),
            Just(5u32),
            any::<u32>()
        ];
        let len = prop_oneof![Just(None), any::<u32>().prop_map(Some)];
        (
            kind,
            len,
            prop::collection::vec(any::<u8>(), 0..96),
            any::<bool>(),
        )
            .prop_map(|(kind, len, mut body, big)| {
                let word = |w: u32| {
                    if big {
                        w.to_be_bytes()
                    } else {
                        w.to_le_bytes()
                    }
                };
                if kind == SECTION_HEADER {
                    let mut shb = word(0x1A2B_3C4D).to_vec();
                    shb.extend_from_slice(&[1, 0, 0, 0]);
                    shb.extend_from_slice(&body);
                    body = shb;
                }
                body.resize(body.len().div_ceil(4) * 4, 0);
                let total = len.unwrap_or(body.len() as u32 + 12);
                let mut b = word(kind).to_vec();
                b.extend_from_slice(&word(total));
                b.extend_from_slice(&body);
                b.extend_from_slice(&word(total));
                b
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// A pcapng of arbitrary blocks after a real section header and interface: frames
        /// or an error, never a panic, never more frames than blocks.
        #[test]
        fn arbitrary_pcapng_blocks_never_panic(
            blocks in prop::collection::vec(pcapng_block(), 0..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let (mut bytes, packet) = pcapng_parts(vec![]);
            bytes.extend_from_slice(&packet);
            for b in &blocks {
                bytes.extend_from_slice(b);
            }
            bytes.truncate(cut.index(bytes.len() + 1));
            if let Ok(p) = read(&bytes) {
                prop_assert!(p.len() <= blocks.len() + 1);
            }
        }

        /// pcap records whose lengths claim anything (up to 4 GiB): read or refused.
        #[test]
        fn pcap_records_of_any_claimed_length_never_panic(
            records in prop::collection::vec(
                (any::<u32>(), any::<u32>(), prop::collection::vec(any::<u8>(), 0..80)),
                0..6,
            ),
        ) {
            let mut bytes = tiny_pcap();
            for (incl, orig, data) in &records {
                bytes.extend_from_slice(&[0; 8]);
                bytes.extend_from_slice(&incl.to_le_bytes());
                bytes.extend_from_slice(&orig.to_le_bytes());
                bytes.extend_from_slice(data);
            }
            let _ = read(&bytes);
        }


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
