#!/usr/bin/env bash
# Short fuzzing run of every target (CI smoke). FUZZ_SECONDS per target (default 5: CI time; the longer runs are by hand).
# Uses cargo-fuzz on the stable toolchain (RUSTC_BOOTSTRAP=1 enables the sanitizer flags it needs).
set -euo pipefail
cd "$(dirname "$0")"
SECS="${FUZZ_SECONDS:-5}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --quiet
fi
export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list)
# All targets in one build (their crates compile and link side by side; one `cargo fuzz run` per target
# built them one by one), with the flags `cargo fuzz run` uses, so each run below finds its binary.
echo "fuzz smoke: building $(echo "$targets" | wc -l) targets"
mkdir -p corpus
# Dependencies built once per machine (see scripts/target-cache.sh).
. ../scripts/target-cache.sh
link_target_cache . fuzz-target
cargo fuzz build >/dev/null 2>corpus/build.log || { tail -n 40 corpus/build.log; exit 1; }
# Two targets at a time: a libFuzzer run takes one core, and the machine CI runs on has two.
run_one() {
  local t=$1
  mkdir -p "corpus/$t"
  if cargo fuzz run "$t" "corpus/$t" -- -max_total_time="$SECS" -max_len=4096 > "corpus/$t.log" 2>&1; then
    echo "fuzz smoke: $t (${SECS}s): $(tail -n 1 "corpus/$t.log")"
  else
    grep -v '^#' "corpus/$t.log" | tail -n 40
    echo "fuzz smoke: $t FAILED; reproduce with: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $t artifacts/$t/<crash file>"
    return 1
  fi
}
export -f run_one
export SECS
if ! printf '%s\n' $targets | xargs -P 2 -I{} bash -c 'run_one {}'; then
  echo "fuzz smoke: a target failed (above)"
  exit 1
fi
echo "fuzz smoke: all targets ran without a crash"
