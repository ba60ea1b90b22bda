#!/usr/bin/env bash
# Set up, build and run tapwatch in one step (needs root):
#   bash scripts/tapwatch.sh            watch this host's VM taps, or, when it has none,
#                                       run the built-in migration lab
#   bash scripts/tapwatch.sh ARGS…      run `tapwatch ARGS…` (e.g. `watch --json`, `lab --json`)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
cargo build --release --locked --bin tapwatch >&2
if [ $# -eq 0 ]; then
    if ip -o link show | grep -qE '^[0-9]+: (tap|vnet)'; then
        set -- watch
    else
        echo "tapwatch: no VM taps (tap*, vnet*) on this host: running the built-in migration lab" >&2
        set -- lab
    fi
fi
exec ./target/release/tapwatch "$@"
