#!/usr/bin/env bash
# hyphae daemon vs go's p2pd (interop/setup.sh installs it): time from start to a ready control socket
# (the "Peer Addrs:" lines printed) and resident memory after 3 s idle, A B A B.
#   scripts/bench-daemon.sh [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p hyphae-cli
ROUNDS="${1:-3}"
HYPHAE="$PWD/target/release/hyphae"
P2PD="$PWD/interop/.peers/p2pd"
[ -x "$P2PD" ] || { echo "run interop/setup.sh first (go's p2pd)"; exit 1; }
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

one() { # name, command...
  local name=$1; shift
  local sock="$dir/$name.sock" out="$dir/$name.out"
  rm -f "$sock"
  local t0 t1 pid
  t0=$(date +%s%N)
  "$@" -listen "/unix$sock" -hostAddrs /ip4/127.0.0.1/tcp/0 > "$out" 2>/dev/null &
  pid=$!
  until grep -q "^/ip4/" "$out" 2>/dev/null; do sleep 0.002; done
  t1=$(date +%s%N)
  sleep 3
  local rss
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  printf "| %s | %d | %.1f |\n" "$name" $(( (t1 - t0) / 1000000 )) "$(echo "$rss / 1024" | bc -l)"
}

echo "| daemon | ms to a ready control socket | idle RSS MiB (after 3 s) |"
echo "|---|---:|---:|"
for _ in $(seq "$ROUNDS"); do
  one hyphae "$HYPHAE" daemon
  one go-p2pd "$P2PD"
done
