#!/usr/bin/env bash
# Gossipsub behind a real uplink (issue #12: does the Host's send gate let staggered sending take copies
# back, as the simulator's uplink model says?). One publisher in namespace A sends large messages through
# the delay line (scripts/wan.sh: a rate-limited bottleneck, tail-drop queue of one bandwidth-delay
# product) to N subscribers in namespace B that also mesh with each other. Publisher without and with
# `HostConfig::send_limit`, A B A B; prints a markdown table. Needs root and iproute2.
#
#   scripts/bench-gossip-uplink.sh [--rate 100m] [--delay-ms 10] [-- BENCH ARGS]
#
# BENCH ARGS go to the bench binary (crates/hyphae/benches/gossip_uplink.rs): --subscribers N (8),
# --messages M (20), --size BYTES (131072), --limit BYTES (65536), --runs R (2).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=100m; DELAY=10
while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE="$2"; shift 2 ;;
    --delay-ms) DELAY="$2"; shift 2 ;;
    --) shift; break ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
  esac
done
BIN="$(cargo bench -q -p hyphae --bench gossip_uplink --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("name") == "gossip_uplink" and m.get("executable"):
        print(m["executable"])')"
[ -x "$BIN" ] || { echo "bench-gossip-uplink: no bench binary" >&2; exit 1; }
scripts/wan.sh up --name hygs --delay-ms "$DELAY" --rate "$RATE"
trap 'scripts/wan.sh down --name hygs >/dev/null' EXIT
echo "path: ${DELAY} ms one way, ${RATE}bit/s each direction"
ip netns exec hygs-a "$BIN" --netns hygs-b --peer-ip 10.99.0.2 "$@"
