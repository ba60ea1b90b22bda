use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// rustup cannot provide `rust-src` on these machines, so the eBPF crate is built by
/// Debian's Rust (rustc-web + rust-web-src), which `scripts/setup.sh` registers with rustup
/// under this name. Override with TAPWATCH_EBPF_TOOLCHAIN.
const EBPF_TOOLCHAIN: &str = "debian-bpf";

fn main() -> anyhow::Result<()> {
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
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .context(
        "building the eBPF object failed; run `bash scripts/setup.sh` first (it installs \
         Debian's Rust, rust-web-src, LLVM 22 and bpf-linker)",
    )
}
