//! Open vSwitch: the `external_ids` os-vif (ml2/ovs, ml2/ovn) and libvirt write on each
//! tap's `Interface` row, read from the OVSDB server over its unix socket (RFC 7047
//! JSON-RPC). One `monitor` request on the `Interface` table's `name` and `external_ids`
//! returns the rows and then every change as it is made, so nothing is polled; the
//! server's `echo` probes are answered. When the server goes (a restart, an upgrade) the
//! client connects again every [`RETRY`] and replaces what it knew with what the server
//! then says; until then the last rows are kept.
//!
//! No maintained OVSDB crate fits (those on crates.io are early releases, and none bounds
//! what it reads), so this is a small client over `serde_json`. The server's replies are
//! foreign input: a message is at most [`MAX_MESSAGE`] bytes (a host with a thousand ports
//! sends about a megabyte), only the keys above are kept, each value at most
//! [`MAX_VALUE`] bytes, and at most [`MAX_ROWS`] rows.

use std::{
    collections::HashMap,
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::{json, Value};

use super::Publisher;
use crate::model::identity::OvsPort;

pub const DEFAULT_SOCKET: &str = "/var/run/openvswitch/db.sock";
/// The longest message read.
pub const MAX_MESSAGE: usize = 32 << 20;
/// The longest `external_ids` value kept (UUIDs and MACs are far shorter).
pub const MAX_VALUE: usize = 256;
/// `Interface` rows kept at most.
pub const MAX_ROWS: usize = 65_536;
/// How long after a failed or lost connection the next one is tried.
pub const RETRY: Duration = Duration::from_secs(1);
/// The monitor's id, which the server's `update` notifications repeat.
const MONITOR: &str = "tapwatch";

#[derive(Debug, thiserror::Error)]
pub enum OvsdbError {
    #[error("OVSDB server at {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("OVSDB server at {path}: a message longer than {MAX_MESSAGE} bytes; reconnecting")]
    TooLarge { path: PathBuf },
    #[error("OVSDB server at {path}: not JSON-RPC ({what}); reconnecting")]
    Protocol { path: PathBuf, what: String },
    #[error("OVSDB server at {path} refused to monitor the Interface table: {error}")]
    Refused { path: PathBuf, error: String },
    #[error(
        "OVSDB server at {path}: more than {MAX_ROWS} Interface rows; the others are not read"
    )]
    TooManyRows { path: PathBuf },
}

/// What the rows of the `Interface` table say, by tap name.
pub type Table = HashMap<String, OvsPort>;

/// Splits the byte stream into JSON texts: RFC 7047 sends them back to back, without a
/// delimiter, so each ends where its outermost object closes.
#[derive(Default)]
pub struct Framer {
    /// The message so far, and the scan's state at its end.
    buf: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
}

/// Why the stream cannot be split.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameError {
    TooLarge,
    /// Something other than an object or array between messages.
    NotJson(u8),
}

impl Framer {
    /// Takes `bytes`; the messages now complete.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<Vec<u8>>, FrameError> {
        let mut out = Vec::new();
        for &b in bytes {
            if let Some(msg) = self.byte(b)? {
                out.push(msg);
            }
        }
        Ok(out)
    }

    fn byte(&mut self, b: u8) -> Result<Option<Vec<u8>>, FrameError> {
        if self.depth == 0 {
            match b {
                b' ' | b'\t' | b'\r' | b'\n' => return Ok(None),
                b'{' | b'[' => {}
                b => return Err(FrameError::NotJson(b)),
            }
        }
        if self.buf.len() >= MAX_MESSAGE {
            return Err(FrameError::TooLarge);
        }
        self.buf.push(b);
        if self.in_string {
            match (self.escaped, b) {
                (true, _) => self.escaped = false,
                (false, b'\\') => self.escaped = true,
                (false, b'"') => self.in_string = false,
                _ => {}
            }
            return Ok(None);
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 0 {
                    return Ok(Some(std::mem::take(&mut self.buf)));
                }
            }
            _ => {}
        }
        Ok(None)
    }
}

/// The `Interface` rows as the monitor reported them, by row UUID.
#[derive(Default)]
pub struct Interfaces {
    rows: HashMap<String, (String, OvsPort)>,
    /// Rows refused past [`MAX_ROWS`].
    pub overflowed: bool,
}

impl Interfaces {
    /// Applies a `<table-updates>` object (the monitor's reply, an `update`
    /// notification); whether what a tap's name gives changed.
    pub fn apply(&mut self, updates: &Value) -> bool {
        let Some(rows) = updates.get("Interface").and_then(Value::as_object) else {
            return false;
        };
        let mut changed = false;
        for (uuid, update) in rows {
            let Some(new) = update.get("new").and_then(Value::as_object) else {
                changed |= self.rows.remove(uuid).is_some();
                continue;
            };
            if !self.rows.contains_key(uuid) && self.rows.len() >= MAX_ROWS {
                self.overflowed = true;
                continue;
            }
            let row = self.rows.entry(uuid.clone()).or_default();
            let before = row.clone();
            // A modification's `new` has the columns monitored; a partial one changes
            // only the columns it has.
            if let Some(name) = new.get("name").and_then(Value::as_str) {
                row.0 = bounded(name).unwrap_or_default();
            }
            if let Some(ids) = new.get("external_ids") {
                row.1 = port(ids);
            }
            changed |= *row != before;
        }
        changed
    }

