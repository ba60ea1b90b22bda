use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _};
use aya_build::{Package, Toolchain};
use sha2::{Digest as _, Sha256};

/// rustup cannot provide `rust-src` on these machines, so the eBPF crate is built by
/// Debian's Rust (rustc-web + rust-web-src), which `scripts/setup.sh` registers with rustup
/// under this name. Override with TAPWATCH_EBPF_TOOLCHAIN.
const EBPF_TOOLCHAIN: &str = "debian-bpf";
/// Set in the child that runs aya-build (see `main`).
const CHILD: &str = "TAPWATCH_BUILD_EBPF_CHILD";
/// The eBPF object's name in OUT_DIR (the diag-ebpf binary).
const OBJECT: &str = "diag";

fn main() -> anyhow::Result<()> {
    if std::env::var_os(CHILD).is_some() {
        return build_ebpf();
    }
    // aya-build relays the eBPF build's every line as `cargo:warning`, so a normal build
    // would print a page of "warning:" lines that are no warnings. The build runs in a
    // child (this script again); its directives pass on and its output is shown only when
    // it fails.
    let me = std::env::current_exe().context("the build script's own path")?;
    let out = Command::new(&me)
        .env(CHILD, "1")
        .output()
        .with_context(|| format!("running {}", me.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let mut directives = std::io::stdout().lock();
    for line in stdout.lines() {
        let quiet = line.starts_with("cargo:warning=") || line.starts_with("cargo::warning=");
        if !quiet || !out.status.success() {
            writeln!(directives, "{line}")?;
        }
    }
    if !out.status.success() {
        std::io::stderr().write_all(&out.stderr)?;
        bail!(
            "building the eBPF object failed (its output is above); run `bash scripts/setup.sh` \
             first (it installs Debian's Rust, rust-web-src, LLVM 22 and bpf-linker)"
        );
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR")?);
    let object = std::fs::read(out_dir.join(OBJECT)).context("reading the eBPF object")?;
    let hash = Sha256::digest(&object);
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    println!("cargo:rustc-env=TAPWATCH_EBPF_SHA256={hex}");
    println!("cargo:rustc-env=TAPWATCH_GIT_COMMIT={}", git_commit());
    Ok(())
}

/// The commit the binary is built from, or "unknown" outside a git checkout (a source
/// tarball); TAPWATCH_GIT_COMMIT overrides it (a package build from an export).
fn git_commit() -> String {
    println!("cargo:rerun-if-env-changed=TAPWATCH_GIT_COMMIT");
    if let Ok(c) = std::env::var("TAPWATCH_GIT_COMMIT") {
        return c;
    }
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(&manifest)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    // A checkout changes HEAD, a commit the reflog (and a loose ref, or packed-refs). Only
    // files that exist are named: cargo reruns a build script on every build for a missing
    // one. `--git-path` finds them in a worktree too.
    let mut watched: Vec<String> = ["HEAD", "logs/HEAD", "packed-refs"]
        .map(String::from)
        .into();
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for path in watched {
        if let Some(p) = git(&["rev-parse", "--git-path", &path]) {
            let p = Path::new(&manifest).join(p);
            if p.exists() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

fn build_ebpf() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=TAPWATCH_EBPF_TOOLCHAIN");
    let toolchain =
        std::env::var("TAPWATCH_EBPF_TOOLCHAIN").unwrap_or_else(|_| EBPF_TOOLCHAIN.to_string());
    // -Z build-std=core needs unstable flags on a stable compiler; aya-build passes it only
    // when it sees RUSTC_BOOTSTRAP=1. Set here so a plain `cargo build` works.
    // SAFETY: the build script is single-threaded at this point.
    unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };

    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = packages
        .iter()
        .find(|p| p.name.as_str() == "diag-ebpf")
        .ok_or_else(|| anyhow!("diag-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("diag-ebpf manifest has no parent directory"))?;
    // The kernel programs are built from diag-common too (the classifier, the observe
    // step, the map values): a change there must rebuild the object, not only diag-ebpf's.
    if let Some(common) = packages.iter().find(|p| p.name.as_str() == "diag-common") {
        if let Some(dir) = common.manifest_path.parent() {
            println!("cargo:rerun-if-changed={dir}");
        }
    }
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
}
