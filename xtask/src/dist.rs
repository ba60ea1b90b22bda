//! `cargo xtask dist`: the release binary (the eBPF object inside) and, under
//! `target/dist/`, a .deb (cargo-deb), an .rpm (cargo-generate-rpm) and a .tar.gz, each with
//! the binary, man pages, bash/zsh/fish completions, the systemd unit and alert rules of
//! `deploy/`, README and licences. What goes where is in diag-user/Cargo.toml
//! (`[package.metadata.deb]`, `[package.metadata.generate-rpm]`); the tarball follows the
//! same layout.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{cargo, cargo_cmd, run};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where cargo puts what it builds (CARGO_TARGET_DIR, else the workspace's target/).
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => std::env::current_dir().unwrap_or_default().join(d),
        None => root.join("target"),
    }
}

/// The workspace's version, from its Cargo.toml.
fn version(root: &Path) -> Result<String> {
    let toml = std::fs::read_to_string(root.join("Cargo.toml"))?;
    toml.lines()
        .find_map(|l| {
            let v = l.trim().strip_prefix("version")?.trim().strip_prefix('=')?;
            Some(v.trim().trim_matches('"').to_string())
        })
        .context("no version in the workspace's Cargo.toml")
}

pub fn dist() -> Result<()> {
    let root = root();
    let version = version(&root)?;
    // Always under the workspace: the packages' metadata names the assets by that path.
    let out = root.join("target/dist");
    if out.exists() {
        std::fs::remove_dir_all(&out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(&out)?;

    let release = build_release(&root)?;
    let bin = release.join("tapwatch");
    check_binary(&bin)?;
    let assets = make_assets(&root, &release)?;
    packages(&root, &out)?;
    tarball(&root, &out, &version, &bin, &assets)?;
    list_made(&out)
}

/// The release binary (the eBPF object inside, and tapwatch-gen-assets beside it); the
/// directory it is in.
fn build_release(root: &Path) -> Result<PathBuf> {
    eprintln!("dist: building the release binary");
    cargo(&[
        "build",
        "--release",
        "--locked",
        "-p",
        "diag-user",
        "--bins",
    ])?;
    Ok(target_dir(root).join("release"))
}

/// The binary must start on glibc 2.34 (RHEL 9, Ubuntu 22.04) and without libpcap: the
/// test suite's own check, on this binary.
fn check_binary(bin: &Path) -> Result<()> {
    eprintln!("dist: checking what the binary needs from the system");
    run(cargo_cmd()
        .args([
            "test",
            "--locked",
            "-p",
            "diag-user",
            "--test",
            "binary",
            "-q",
        ])
        .env("TAPWATCH_BINARY", bin))
}

/// Man pages and completions, made by tapwatch-gen-assets; the directory they are in.
fn make_assets(root: &Path, release: &Path) -> Result<PathBuf> {
    eprintln!("dist: man pages and completions");
    // Outside target/: cargo-deb takes any path under target/ for one it should build.
    let assets = root.join("dist/assets");
    if assets.exists() {
        std::fs::remove_dir_all(&assets)?;
    }
    run(Command::new(release.join("tapwatch-gen-assets")).arg(&assets))?;
    // Man pages go compressed, as Debian and RHEL ship them.
    for page in std::fs::read_dir(assets.join("man"))? {
        run(Command::new("gzip").arg("-9nf").arg(page?.path()))?;
    }
    Ok(assets)
}

/// The .deb and the .rpm, into `out`, as diag-user/Cargo.toml's metadata lays them out.
fn packages(root: &Path, out: &Path) -> Result<()> {
    eprintln!("dist: .deb");
    cargo(&[
        "deb",
        "-p",
        "diag-user",
        "--no-build",
        "--output",
        &out.to_string_lossy(),
    ])?;
    eprintln!("dist: .rpm");
    cargo(&[
        "generate-rpm",
        "-p",
        "diag-user",
        "--target-dir",
        &target_dir(root).to_string_lossy(),
        "-o",
        &format!("{}/", out.display()),
    ])
}

/// The .tar.gz, into `out`: the packages' files under one directory.
fn tarball(root: &Path, out: &Path, version: &str, bin: &Path, assets: &Path) -> Result<()> {
    eprintln!("dist: .tar.gz");
    let name = format!("tapwatch-{version}-x86_64-linux-gnu");
    let stage = out.join(&name);
    stage_files(root, &stage, bin, assets)?;
    // Reproducible: sorted, owned by root, one time for every file.
    let mtime = std::env::var("SOURCE_DATE_EPOCH").unwrap_or_else(|_| "0".into());
    run(Command::new("tar").current_dir(out).args([
        "--sort=name",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        &format!("--mtime=@{mtime}"),
        "-czf",
        &format!("{name}.tar.gz"),
        &name,
    ]))?;
    std::fs::remove_dir_all(&stage)?;
    Ok(())
}

/// The tarball's files, copied into `stage`: the stripped binary, man pages, completions,
/// deploy/'s files, README and licences.
fn stage_files(root: &Path, stage: &Path, bin: &Path, assets: &Path) -> Result<()> {
    for d in ["man", "completions", "deploy"] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    std::fs::copy(bin, stage.join("tapwatch"))?;
    run(Command::new("strip").arg(stage.join("tapwatch")))?;
    for dir in ["man", "completions"] {
        for f in std::fs::read_dir(assets.join(dir))? {
            let f = f?;
            std::fs::copy(f.path(), stage.join(dir).join(f.file_name()))?;
        }
    }
    for f in [
        "tapwatch.service",
        "tapwatch-alerts.yml",
        "grafana-tapwatch.json",
    ] {
        let src = root.join("deploy").join(f);
        if src.exists() {
            std::fs::copy(&src, stage.join("deploy").join(f))?;
        }
    }
    for f in ["README.md", "LICENSE-MIT", "LICENSE-APACHE"] {
        std::fs::copy(root.join(f), stage.join(f))?;
    }
    Ok(())
}

/// Checks that `out` has the three packages, and lists them with their sizes.
fn list_made(out: &Path) -> Result<()> {
    let mut made = Vec::new();
    for f in std::fs::read_dir(out)? {
        let f = f?;
        let n = f.file_name().to_string_lossy().into_owned();
        if [".deb", ".rpm", ".tar.gz"].iter().any(|e| n.ends_with(e)) {
            made.push((n, f.metadata()?.len()));
        }
    }
    made.sort();
    if made.len() != 3 {
        bail!(
            "expected a .deb, an .rpm and a .tar.gz in {}, found {made:?}",
            out.display()
        );
    }
    println!("{}:", out.display());
    for (n, len) in made {
        println!("  {n:<48} {:>6.1} MB", len as f64 / 1e6);
    }
    Ok(())
}
