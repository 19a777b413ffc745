#!/usr/bin/env bash
# The eclipse attack of scenarios/dht-eclipse.hyp, measured without and with each of the DHT's defenses
# and for 5, 20 and 50 sybils: prints one table row per run (target lookups that found the provider,
# how many lookups the density check widened, ordinary lookups' success and p50, wall time). The last
# rows put the sybils 2 ms from every honest node (an attacker with hosts in every region: its answers
# come first, and proximity neighbour selection prefers it) with hyphae's defaults, proximity off and on.
#   scripts/bench-eclipse.sh            # the full table (19 runs of 2-5 minutes)
#   scripts/bench-eclipse.sh 20         # only the 20-sybil rows
#   scripts/bench-eclipse.sh 20 near    # only the 20-sybil rows with sybils near everyone (or: far)
# HYPHAE_BIN picks the binary (default: a release build of this tree); HYPHAE_SIM_THREADS as for `hyphae sim`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${HYPHAE_BIN:-target/release/hyphae}
[ -n "${HYPHAE_BIN:-}" ] || cargo build --release -q -p hyphae-cli
ONLY=${1:-}
WHERE=${2:-}
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
  "all + proximity=on|proximity=on"
)
# sybils | their subnet | which defenses (indexes into the list above) | sybils' latency (far: 20 ms
# one way like everyone in a region; near: 2 ms to everyone)
runs=(
  "5|shared|0 1 5|far"
  "20|shared|0 1 2 3 4 5 6|far"
  "50|shared|0 1 3 5|far"
  "20|own|0 3 4 5|far"
  "20|shared|5 7|near"
  "20|own|5 7|near"
)

printf '| sybils | sybil addresses | sybils one way | defenses | target lookups that found the provider | lookups widened | other lookups ok | lookup p50 | wall |\n'
printf '|---:|---|---|---|---:|---:|---:|---:|---:|\n'
for r in "${runs[@]}"; do
  IFS='|' read -r n subnet which where <<<"$r"
  [ -z "$ONLY" ] || [ "$ONLY" = "$n" ] || continue
  [ -z "$WHERE" ] || [ "$WHERE" = "$where" ] || continue
  for d in $which; do
    IFS='|' read -r name settings <<<"${defenses[$d]}"
    f="$tmp/run.hyp"
    sed -e "s/^nodes servers 300 dht=server idle=30s\$/& $settings/" \
        -e "s/^nodes clients 700 dht=client undialable idle=30s\$/& $settings/" \
        -e "s/^nodes sybils 20 dht=server subnet=shared eclipse\$/nodes sybils $n dht=server subnet=$subnet eclipse/" \
        -e '/^assert/d' scenarios/dht-eclipse.hyp >"$f"
    if [ "$where" = near ]; then
      printf 'region near 1000..%d\nbetween near eu latency=2ms jitter=0ms\nbetween near us latency=2ms jitter=0ms\n' \
        $((1000 + n - 1)) >>"$f"
    fi
    out=$("$BIN" sim "$f" 2>&1)
    col() { awk -v m="$1" '$1 == m { print $(NF) }' <<<"$out"; }
    wall=$(grep -o 'wall time [0-9.]*s' <<<"$out" | awk '{print $3}')
    addr=$([ "$subnet" = shared ] && echo "one /32" || echo "a /32 each")
    printf '| %s | %s | %s | %s | %s | %s | %s | %s ms | %s |\n' "$n" "$addr" "$([ "$where" = near ] && echo 2 ms || echo 20 ms)" "$name" \
      "$(col dht_target_success_rate)" "$(col dht_widened)" "$(col dht_lookup_success_rate)" "$(col dht_lookup_p50_ms)" "$wall"
  done
done
