#!/usr/bin/env bash
# Installs everything a fresh Debian 12 hypervisor or CI machine lacks to build and test
# tapwatch. Idempotent: a second run only checks and returns within a second or two.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup: must run as root (it installs Debian packages); try: sudo $0" >&2
    exit 1
fi

# Debian's own Rust builds the eBPF crate (it ships the matching core source for
# -Z build-std); LLVM 22 is what both that rustc and bpf-linker use. The rest serves the
# pcap backend and the tests (tcpdump/tshark check captures, tmux drives the TUI,
# Prometheus scrapes `tapwatch serve` and promtool checks its metrics and alert rules,
# systemd-analyze checks the service unit; debootstrap makes the clean Debian root the
# package is installed into, zstd caches it, rpm reads the .rpm back, objdump (binutils)
# checks what the binary needs from glibc; setcap gives a test binary capabilities).
PACKAGES=(
    rustc-web cargo-web rust-web-src
    llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev libxml2-dev
    libpcap0.8 tcpdump tshark bpftool iproute2 tmux procps
    prometheus systemd
    debootstrap zstd rpm binutils libcap2-bin
    # ovsdb-server, ovsdb-tool and ovs-vsctl: the identity tests run their own OVSDB server
    # (no OVS kernel module, no ovs-vswitchd).
    openvswitch-switch openvswitch-common
    # A venv for kubernetes-validate (below).
    python3-venv
    # The report page's tests open it in a real browser (headless, in a namespace with no
    # network), read what it shows and take its screenshot; the README's screenshots are
    # made the same way. DejaVu is the font the page asks for first.
    chromium fonts-dejavu-core
)

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # tshark asks whether non-root users may capture; answer for it.
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The tests run their own Prometheus in a namespace; a system one that this script
    # just installed is not wanted running.
    if [[ " ${missing[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    # Likewise Open vSwitch's own service: the tests start their own ovsdb-server.
    if [[ " ${missing[*]} " == *" openvswitch-switch "* ]] && [ -d /run/systemd/system ]; then
        systemctl disable --now openvswitch-switch >/dev/null 2>&1 || true
    fi
fi

CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
BPF_LINKER_VERSION=0.13.0
if ! "$CARGO_BIN/bpf-linker" --version 2>/dev/null | grep -q "$BPF_LINKER_VERSION"; then
    log "building bpf-linker $BPF_LINKER_VERSION against LLVM 22 (about 90 s)"
    # Without the prefixes the build finds /usr/bin/llvm-config (LLVM 14) and fails to link.
    LLVM_PREFIX=/usr/lib/llvm-22 LLVM_SYS_221_PREFIX=/usr/lib/llvm-22 \
        cargo install --locked bpf-linker --version "$BPF_LINKER_VERSION" \
        --no-default-features --features llvm-22
fi

# `cargo xtask dist` packages with these (kept tools, pinned: the versions checked here).
for tool in cargo-deb@3.8.0 cargo-generate-rpm@0.21.1; do
    name=${tool%@*} version=${tool#*@}
    if ! "$CARGO_BIN/$name" --version 2>/dev/null | grep -q " $version\$"; then
        log "installing $name $version (one to five minutes)"
        cargo install --locked "$name" --version "$version"
    fi
done

# The Kubernetes manifest's test validates it against Kubernetes' own JSON schemas, which
# kubernetes-validate (PyPI) carries for every release since 1.25: no cluster, no network
# at test time. In a venv of its own, pinned, made from Debian's Python so that any user
# can run it (`cargo test` as a normal user runs the manifest's test too); a venv made from
# a Python under root's home (pyenv) is made again.
KV_VERSION=1.37.0
KV_VENV=/opt/tapwatch-tools/venv
if ! grep -qx 'home = /usr/bin' "$KV_VENV/pyvenv.cfg" 2>/dev/null ||
    ! "$KV_VENV/bin/kubernetes-validate" --version 2>/dev/null | grep -q "$KV_VERSION"; then
    log "installing kubernetes-validate $KV_VERSION into $KV_VENV"
    rm -rf "$KV_VENV"
    /usr/bin/python3 -m venv "$KV_VENV"
    "$KV_VENV/bin/pip" install -q "kubernetes-validate==$KV_VERSION"
fi

# rustup cannot download rust-src here, so the eBPF crate is built by Debian's toolchain,
# registered under a name that diag-user's build.rs asks for. Linking downloads nothing.
if command -v rustup >/dev/null 2>&1; then
    if ! rustup toolchain list | grep -q '^debian-bpf'; then
        log "registering Debian's Rust toolchain with rustup as debian-bpf"
        rustup toolchain link debian-bpf /usr
    fi
fi
log "ready"
