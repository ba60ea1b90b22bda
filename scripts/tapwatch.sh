#!/usr/bin/env bash
# Set up, build and run tapwatch in one step: `bash scripts/tapwatch.sh [ARGS…]`
# (default `watch`). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo build --release --locked --bin tapwatch >&2
exec ./target/release/tapwatch "$@"
