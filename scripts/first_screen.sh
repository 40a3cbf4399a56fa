#!/usr/bin/env bash
# Time from `make run` (upquant tui) to the first screen showing data, in a real terminal (tmux).
# Usage: scripts/first_screen.sh [extra upquant tui args]; prints seconds to banner and to first signal.
set -euo pipefail
cd "$(dirname "$0")/.."
session="uq-first-screen-$$"
start=$(date +%s.%N)
tmux new-session -d -s "$session" -x 120 -y 40 ".venv/bin/upquant tui $*"
trap 'tmux kill-session -t "$session" 2>/dev/null || true' EXIT
banner="" signal=""
for _ in $(seq 1 600); do
  screen=$(tmux capture-pane -p -t "$session" 2>/dev/null || true)
  now=$(date +%s.%N)
  if [ -z "$banner" ] && grep -qE "REPLAY|DEMO|LIVE" <<<"$screen"; then banner=$(echo "$now - $start" | bc); fi
  if [ -z "$signal" ] && grep -qE "^.*[0-9]{2}:[0-9]{2} +(buy|sell|hold)" <<<"$screen"; then signal=$(echo "$now - $start" | bc); break; fi
  sleep 0.1
done
echo "banner (session open): ${banner:-never} s"
echo "first signal on screen: ${signal:-never} s"
tmux capture-pane -p -t "$session" | head -12