    /// What each tap's row says, for the rows that name a VM's port.
    pub fn table(&self) -> Table {
        self.rows
            .values()
            .filter(|(name, port)| !name.is_empty() && !port.is_empty())
            .map(|(name, port)| (name.clone(), port.clone()))
            .collect()
    }
}

fn bounded(s: &str) -> Option<String> {
    (s.len() <= MAX_VALUE).then(|| s.to_string())
}

/// An OVSDB map (`["map", [[key, value], …]]`), the keys os-vif and libvirt write.
fn port(ids: &Value) -> OvsPort {
    let mut p = OvsPort::default();
    let pairs = match ids.as_array().map(Vec::as_slice) {
        Some([tag, pairs]) if tag == "map" => pairs.as_array().map(Vec::as_slice),
        _ => None,
    };
    for pair in pairs.unwrap_or_default() {
        let Some([Value::String(k), Value::String(v)]) = pair.as_array().map(Vec::as_slice) else {
            continue;
        };
        let v = bounded(v);
        match k.as_str() {
            "iface-id" => p.iface_id = v,
            "vm-uuid" => p.vm_uuid = v,
            "vm-id" => p.vm_id = v,
            "attached-mac" => p.attached_mac = v.and_then(|v| v.parse().ok()),
            "iface-status" => p.iface_status = v,
            _ => {}
        }
    }
    p
}

/// Follows the server at `path` until the publisher is told to stop. `explicit`: the
/// socket was named by the user, so its absence is said (once).
pub(super) fn follow(path: &Path, explicit: bool, publisher: &Publisher<Table>) {
    // A socket the user named is said missing (or refused) once, not every second.
    let mut said = false;
    loop {
        match session(path, publisher) {
            Ok(()) => {}
            Err(OvsdbError::Io { source, .. })
                if !explicit
                    && matches!(
                        source.kind(),
                        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                    ) => {}
            Err(e @ OvsdbError::Io { .. }) => {
                if !said {
                    publisher.report(e.into());
                }
                said = true;
            }
            Err(e) => publisher.report(e.into()),
        }
        if !publisher.wait(RETRY) {
            return;
        }
    }
}

/// One connection: the monitor, then its updates until the server closes it (`Ok`) or the
/// publisher stops.
fn session(path: &Path, publisher: &Publisher<Table>) -> Result<(), OvsdbError> {
    let io = |source| OvsdbError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut sock = UnixStream::connect(path).map_err(io)?;
    // Bounds how long a stop waits for a quiet server.
    sock.set_read_timeout(Some(super::STOP_LATENCY))
        .map_err(io)?;
    let monitor = json!({
        "id": 0,
        "method": "monitor",
        "params": ["Open_vSwitch", MONITOR, {"Interface": {"columns": ["name", "external_ids"]}}],
    });
    sock.write_all(monitor.to_string().as_bytes()).map_err(io)?;
    let mut framer = Framer::default();
    let mut rows = Interfaces::default();
    let mut chunk = vec![0u8; 64 * 1024];
    while !publisher.stopped() {
        let n = match sock.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io(e)),
        };
        let messages = framer.push(&chunk[..n]).map_err(|e| match e {
            FrameError::TooLarge => OvsdbError::TooLarge {
                path: path.to_path_buf(),
            },
            FrameError::NotJson(b) => protocol(path, format!("byte {b:#04x} between messages")),
        })?;
        for m in messages {
            let msg: Value =
                serde_json::from_slice(&m).map_err(|e| protocol(path, e.to_string()))?;
            if let Some(reply) = handle(path, &msg, &mut rows, publisher)? {
                sock.write_all(reply.to_string().as_bytes()).map_err(io)?;
            }
        }
    }
    Ok(())
}

fn protocol(path: &Path, what: String) -> OvsdbError {
    OvsdbError::Protocol {
        path: path.to_path_buf(),
        what,
    }
}

/// One message from the server; what to answer, if anything.
fn handle(
    path: &Path,
    msg: &Value,
    rows: &mut Interfaces,
    publisher: &Publisher<Table>,
) -> Result<Option<Value>, OvsdbError> {
    let overflowed = rows.overflowed;
    match msg.get("method").and_then(Value::as_str) {
        Some("echo") => {
            let params = msg.get("params").cloned().unwrap_or(json!([]));
            return Ok(Some(
                json!({"id": msg["id"], "result": params, "error": null}),
            ));
        }
        Some("update") => {
            let params = msg.get("params").and_then(Value::as_array);
            if let Some([id, updates]) = params.map(Vec::as_slice) {
                if id == MONITOR && rows.apply(updates) {
                    publisher.publish(rows.table());
                }
            }
        }
        Some(_) => {}
        // The monitor's reply: every row as it is now, replacing what an earlier
        // connection said.
        None if msg.get("id") == Some(&json!(0)) => {
            if let Some(e) = msg.get("error").filter(|e| !e.is_null()) {
                return Err(OvsdbError::Refused {
                    path: path.to_path_buf(),
                    error: e.to_string().chars().take(MAX_VALUE).collect(),
                });
            }
            *rows = Interfaces::default();
            rows.apply(msg.get("result").unwrap_or(&Value::Null));
            publisher.publish(rows.table());
        }
        None => {}
    }
    if rows.overflowed && !overflowed {
        publisher.report(
            OvsdbError::TooManyRows {
                path: path.to_path_buf(),
            }
            .into(),
        );
    }
    Ok(None)
}

#[cfg(test)]
mod tests;
