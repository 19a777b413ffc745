#!/usr/bin/env bash
# The eclipse attack of scenarios/dht-eclipse.hyp, measured without and with each of the DHT's defenses
# and for 5, 20 and 50 sybils: prints one table row per run (target lookups that found the provider,
# how many lookups the density check widened, ordinary lookups' success and p50, wall time).
#   scripts/bench-eclipse.sh            # the full table (about 15 runs of 1-4 minutes)
#   scripts/bench-eclipse.sh 20         # only the 20-sybil rows
# HYPHAE_BIN picks the binary (default: a release build of this tree); HYPHAE_SIM_THREADS as for `hyphae sim`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${HYPHAE_BIN:-target/release/hyphae}
[ -n "${HYPHAE_BIN:-}" ] || cargo build --release -q -p hyphae-cli
ONLY=${1:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# name | honest nodes' settings (each defense alone with the classic provide, as go ships it)
defenses=(
  "none|diversity=off density=off provide=classic"
  "table filter (go's)|diversity=table density=off provide=classic"
  "table + lookup filter|diversity=lookup density=off provide=classic"
  "density check|diversity=off provide=classic"
  "disjoint paths (3)|diversity=off density=off disjoint=3 provide=classic"
  "all (hyphae's default)|"
  "optimistic provide alone|diversity=off density=off"
)
# sybils | their subnet | which defenses (indexes into the list above)
runs=(
  "5|shared|0 1 5"
  "20|shared|0 1 2 3 4 5 6"
  "50|shared|0 1 3 5"
  "20|own|0 3 4 5"
)

printf '| sybils | sybil addresses | defenses | target lookups that found the provider | lookups widened | other lookups ok | lookup p50 | wall |\n'
printf '|---:|---|---|---:|---:|---:|---:|---:|\n'
for r in "${runs[@]}"; do
  IFS='|' read -r n subnet which <<<"$r"
  [ -z "$ONLY" ] || [ "$ONLY" = "$n" ] || continue
  for d in $which; do
    IFS='|' read -r name settings <<<"${defenses[$d]}"
    f="$tmp/run.hyp"
    sed -e "s/^nodes servers 300 dht=server idle=30s\$/& $settings/" \
        -e "s/^nodes clients 700 dht=client undialable idle=30s\$/& $settings/" \
        -e "s/^nodes sybils 20 dht=server subnet=shared eclipse\$/nodes sybils $n dht=server subnet=$subnet eclipse/" \
        -e '/^assert/d' scenarios/dht-eclipse.hyp >"$f"
    out=$("$BIN" sim "$f" 2>&1)
    col() { awk -v m="$1" '$1 == m { print $(NF) }' <<<"$out"; }
    wall=$(grep -o 'wall time [0-9.]*s' <<<"$out" | awk '{print $3}')
    addr=$([ "$subnet" = shared ] && echo "one /32" || echo "a /32 each")
    printf '| %s | %s | %s | %s | %s | %s | %s ms | %s |\n' "$n" "$addr" "$name" \
      "$(col dht_target_success_rate)" "$(col dht_widened)" "$(col dht_lookup_success_rate)" "$(col dht_lookup_p50_ms)" "$wall"
  done
done
