#!/usr/bin/env bash
# Throughput on a long path (scripts/wan.sh): iperf3, hyphae perf (TCP+Noise+Yamux, TCP+TLS+Yamux, QUIC)
# and rust-libp2p's perf (libp2p-perf 0.3.0: TCP+Noise+Yamux, QUIC), one upload of BYTES each, client in
# namespace A, server in B. Prints a markdown table: each run's time (perf: set-up included, as the perf
# protocol measures; iperf3: its receiver's interval) and rate, and each as a percentage of iperf3 on the
# same path in the same run, and where the CPU went: CPU seconds per GiB moved by the delay line, the
# sender (client) and the receiver (server), and how many of the machine's cores were busy (all
# processes; the line shares the machine with both peers): on average over the run, and in its busiest
# second (sampled every 0.25 s), which is the steady state's figure. Needs root. Installs iperf3 and
# iputils-ping (Debian) and libp2p-perf (cargo) if missing.
#
#   scripts/bench-wan.sh [--bytes N] [--mtu M] [--rows "unlimited 1g lossy"] [--only "iperf3 hyphae-tcp-noise ..."]
#                        [--setup N | --no-setup] [--no-offload]
#
# Rows: unlimited = 60 ms RTT; 1g = 60 ms at 1 Gbit/s; lossy = 60 ms at 100 Mbit/s with 0.1% loss.
# All rows use a 1500-byte MTU. The first two pass TCP and UDP segmentation offloads through the line
# (`delayline --offload`: 64 KiB super-packets of 1500-byte segments cross as one; without them the line,
# a packet at a time through two syscalls, tops out near 1 Gbit/s on two cores shared with both peers).
# --no-offload [--mtu 65000] runs them the older way, one packet per segment. The lossy row never
# offloads, since loss must hit single segments; it moves --lossy-bytes (default 128 MiB: loss-bound
# transfers run at tens of Mbit/s).
# Runs: iperf3 hyphae-tcp-noise hyphae-tcp-tls hyphae-quic rust-tcp rust-quic, and hyphae-quic-cubic
# (QUIC with quinn's plain Cubic, `--quic-congestion cubic`, in place of the default loss-tolerant one).
# Then (unless --no-setup) connection set-up on the 60 ms path: N dials (default 5) from A to a hyphae
# node in B, each timed from the dial to the first ping answer, by `hyphae ping` (TCP+Noise, QUIC) and
# by the rust-libp2p 0.57 interop peer (interop/rust-peer `dial`, its connectMs), in round trips of 60 ms.
# go's p2pd has no ping in its control protocol, so it is not timed.
set -euo pipefail
cd "$(dirname "$0")/.."
BYTES=1073741824; LOSSY_BYTES=134217728; MTU=1500; ROWS="unlimited 1g lossy"; SETUP=5; OFFLOAD=1
ONLY="iperf3 hyphae-tcp-noise hyphae-tcp-tls hyphae-quic rust-tcp rust-quic"
while [ $# -gt 0 ]; do
  case "$1" in
    --bytes) BYTES="$2"; shift 2 ;;
    --lossy-bytes) LOSSY_BYTES="$2"; shift 2 ;;
    --mtu) MTU="$2"; shift 2 ;;
    --no-offload) OFFLOAD=0; shift ;;
    --rows) ROWS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --setup) SETUP="$2"; shift 2 ;;
    --no-setup) SETUP=0; shift ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "bench-wan.sh: needs root (network namespaces)" >&2; exit 1; }
if ! command -v iperf3 >/dev/null || ! command -v ping >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q iperf3 iputils-ping >/dev/null
fi
PERF="$HOME/.cargo/bin/perf"
if [[ " $ONLY " == *" rust-"* ]] && ! "$PERF" --help 2>/dev/null | grep -q run-server; then
  cargo install libp2p-perf --version 0.3.0   # not --locked: its lockfile pins a `time` that no longer builds
fi
cargo build -q --release -p hyphae-cli -p delayline
HY="${HYPHAE_BIN:-$PWD/target/release/hyphae}"   # HYPHAE_BIN: another build of hyphae, to compare two versions on one path
NAME=hybench; A="$NAME-a"; B="$NAME-b"; SERVER=10.99.0.2
OUT="target/wan/bench"; mkdir -p "$OUT"
trap 'scripts/wan.sh down --name $NAME >/dev/null 2>&1 || true; pkill -f "hyphae perf --server --key $OUT" 2>/dev/null || true' EXIT

