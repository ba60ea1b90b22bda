//! A small reader of the kernel's raw BTF (`/sys/kernel/btf/vmlinux`): types by name and
//! kind, struct members (through anonymous members, where most of `sk_buff` lives),
//! enumerators and function prototypes. Only what the layout needs, and fast: it indexes
//! the types without decoding them (about 10 ms for a distribution kernel's 130 000
//! types, against a quarter of a second for a crate that decodes every type up front,
//! paid by every run at start). Every read is bounds-checked: a damaged file is an error.

pub const KIND_INT: u32 = 1;
pub const KIND_PTR: u32 = 2;
pub const KIND_ARRAY: u32 = 3;
pub const KIND_STRUCT: u32 = 4;
pub const KIND_UNION: u32 = 5;
pub const KIND_ENUM: u32 = 6;
pub const KIND_FWD: u32 = 7;
pub const KIND_TYPEDEF: u32 = 8;
pub const KIND_VOLATILE: u32 = 9;
pub const KIND_CONST: u32 = 10;
pub const KIND_RESTRICT: u32 = 11;
pub const KIND_FUNC: u32 = 12;
pub const KIND_FUNC_PROTO: u32 = 13;
pub const KIND_VAR: u32 = 14;
pub const KIND_DATASEC: u32 = 15;
pub const KIND_FLOAT: u32 = 16;
pub const KIND_DECL_TAG: u32 = 17;
pub const KIND_TYPE_TAG: u32 = 18;
pub const KIND_ENUM64: u32 = 19;

const MAGIC: u16 = 0xeb9f;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not little-endian BTF")]
    Magic,
    #[error("BTF cut short at byte {0}")]
    Short(usize),
    #[error("unknown BTF kind {kind} at byte {at}")]
    Kind { kind: u32, at: usize },
    #[error("no BTF type id {0}")]
    NoId(u32),
    #[error("no {0}")]
    NotFound(String),
    #[error("BTF type chain too deep at id {0}")]
    Loop(u32),
}

pub struct Btf {
    data: Vec<u8>,
    /// Byte offset of type id i+1; id 0 is `void`.
    types: Vec<usize>,
    str_start: usize,
    str_end: usize,
}

/// A struct member found by path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// From the start of the outermost struct, in bits.
    pub bit_offset: u32,
    /// 0 unless a bitfield.
    pub bitfield_size: u32,
    pub type_id: u32,
}

struct Ty {
    name_off: u32,
    kind: u32,
    vlen: usize,
    kflag: bool,
    size_or_type: u32,
    /// Where the kind's own data starts (after the 12-byte header).
    extra: usize,
}

/// Most typedef/qualifier links followed before giving up (a loop in a damaged file).
const MAX_CHAIN: usize = 32;

