//! What a libvirt status file may hold at most, checked before it is parsed (see the
//! parent module's documentation).

/// What a status file may hold at most (see the module's documentation); each variant is
/// also the reason a file past it is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Limit {
    #[error("larger than {MAX_STATUS_FILE} bytes")]
    Size,
    #[error("elements nested more than {MAX_DEPTH} deep")]
    Depth,
    #[error("an element with more than {MAX_ELEMENT_ATTRIBUTES} attributes")]
    ElementAttributes,
    #[error("more than {MAX_MARKUP} '<' or '=' characters")]
    Markup,
    #[error("more than {MAX_NAMESPACES} namespace declarations")]
    Namespaces,
    #[error("more than {MAX_NODES} elements, texts and comments")]
    Nodes,
}

/// Status files are about 10 KB; anything much larger (a FIFO, a huge file) is not
/// libvirt's.
pub const MAX_STATUS_FILE: u64 = 4 << 20;
/// libvirt nests about 8 deep; the parser takes a stack frame per level.
pub const MAX_DEPTH: usize = 64;
/// libvirt's elements have a dozen attributes at most; the parser compares each with the
/// element's others.
pub const MAX_ELEMENT_ATTRIBUTES: usize = 64;
/// The parser reserves room (tens of bytes) for a node per `<` and an attribute per `=` in
/// the file before it starts, and keeps a node per element, text and comment: these bound
/// its memory.
pub const MAX_MARKUP: usize = 250_000;
pub const MAX_NODES: u32 = 250_000;
/// libvirt and Nova declare a few; the parser copies those in scope into every element
/// that declares another.
pub const MAX_NAMESPACES: usize = 64;

/// Checks `xml` against the limits the parser itself does not keep, walking it as the
/// parser will: start and end tags, attributes (quoted values), comments, CDATA,
/// processing instructions. At the first thing it does not follow (malformed XML, a DTD)
/// it stops: the parser stops there too, with an error, before the rest costs anything.
pub(super) fn within_limits(xml: &str) -> Result<(), Limit> {
    let b = xml.as_bytes();
    if b.iter().filter(|&&c| c == b'<').count() > MAX_MARKUP
        || b.iter().filter(|&&c| c == b'=').count() > MAX_MARKUP
    {
        return Err(Limit::Markup);
    }
    let (mut depth, mut namespaces) = (0usize, 0usize);
    let mut i = 0;
    while let Some(lt) = b.get(i..).and_then(|r| r.iter().position(|&c| c == b'<')) {
        i += lt;
        let rest = &b[i..];
        let skip_to = if rest.starts_with(b"<!--") {
            find(b, i + 4, b"-->")
        } else if rest.starts_with(b"<![CDATA[") {
            find(b, i + 9, b"]]>")
        } else if rest.starts_with(b"<?") {
            find(b, i + 2, b"?>")
        } else if rest.starts_with(b"<!") {
            // A DTD, which the parser refuses.
            return Ok(());
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            find(b, i + 2, b">")
        } else {
            match start_tag(b, i + 1, &mut depth, &mut namespaces)? {
                Some(next) => i = next,
                None => return Ok(()),
            }
            continue;
        };
        match skip_to {
            Some(next) => i = next,
            // Unterminated: the parser stops there.
            None => return Ok(()),
        }
    }
    Ok(())
}

/// A start tag from `i` (just past its `<`): its name, then `name = 'value'` pairs up to
/// `>` or `/>`, counted against the limits; where the scan goes on, or `None` where the
/// parser would stop (malformed).
fn start_tag(
    b: &[u8],
    mut i: usize,
    depth: &mut usize,
    namespaces: &mut usize,
) -> Result<Option<usize>, Limit> {
    while i < b.len() && !space(b[i]) && b[i] != b'>' && b[i] != b'/' {
        i += 1;
    }
    let mut own = 0;
    loop {
        while i < b.len() && space(b[i]) {
            i += 1;
        }
        match (b.get(i), b.get(i + 1)) {
            (Some(b'/'), Some(b'>')) => {
                return Ok(Some(i + 2));
            }
            (Some(b'>'), _) => {
                *depth += 1;
                if *depth > MAX_DEPTH {
                    return Err(Limit::Depth);
                }
                return Ok(Some(i + 1));
            }
            (None, _) => return Ok(None),
            _ => {}
        }
        let name = i;
        while i < b.len() && !space(b[i]) && !matches!(b[i], b'=' | b'>' | b'/') {
            i += 1;
        }
        let name = &b[name..i];
        while i < b.len() && space(b[i]) {
            i += 1;
        }
        if name.is_empty() || b.get(i) != Some(&b'=') {
            return Ok(None);
        }
        i += 1;
        while i < b.len() && space(b[i]) {
            i += 1;
        }
        let Some(&quote @ (b'\'' | b'"')) = b.get(i) else {
            return Ok(None);
        };
        let Some(end) = find(b, i + 1, &[quote]) else {
            return Ok(None);
        };
        i = end;
        own += 1;
        if name == b"xmlns" || name.starts_with(b"xmlns:") {
            *namespaces += 1;
        }
        if own > MAX_ELEMENT_ATTRIBUTES {
            return Err(Limit::ElementAttributes);
        }
        if *namespaces > MAX_NAMESPACES {
            return Err(Limit::Namespaces);
        }
    }
}

/// Just past the first `what` in `b` from `from`.
fn find(b: &[u8], from: usize, what: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(what.len())
        .position(|w| w == what)
        .map(|p| from + p + what.len())
}

fn space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\r' | b'\n')
}