# Starts `hyphae perf --server` in B (SRV) and waits for its addresses (TCPA, QUICA).
start_hyphae_server() {
  ip netns exec "$B" "$HY" perf --server --key "$OUT/server.key" --listen /ip4/$SERVER/tcp/4711 --listen /ip4/$SERVER/udp/4711/quic-v1 >"$OUT/hs.out" 2>"$OUT/hs.err" &
  SRV=$!
  for _ in $(seq 50); do grep -q quic-v1 "$OUT/hs.out" 2>/dev/null && break; sleep 0.1; done
  TCPA="$(grep /tcp/ "$OUT/hs.out" | head -1)"; QUICA="$(grep /quic-v1/ "$OUT/hs.out" | head -1)"
}
# CPU seconds (user + system) a live process PID has used so far.
cpu_of() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}
# Busy and total jiffies of the whole machine (all cores), from /proc/stat.
machine_ticks() {
  awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}
# Samples machine_ticks every 0.25 s into FILE until killed.
sample_ticks() {
  while :; do machine_ticks >>"$1"; sleep 0.25; done
}
# Runs a client: "$@" in namespace A (given up after 600 s) with its CPU seconds written to
# $OUT/client.cpu.
client() {
  timeout 600 ip netns exec "$A" /usr/bin/time -f "%U %S" -o "$OUT/client.cpu" "$@"
}
# The timeSeconds of a perf client's final JSON line in FILE, or "fail".
perf_seconds() {
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); assert d["type"] == "final"; print(d["timeSeconds"])' "$1" 2>/dev/null || echo fail
}

# seconds for one run, or "fail"
run_iperf3() {
  ip netns exec "$B" /usr/bin/time -f "%U %S" -o "$OUT/server.cpu" iperf3 -s -1 -p 5201 >/dev/null 2>&1 &
  local srv=$!; sleep 0.3
  client iperf3 -c $SERVER -p 5201 -n "$BYTES" -J >"$OUT/iperf3.json" 2>/dev/null || true
  wait $srv 2>/dev/null || true
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["end"]["sum_received"]["seconds"])' "$OUT/iperf3.json" 2>/dev/null || echo fail
}
run_hyphae() { # transport security|congestion-control
  start_hyphae_server
  local addr="$TCPA"; [ "$1" = quic ] && addr="$QUICA"
  local sec=(); [ "${2:-noise}" = tls ] && sec=(--security tls)   # noise is the default's first choice
  [ "${2:-}" = cubic ] && sec=(--quic-congestion cubic)            # the sender's controller is what counts
  client "$HY" perf "$addr" --upload "$BYTES" --download 0 "${sec[@]}" 2>"$OUT/hc.err" | tail -1 >"$OUT/hc.out" || true
  cpu_of $SRV >"$OUT/server.cpu"   # `ip netns exec` execs the server: $SRV is its pid
  kill $SRV 2>/dev/null; wait $SRV 2>/dev/null || true
  perf_seconds "$OUT/hc.out"
}
run_rust() { # tcp|quic-v1
  ip netns exec "$B" "$PERF" --run-server --server-address $SERVER:4712 >/dev/null 2>&1 &
  local srv=$!; sleep 1
  client "$PERF" --server-address $SERVER:4712 --transport "$1" --upload-bytes "$BYTES" --download-bytes 0 2>/dev/null | tail -1 >"$OUT/rc.out" || true
  cpu_of $srv >"$OUT/server.cpu"
  kill $srv 2>/dev/null; wait $srv 2>/dev/null || true
  perf_seconds "$OUT/rc.out"
}