impl Btf {
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let mut b = Self {
            data,
            types: Vec::new(),
            str_start: 0,
            str_end: 0,
        };
        if b.u16_at(0)? != MAGIC {
            return Err(BtfError::Magic);
        }
        let hdr_len = b.u32_at(4)? as usize;
        let (type_off, type_len) = (b.u32_at(8)? as usize, b.u32_at(12)? as usize);
        let (str_off, str_len) = (b.u32_at(16)? as usize, b.u32_at(20)? as usize);
        let span = |off: usize, len: usize| {
            let start = hdr_len.checked_add(off).ok_or(BtfError::Short(off))?;
            let end = start.checked_add(len).ok_or(BtfError::Short(start))?;
            if end > b.data.len() {
                return Err(BtfError::Short(b.data.len()));
            }
            Ok((start, end))
        };
        let (mut p, end) = span(type_off, type_len)?;
        (b.str_start, b.str_end) = span(str_off, str_len)?;
        b.types.reserve(type_len / 16);
        while p < end {
            b.types.push(p);
            let info = b.u32_at(p + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
                KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                kind => return Err(BtfError::Kind { kind, at: p }),
            };
            p += 12 + extra;
        }
        if p != end {
            return Err(BtfError::Short(end));
        }
        Ok(b)
    }

    fn u16_at(&self, o: usize) -> Result<u16, BtfError> {
        let b = self.data.get(o..o + 2).ok_or(BtfError::Short(o))?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32_at(&self, o: usize) -> Result<u32, BtfError> {
        let b = self.data.get(o..o + 4).ok_or(BtfError::Short(o))?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn ty(&self, id: u32) -> Result<Ty, BtfError> {
        let p = *self
            .types
            .get((id as usize).wrapping_sub(1))
            .ok_or(BtfError::NoId(id))?;
        let info = self.u32_at(p + 4)?;
        Ok(Ty {
            name_off: self.u32_at(p)?,
            kind: (info >> 24) & 0x1f,
            vlen: (info & 0xffff) as usize,
            kflag: info >> 31 != 0,
            size_or_type: self.u32_at(p + 8)?,
            extra: p + 12,
        })
    }

    fn str_at(&self, off: u32) -> &str {
        let Some(s) = self.str_start.checked_add(off as usize) else {
            return "";
        };
        let Some(rest) = self.data.get(s..self.str_end) else {
            return "";
        };
        let n = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..n]).unwrap_or("")
    }

    /// Id of the first type named `name` of one of `kinds` (a linear scan: a few ms).
    pub fn find(&self, name: &str, kinds: &[u32]) -> Result<u32, BtfError> {
        for id in 1..=self.types.len() as u32 {
            let t = self.ty(id)?;
            if kinds.contains(&t.kind) && self.str_at(t.name_off) == name {
                return Ok(id);
            }
        }
        Err(BtfError::NotFound(name.to_string()))
    }

    /// Through typedefs and qualifiers (and pointers, with `pointers`).
    fn resolve(&self, mut id: u32, pointers: bool) -> Result<u32, BtfError> {
        for _ in 0..MAX_CHAIN {
            if id == 0 {
                return Ok(0);
            }
            let t = self.ty(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_CONST | KIND_VOLATILE | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                KIND_PTR if pointers => id = t.size_or_type,
                _ => return Ok(id),
            }
        }
        Err(BtfError::Loop(id))
    }

    /// The name of a type after typedefs, qualifiers and pointers (`struct sk_buff *`
    /// -> `sk_buff`).
    pub fn base_name(&self, id: u32) -> Result<&str, BtfError> {
        let id = self.resolve(id, true)?;
        if id == 0 {
            return Ok("void");
        }
        Ok(self.str_at(self.ty(id)?.name_off))
    }

    /// Member `name` of struct or union `id`, searched through anonymous members.
    fn member(&self, id: u32, name: &str, depth: usize) -> Result<Option<Member>, BtfError> {
        if depth > MAX_CHAIN {
            return Err(BtfError::Loop(id));
        }
        let t = self.ty(self.resolve(id, false)?)?;
        if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
            return Ok(None);
        }
        for i in 0..t.vlen {
            let m = t.extra + 12 * i;
            let (m_name, m_type, m_off) =
                (self.u32_at(m)?, self.u32_at(m + 4)?, self.u32_at(m + 8)?);
            let (bit_offset, bitfield_size) = if t.kflag {
                (m_off & 0xff_ffff, m_off >> 24)
            } else {
                (m_off, 0)
            };
            let m_name = self.str_at(m_name);
            if m_name == name {
                return Ok(Some(Member {
                    bit_offset,
                    bitfield_size,
                    type_id: m_type,
                }));
            }
            if m_name.is_empty() {
                if let Some(mut found) = self.member(m_type, name, depth + 1)? {
                    found.bit_offset += bit_offset;
                    return Ok(Some(found));
                }
            }
        }
        Ok(None)
    }

    /// The byte offset of `path` ("a", "a.b": through embedded structs) in struct
    /// `strukt`; `None` if it is missing, a bitfield or not byte-aligned.
    pub fn offset(&self, strukt: &str, path: &str) -> Result<Option<u32>, BtfError> {
        let mut id = self.find(strukt, &[KIND_STRUCT])?;
        let mut bits = 0;
        let mut last = None;
        for part in path.split('.') {
            let Some(m) = self.member(id, part, 0)? else {
                return Ok(None);
            };
            bits += m.bit_offset;
            last = Some(m);
            id = m.type_id;
        }
        Ok(match last {
            Some(m) if m.bitfield_size == 0 && bits % 8 == 0 => Some(bits / 8),
            _ => None,
        })
    }

    /// Enumerators of the enum `name`, with their values.
    pub fn enumerators(&self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let t = self.ty(self.find(name, &[KIND_ENUM, KIND_ENUM64])?)?;
        let mut out = Vec::with_capacity(t.vlen);
        for i in 0..t.vlen {
            if t.kind == KIND_ENUM {
                let e = t.extra + 8 * i;
                let v = self.u32_at(e + 4)?;
                let v = if t.kflag { v as i32 as i64 } else { v as i64 };
                out.push((self.str_at(self.u32_at(e)?).to_string(), v));
            } else {
                let e = t.extra + 12 * i;
                let v = (self.u32_at(e + 4)? as u64) | ((self.u32_at(e + 8)? as u64) << 32);
                out.push((self.str_at(self.u32_at(e)?).to_string(), v as i64));
            }
        }
        Ok(out)
    }

    /// Parameter type ids of the function prototype behind the typedef `name` (a
    /// tracepoint's `btf_trace_…`: a pointer to a prototype).
    pub fn proto_params(&self, name: &str) -> Result<Vec<u32>, BtfError> {
        let id = self.resolve(self.find(name, &[KIND_TYPEDEF])?, true)?;
        let t = self.ty(id)?;
        if t.kind != KIND_FUNC_PROTO {
            return Err(BtfError::NotFound(format!(
                "{name} as a function prototype"
            )));
        }
        (0..t.vlen)
            .map(|i| self.u32_at(t.extra + 8 * i + 4))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF: `int`, `struct s { int a; union { int b; }; }`, `enum e { X = 7 }`.
    fn tiny() -> Vec<u8> {
        let strings = b"\0int\0s\0a\0b\0e\0X\0";
        let name = |s: &str| {
            let pos = strings
                .windows(s.len() + 2)
                .position(|w| w[0] == 0 && &w[1..=s.len()] == s.as_bytes() && w[s.len() + 1] == 0);
            pos.unwrap() as u32 + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                types.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (4 bytes)
        push(&[name("int"), KIND_INT << 24, 4, 32]);
        // 2: anonymous union { int b; }
        push(&[0, KIND_UNION << 24 | 1, 4, name("b"), 1, 0]);
        // 3: struct s { int a; <anon> at 32 bits }
        push(&[
            name("s"),
            KIND_STRUCT << 24 | 2,
            8,
            name("a"),
            1,
            0,
            0,
            2,
            32,
        ]);
        // 4: enum e { X = 7 }
        push(&[name("e"), KIND_ENUM << 24 | 1, 4, name("X"), 7]);
        let mut out = Vec::new();
        let hdr = [
            MAGIC as u32 | 1 << 16,
            24,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ];
        for w in hdr {
            out.extend_from_slice(&w.to_le_bytes());
        }
        out.extend_from_slice(&types);
        out.extend_from_slice(strings);
        out
    }

    #[test]
    fn members_through_anonymous_unions_and_enumerators() {
        let b = Btf::parse(tiny()).unwrap();
        assert_eq!(b.offset("s", "a").unwrap(), Some(0));
        assert_eq!(b.offset("s", "b").unwrap(), Some(4));
        assert_eq!(b.offset("s", "c").unwrap(), None);
        assert_eq!(b.enumerators("e").unwrap(), [("X".to_string(), 7)]);
        assert!(matches!(
            b.find("nope", &[KIND_STRUCT]),
            Err(BtfError::NotFound(_))
        ));
    }

    #[test]
    fn every_cut_of_a_file_is_an_error_not_a_panic() {
        let whole = tiny();
        for n in 0..whole.len() {
            assert!(Btf::parse(whole[..n].to_vec()).is_err(), "cut at {n}");
        }
        let mut bad = whole.clone();
        bad[24 + 7] = 0x1f; // kind 31 in the first type's info
        assert!(matches!(Btf::parse(bad), Err(BtfError::Kind { .. })));
    }
}
