//! Writes tapwatch's man pages and shell completions into a directory, from the one
//! command-line definition (`cargo xtask dist` runs it; the packages ship the result):
//! DIR/man/tapwatch.1, tapwatch-<command>.1, DIR/completions/tapwatch.bash, _tapwatch,
//! tapwatch.fish.

// The binary's command line, shared as source: this program uses only its definition.
#[allow(dead_code)]
#[path = "../cli.rs"]
mod cli;

use std::path::PathBuf;

use anyhow::Context as _;
use clap_complete::Shell;

fn main() -> anyhow::Result<()> {
    let Some(dir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        anyhow::bail!("usage: tapwatch-gen-assets DIR");
    };
    let cmd = public(cli::command());
    let man = dir.join("man");
    let completions = dir.join("completions");
    for d in [&man, &completions] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    clap_mangen::generate_to(cmd.clone(), &man).context("writing the man pages")?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let mut cmd = cmd.clone();
        clap_complete::generate_to(shell, &mut cmd, "tapwatch", &completions)
            .with_context(|| format!("writing the {shell} completions"))?;
    }
    Ok(())
}

/// The command without its hidden subcommands (the cleanup helper tapwatch starts itself):
/// clap_mangen leaves them out, but clap_complete would offer them. clap cannot remove a
/// subcommand, so the command is rebuilt from its parts.
fn public(cmd: clap::Command) -> clap::Command {
    let mut fresh = clap::Command::new(cmd.get_name().to_string())
        .args(cmd.get_arguments().cloned())
        .subcommands(cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned());
    if let Some(about) = cmd.get_about() {
        fresh = fresh.about(about.clone());
    }
    if let Some(long) = cmd.get_long_about() {
        fresh = fresh.long_about(long.clone());
    }
    if let Some(v) = cmd.get_version() {
        fresh = fresh.version(v.to_string());
    }
    fresh
}
