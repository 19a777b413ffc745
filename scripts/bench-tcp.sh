#!/usr/bin/env bash
# Side-by-side loopback throughput: hyphae (Host API bench) vs rust-libp2p's perf binary (libp2p-perf 0.3.0),
# both TCP + Noise + Yamux, one stream, BYTES each way (default 1 GiB). Installs libp2p-perf if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
BYTES="${1:-1073741824}"
PERF="$(command -v perf-libp2p || true)"
[ -n "$PERF" ] || PERF="$HOME/.cargo/bin/perf"
if ! "$PERF" --help 2>/dev/null | grep -q run-server; then
  cargo install libp2p-perf --version 0.3.0   # not --locked: its lockfile pins a `time` that no longer builds
fi
PORT=$((20000 + RANDOM % 20000))
"$PERF" --run-server --server-address 127.0.0.1:$PORT >/dev/null 2>&1 &
SRV=$!
trap 'kill $SRV 2>/dev/null' EXIT
sleep 1
echo "## rust-libp2p 0.5x perf (libp2p-perf 0.3.0), tcp"
"$PERF" --server-address 127.0.0.1:$PORT --transport tcp --upload-bytes "$BYTES" --download-bytes 0 2>/dev/null | tail -1
"$PERF" --server-address 127.0.0.1:$PORT --transport tcp --upload-bytes 0 --download-bytes "$BYTES" 2>/dev/null | tail -1
"$PERF" --server-address 127.0.0.1:$PORT --transport tcp --upload-bytes 1 --download-bytes 1 2>/dev/null | tail -1
echo "## hyphae"
cargo bench -q -p hyphae --bench throughput -- "$BYTES" 2>/dev/null | grep '^|'
