//! How records name a tap of another network namespace. A run knows it as
//! `NAMESPACE/IFNAME` (see [`crate::collect::namespaces`]); a record says
//! `"ifname": "IFNAME", "netns": "NAMESPACE"`, and says no `netns` for a tap of tapwatch's
//! own namespace, so consumers written before namespaces see no change. Reading records
//! back joins the two again, so offline analysis keeps two pods' `tap0` apart.

use serde_json::Value;

use crate::collect::namespaces::{qualified, split};

/// The fields that hold a tap's name.
const NAME_FIELDS: [&str; 2] = ["ifname", "old_ifname"];

/// Whether a serialized record names a tap of another namespace (any name field holds a
/// `/`, which no interface name can): only those lines are rewritten.
pub fn names_another(line: &[u8]) -> bool {
    NAME_FIELDS.iter().any(|f| {
        let key = format!("\"{f}\":\"");
        let mut rest = line;
        while let Some(at) = find(rest, key.as_bytes()) {
            rest = &rest[at + key.len()..];
            let end = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len());
            if rest[..end].contains(&b'/') {
                return true;
            }
        }
        false
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `"ifname": "NS/IF"` becomes `"ifname": "IF", "netns": "NS"`, in every object.
pub fn split_names(v: &mut Value) {
    match v {
        Value::Object(m) => {
            let mut netns = None;
            for f in NAME_FIELDS {
                if let Some(Value::String(s)) = m.get_mut(f) {
                    if let (Some(ns), name) = split(s) {
                        netns.get_or_insert_with(|| ns.to_string());
                        *s = name.to_string();
                    }
                }
            }
            for x in m.values_mut() {
                split_names(x);
            }
            if let Some(ns) = netns {
                m.insert("netns".into(), Value::String(ns));
            }
        }
        Value::Array(a) => a.iter_mut().for_each(split_names),
        _ => {}
    }
}

/// The reverse of [`split_names`], for records read back.
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
        let line = br#"{"type":"renamed","ifname":"cni-1/tap1","old_ifname":"cni-1/tap0","taps":[{"ifname":"12345/tap0"},{"ifname":"tap9"}]}"#;
        assert!(names_another(line));
        assert!(!names_another(
            br#"{"type":"notice","message":"/run/libvirt","ifname":"tap0"}"#
        ));
        let mut v: Value = serde_json::from_slice(line).unwrap();
        split_names(&mut v);
        assert_eq!(v["ifname"], "tap1");
        assert_eq!(v["old_ifname"], "tap0");
        assert_eq!(v["netns"], "cni-1");
        assert_eq!(v["taps"][0]["netns"], "12345");
        assert_eq!(v["taps"][0]["ifname"], "tap0");
        assert!(v["taps"][1].get("netns").is_none());
        join_names(&mut v);
        assert_eq!(v, serde_json::from_slice::<Value>(line).unwrap());
    }
}
