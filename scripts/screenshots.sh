#!/usr/bin/env bash
# Makes the README's two screenshots from a real lab run (needs root, after setup.sh):
#   docs/live-view.png  the live view at 100×30 in tmux when the lab's VM has recovered:
#                       the terminal's text as tmux captured it, drawn by chromium in a
#                       monospace font (the terminal's colours are not kept)
#   docs/report.png     the report page of the lab's two bundles (analyze SRC DST --html),
#                       as chromium draws it
# Usage: sudo bash scripts/screenshots.sh   (from the repository's root)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet --bin tapwatch
tw="$PWD/target/debug/tapwatch"
work=$(mktemp -d)
session="tw-shots-$$"
cleanup() {
    tmux kill-session -t "$session" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

shot() { # shot URL PNG WIDTH HEIGHT
    unshare -n chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --user-data-dir="$work/profile" --window-size="$3,$4" --screenshot="$2" "$1" \
        >/dev/null 2>&1
}

# The live view, in a terminal of on-call size, with the selected VM's details open.
tmux new-session -d -s "$session" -x 100 -y 30 \
    "$tw lab --reachable-time 6 --record $work/lab; sleep 600"
for _ in $(seq 600); do
    if tmux capture-pane -p -t "$session" | grep -q RECOVERED; then break; fi
    sleep 0.1
done
tmux send-keys -t "$session" Enter
sleep 0.5 # one redraw (the view draws ten times a second)
{
    printf '<!DOCTYPE html><meta charset="utf-8"><style>body{margin:0;background:#fff}'
    printf 'pre{font:14px/1.2 "DejaVu Sans Mono",monospace;margin:8px;color:#111}</style><pre>'
    tmux capture-pane -p -t "$session" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g'
    printf '</pre>'
} >"$work/live.html"
shot "file://$work/live.html" docs/live-view.png 880 560
tmux send-keys -t "$session" q
for _ in $(seq 600); do
    [ -f "$work/lab/dst/report.html" ] && break
    sleep 0.1
done
tmux kill-session -t "$session"

# The report page of the two hypervisors' bundles.
"$tw" analyze "$work/lab/src" "$work/lab/dst" --html "$work/report.html" >/dev/null
shot "file://$work/report.html" docs/report.png 760 1100
echo "wrote docs/live-view.png and docs/report.png"
