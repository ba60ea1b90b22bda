#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, then formatting, lints, unit and
# kernel integration tests (`cargo xtask check`). Needs root (namespaces, taps, BPF).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo xtask check
