#!/usr/bin/env bash
# The test command: installs the interop peers (idempotent), checks formatting and lints (warnings are
# errors), runs every test, then a fuzz smoke run.
set -euo pipefail
cd "$(dirname "$0")"
# A one-off build gains nothing from incremental caches, and they cost gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# The interop peers install (downloads, and the rust-libp2p peer's own cargo build) beside the lint pass:
# on a fresh machine both take minutes, and neither needs the other.
mkdir -p target
bash interop/setup.sh >target/interop-setup.log 2>&1 &
setup=$!
trap 'kill "$setup" 2>/dev/null || true' EXIT
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
if ! wait "$setup"; then
  cat target/interop-setup.log
  echo "interop/setup.sh failed (above)"
  exit 1
fi
cat target/interop-setup.log
cargo test --workspace
echo
echo "== interop matrix (target/interop-matrix.md) =="
cat target/interop-matrix.md 2>/dev/null || true
if [ "${HYPHAE_SKIP_FUZZ:-0}" != "1" ]; then
  bash fuzz/smoke.sh
fi
