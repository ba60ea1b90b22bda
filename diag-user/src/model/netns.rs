//! How records name a tap of another network namespace. A run knows it as
//! `NAMESPACE/IFNAME` (see [`crate::collect::namespaces`]); a record says
//! `"ifname": "IFNAME", "netns": "NAMESPACE"`, and says no `netns` for a tap of tapwatch's
//! own namespace, so consumers written before namespaces see no change. Reading records
//! back joins the two again, so offline analysis keeps two pods' `tap0` apart.

use serde_json::Value;

use crate::collect::namespaces::qualified;

/// The fields that hold a tap's name.
const NAME_FIELDS: [&str; 2] = ["ifname", "old_ifname"];

/// A serialized record as written: every `"ifname":"NS/IF"` becomes
/// `"ifname":"IF","netns":"NS"` and every `"old_ifname":"NS/IF"` `"old_ifname":"IF"`, in
/// place, so the fields keep their order (`schema` stays last). Done on the bytes: in
/// serde_json's output a quote inside a string is escaped, so these keys match nowhere
/// else, and a `/` (never escaped) in a name is the namespace's end, as no interface name
/// has one. A line naming no tap of another namespace comes back as it was.
pub fn split_line(line: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(line.len() + 32);
    let mut at = 0;
    while at < line.len() {
        let Some((key, start)) = next_name(&line[at..]) else {
            break;
        };
        let value = at + start;
        out.extend_from_slice(&line[at..value]);
        let len = string_len(&line[value..]);
        let name = &line[value..value + len];
        match name.iter().rposition(|&b| b == b'/') {
            Some(slash) => {
                out.extend_from_slice(&name[slash + 1..]);
                out.push(b'"');
                if key == "ifname" {
                    out.extend_from_slice(b",\"netns\":\"");
                    out.extend_from_slice(&name[..slash]);
                    out.push(b'"');
                }
            }
            None => {
                out.extend_from_slice(name);
                out.push(b'"');
            }
        }
        // Past the value's closing quote.
        at = (value + len + 1).min(line.len());
    }
    out.extend_from_slice(&line[at.min(line.len())..]);
    out
}

/// The first name field in `s`: which, and where its value's first byte is. One pass for
/// both keys (a stats record names every tap): they end alike.
fn next_name(s: &[u8]) -> Option<(&'static str, usize)> {
    const TAIL: &[u8] = b"ifname\":\"";
    let mut from = 0;
    while let Some(i) = find(&s[from..], TAIL) {
        let at = from + i;
        let value = at + TAIL.len();
        if s[..at].ends_with(b"\"") {
            return Some(("ifname", value));
        }
        if s[..at].ends_with(b"\"old_") {
            return Some(("old_ifname", value));
        }
        from = at + 1;
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The length of a JSON string's content up to its closing quote (escapes skipped).
fn string_len(s: &[u8]) -> usize {
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return i,
            _ => i += 1,
        }
    }
    s.len()
}

/// The reverse of [`split_line`], for records read back.
pub fn join_names(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(ns)) = m.remove("netns") {
                for f in NAME_FIELDS {
                    if let Some(Value::String(s)) = m.get_mut(f) {
                        *s = qualified(&ns, s);
                    }
                }
            }
            m.values_mut().for_each(join_names);
        }
        Value::Array(a) => a.iter_mut().for_each(join_names),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_namespaces_tap_is_named_by_ifname_and_netns_and_read_back_whole() {
        let line = br#"{"type":"renamed","ifname":"cni-1/tap1","old_ifname":"cni-1/tap0","taps":[{"ifname":"12345/tap0","n":1},{"ifname":"tap9"}],"schema":2}"#;
        let split = split_line(line);
        assert_eq!(
            String::from_utf8(split.clone()).unwrap(),
            r#"{"type":"renamed","ifname":"tap1","netns":"cni-1","old_ifname":"tap0","taps":[{"ifname":"tap0","netns":"12345","n":1},{"ifname":"tap9"}],"schema":2}"#
        );
        let mut v: Value = serde_json::from_slice(&split).unwrap();
        join_names(&mut v);
        assert_eq!(v, serde_json::from_slice::<Value>(line).unwrap());
        // Nothing else changes: names of tapwatch's own namespace, a path in a message, a
        // key inside a string.
        let plain = br#"{"type":"notice","message":"/run/libvirt \"ifname\":\"a/b\"","ifname":"tap0","schema":2}"#;
        assert_eq!(split_line(plain), plain.to_vec());
        // A namespace's name with a quote in it stays escaped.
        let odd = br#"{"ifname":"we\"ird/tap0"}"#;
        let v: Value = serde_json::from_slice(&split_line(odd)).unwrap();
        assert_eq!(
            (&v["ifname"], &v["netns"]),
            (&"tap0".into(), &"we\"ird".into())
        );
    }
}