echo "# long path: $BYTES bytes upload (lossy: $LOSSY_BYTES), tun MTU $MTU (lossy: 1500), offloads $OFFLOAD (lossy: 0), $(date -u +%FT%TZ)"
echo
echo "| path | run | seconds | Gbit/s | % of iperf3 | CPU s per GiB: line / sender / receiver | cores busy: mean / busiest second |"
echo "|---|---|---:|---:|---:|---|---:|"
ALL_BYTES="$BYTES"
for row in $ROWS; do
  mtu="$MTU"; BYTES="$ALL_BYTES"; off=()
  [ "$OFFLOAD" = 1 ] && off=(--offload)
  case "$row" in
    unlimited) args=(--delay-ms 30 "${off[@]}") ;;
    1g) args=(--delay-ms 30 --rate 1g "${off[@]}") ;;
    lossy) args=(--delay-ms 30 --rate 100m --loss 0.1); mtu=1500; BYTES="$LOSSY_BYTES" ;;
    *) echo "unknown row $row" >&2; exit 2 ;;
  esac
  scripts/wan.sh up --name $NAME --mtu "$mtu" "${args[@]}" >/dev/null
  base=""; LINE="$(cat target/wan/$NAME.pid)"
  for run in $ONLY; do
    rm -f "$OUT/client.cpu" "$OUT/server.cpu"
    line0="$(cpu_of "$LINE")"; : >"$OUT/ticks"
    sample_ticks "$OUT/ticks" & SAMPLER=$!
    case "$run" in
      iperf3) t="$(run_iperf3)" ;;
      hyphae-tcp-noise) t="$(run_hyphae tcp noise)" ;;
      hyphae-tcp-tls) t="$(run_hyphae tcp tls)" ;;
      hyphae-quic) t="$(run_hyphae quic)" ;;
      hyphae-quic-cubic) t="$(run_hyphae quic cubic)" ;;
      rust-tcp) t="$(run_rust tcp)" ;;
      rust-quic) t="$(run_rust quic-v1)" ;;
      *) echo "unknown run $run" >&2; exit 2 ;;
    esac
    line1="$(cpu_of "$LINE")"; kill $SAMPLER; wait $SAMPLER 2>/dev/null || true; machine_ticks >>"$OUT/ticks"
    [ "$run" = iperf3 ] && base="$t"
    python3 - "$row" "$run" "$t" "$base" "$BYTES" "$line0" "$line1" "$OUT" "$(nproc)" <<'PY'
import sys
row, run, t, base, n, line0, line1, out, cores = sys.argv[1:]
if t == "fail":
    print(f"| {row} | {run} | failed | | | | |"); sys.exit()
t, n = float(t), int(n)
pct = f"{100 * float(base) / t:.0f}%" if base not in ("", "fail") else ""
def cpu(f):
    try:
        return sum(float(x) for x in open(f"{out}/{f}").read().split()[:2])
    except (OSError, ValueError):
        return float("nan")
gib = n / 2**30
line = (float(line1) - float(line0)) / gib
cpus = f"{line:.2f} / {cpu('client.cpu') / gib:.2f} / {cpu('server.cpu') / gib:.2f}"
# Cores busy over the whole run (set-up and teardown included), and in its busiest 1 s (4 samples).
ticks = [tuple(map(int, l.split())) for l in open(f"{out}/ticks") if l.strip()]
def cores_busy(a, b):
    return (b[0] - a[0]) / max(1, b[1] - a[1]) * int(cores)
mean = cores_busy(ticks[0], ticks[-1])
peak = max((cores_busy(ticks[i], ticks[i + 4]) for i in range(len(ticks) - 4)), default=mean)
print(f"| {row} | {run} | {t:.2f} | {n * 8 / t / 1e9:.2f} | {pct} | {cpus} | {mean:.2f} / {peak:.2f} |")
PY
  done
  scripts/wan.sh down --name $NAME 2>&1 | grep -E "^$NAME" | sed 's/^/    line: /' >&2 || true
done

[ "$SETUP" -gt 0 ] || exit 0
RUSTPEER="$PWD/interop/rust-peer/target/debug/rust-peer"
[ -x "$RUSTPEER" ] || cargo build --quiet --manifest-path interop/rust-peer/Cargo.toml
scripts/wan.sh up --name $NAME --mtu "$MTU" --delay-ms 30 >/dev/null
start_hyphae_server
echo
echo "# connection set-up on the 60 ms path: dial to the first ping answer, $SETUP dials each"
echo
echo "| dialer | transport | median ms | min–max ms | round trips (median / 60 ms) |"
echo "|---|---|---:|---:|---:|"
for who in hyphae rust; do
  for tr in tcp quic; do
    addr="$TCPA"; [ $tr = quic ] && addr="$QUICA"
    ms=()
    for _ in $(seq "$SETUP"); do
      if [ $who = hyphae ]; then
        v="$(ip netns exec "$A" "$HY" ping "$addr" --count 1 2>/dev/null | sed -n 's/^first ping answer \([0-9.]*\) ms.*/\1/p')"
      else
        v="$(ip netns exec "$A" "$RUSTPEER" dial "$addr" 1 2>/dev/null | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["connectMs"])' 2>/dev/null)"
      fi
      [ -n "$v" ] && ms+=("$v")
    done
    python3 - "$who" "$tr" "${ms[@]}" <<'PY'
import sys, statistics
who, tr, ms = sys.argv[1], sys.argv[2], [float(x) for x in sys.argv[3:]]
if not ms:
    print(f"| {who} | {tr} | failed | | |"); sys.exit()
m = statistics.median(ms)
print(f"| {who} | {tr} | {m:.1f} | {min(ms):.1f}–{max(ms):.1f} | {m / 60:.2f} |")
PY
  done
done
kill $SRV 2>/dev/null; wait $SRV 2>/dev/null || true
