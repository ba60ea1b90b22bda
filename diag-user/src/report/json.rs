//! NDJSON output: one record a line.

use std::io::{self, Write};

use crate::model::{Record, Sink};

/// NDJSON: one object a line.
pub struct JsonSink<W: Write>(pub W);

impl<W: Write> Sink for JsonSink<W> {
    fn emit(&mut self, rec: &Record) -> io::Result<()> {
        serde_json::to_writer(&mut self.0, rec)?;
        self.0.write_all(b"\n")
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}
