#!/usr/bin/env bash
# The test command: installs the interop peers (idempotent), checks formatting and lints (warnings are
# errors), runs every test, then a fuzz smoke run.
set -euo pipefail
cd "$(dirname "$0")"
# A one-off build gains nothing from incremental caches, and they cost gigabytes of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
bash interop/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
echo
echo "== interop matrix (target/interop-matrix.md) =="
cat target/interop-matrix.md 2>/dev/null || true
if [ "${HYPHAE_SKIP_FUZZ:-0}" != "1" ]; then
  bash fuzz/smoke.sh
fi
