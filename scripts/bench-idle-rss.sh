#!/usr/bin/env bash
# Idle memory of a node: VmRSS 3 s after start of `hyphae node` on one TCP address, the default node, and
# the daemon, ROUNDS times each (default 2). HYPHAE_BIN picks the binary (default: a release build here).
#   scripts/bench-idle-rss.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${HYPHAE_BIN:-target/release/hyphae}
[ -n "${HYPHAE_BIN:-}" ] || cargo build --release --quiet -p hyphae-cli
ROUNDS="${1:-2}"
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

rss() { # name, args...
  local name=$1; shift
  "$BIN" "$@" >"$dir/out" 2>&1 &
  local pid=$!
  sleep 3
  local kb code
  kb=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  code=$(awk -v bin="$(readlink -f "$BIN")" '$1 ~ /^[0-9a-f]+-/ {x = ($2 ~ /x/ && $6 == bin)} x && /^Rss:/ {s += $2} END {print s + 0}' "/proc/$pid/smaps")
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  printf '| %s | %.1f | %.2f |\n' "$name" "$(echo "$kb / 1000" | bc -l)" "$(echo "$code / 1000" | bc -l)"
}

echo "| command | idle RSS MB | of it, hyphae's code MB |"
echo "|---|---:|---:|"
for _ in $(seq "$ROUNDS"); do
  rss "node --listen /ip4/127.0.0.1/tcp/0" node --listen /ip4/127.0.0.1/tcp/0
  rss "node (default addresses)" node
  rss "daemon" daemon -listen "/unix$dir/p2pd.sock" -hostAddrs /ip4/127.0.0.1/tcp/0
done
