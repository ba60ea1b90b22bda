//! NDJSON output: one record a line, each with the record format's version.

use std::io::{self, Write};

use crate::model::{netns, Line, Record, Sink, SCHEMA_VERSION};

/// NDJSON: one object a line.
pub struct JsonSink<W: Write>(pub W);

impl<W: Write> Sink for JsonSink<W> {
    fn emit(&mut self, rec: &Record) -> io::Result<()> {
        let line = Line {
            record: rec,
            schema: SCHEMA_VERSION,
        };
        let mut bytes = netns::split_line(&serde_json::to_vec(&line)?);
        bytes.push(b'\n');
        self.0.write_all(&bytes)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verdict::fixtures::*;

    /// The bytes of a record are those of tapwatch 0.1 (the contract), then the version.
    #[test]
    fn lines_keep_their_bytes_and_say_their_version() {
        let mut out = Vec::new();
        JsonSink(&mut out)
            .emit(&attached(0, "tapA", OLD, "routed"))
            .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{\"type\":\"attached\",\"ts\":\"2026-09-21T14:13:20.000000Z\",\"ifname\":\"tapA\",\
             \"ifindex\":7,\"mac\":\"fe:16:3e:aa:bb:cc\",\"mode\":\"routed\",\"backend\":\"ebpf\",\
             \"mtu\":1500,\"schema\":2}\n"
        );
    }
}
