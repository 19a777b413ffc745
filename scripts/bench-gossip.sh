#!/usr/bin/env bash
# Gossipsub relay throughput, hyphae vs rust-libp2p (release builds of both), A B A B in one run.
#   scripts/bench-gossip.sh [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --manifest-path interop/rust-peer/Cargo.toml
cargo bench -p hyphae --bench gossip_relay -- "${1:-20000}"
