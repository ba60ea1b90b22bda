//! Where the run's records go: one pipeline per run ([`pipeline`]) feeds the verdict engine
//! and hands its results to every output: NDJSON ([`json`]), text and tables ([`text`]),
//! the bug-report bundle ([`bundle`]) and the live view ([`tui`]).

pub mod bundle;
mod health;
pub mod http;
pub mod json;
pub mod metrics;
pub mod own_dir;
pub mod page;
pub mod pipeline;
pub mod recorder;
pub mod story;
pub mod text;
pub mod tui;
