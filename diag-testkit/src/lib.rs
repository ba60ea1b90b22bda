//! What tapwatch's tests and benchmarks need and the product does not: a process run inside
//! a network namespace with its output read as it comes ([`child`]), and a tmux terminal to
//! drive the full-screen view ([`tmux`]). A dev-dependency only: never in the binary.

pub mod child;
pub mod tmux;

use std::{io, process::Command};

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("`{cmd}` failed: {stderr}")]
    Command { cmd: String, stderr: String },
    #[error("`{cmd}` could not run: {source}")]
    Spawn {
        cmd: String,
        #[source]
        source: io::Error,
    },
    #[error("timed out waiting for {what}; screen:\n{screen}")]
    Timeout { what: String, screen: String },
}

/// Runs a command, turning a non-zero exit into an error that quotes its stderr.
pub fn run(cmd: &str, args: &[&str]) -> Result<String, HarnessError> {
    let line = format!("{cmd} {}", args.join(" "));
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|source| HarnessError::Spawn {
            cmd: line.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(HarnessError::Command {
            cmd: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
