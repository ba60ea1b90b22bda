//! MAC addresses as tapwatch prints them: lower-case, colon-separated.

use std::{fmt, str::FromStr};

use serde::{Serialize, Serializer};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    pub fn is_broadcast(&self) -> bool {
        self.0 == [0xff; 6]
    }

    /// Unicast and set (not all zeroes).
    pub fn is_unicast(&self) -> bool {
        self.0[0] & 1 == 0 && self.0 != [0; 6]
    }

    /// From a netlink `IFLA_ADDRESS`; `None` unless it is 6 bytes long.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Some(Self(b.try_into().ok()?))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// An optional MAC as text, `absent` standing for none.
pub fn show(m: Option<MacAddr>, absent: &str) -> String {
    m.map(|m| m.to_string())
        .unwrap_or_else(|| absent.to_string())
}

#[derive(Debug, thiserror::Error)]
#[error("not a MAC address (expected six hex bytes like fa:16:3e:aa:bb:cc): {0:?}")]
pub struct ParseMacError(String);

impl FromStr for MacAddr {
    type Err = ParseMacError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError(s.to_string());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in &mut out {
            let p = parts.next().ok_or_else(err)?;
            if p.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m: MacAddr = "FA:16:3E:aa:bb:0c".parse().unwrap();
        assert_eq!(m.to_string(), "fa:16:3e:aa:bb:0c");
        assert_eq!(serde_json::to_string(&m).unwrap(), "\"fa:16:3e:aa:bb:0c\"");
        assert!("fa:16:3e:aa:bb".parse::<MacAddr>().is_err());
        assert!("fa:16:3e:aa:bb:cc:dd".parse::<MacAddr>().is_err());
        assert!("fa:16:3e:aa:bb:c".parse::<MacAddr>().is_err());
        assert_eq!(MacAddr::from_slice(&[1, 2, 3]), None);
    }
}
