#!/usr/bin/env bash
# A long path on this machine: two network namespaces joined by the delay line (crates/delayline), since
# `tc netem` is not available here. Needs root and iproute2.
#
#   scripts/wan.sh up [--name N] [--delay-ms 30] [--rate 1g] [--queue BYTES] [--loss 0.1] [--mtu 1500] [--offload]
#   scripts/wan.sh down [--name N]
#   ip netns exec N-a COMMAND     # side A, address 10.99.0.1
#   ip netns exec N-b COMMAND     # side B, address 10.99.0.2
#
# --delay-ms is one way (30 = a 60 ms round trip); --rate, --queue, --loss as `delayline --help` says.
# Both namespaces get the TCP buffer ceilings of a host tuned for long fat paths (64 MiB), so the path, not
# a default sysctl, limits a transfer: iperf3 and the libp2p stacks measured on it get the same ones.
# The default name is `hywan`; `up` first takes down what an earlier `up` of that name left.
# DELAYLINE_BIN names a delayline binary to use instead of building target/release/delayline.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd="${1:-}"; shift || true
NAME=hywan; MTU=1500; DL_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --mtu) MTU="$2"; shift 2 ;;
    --delay-ms|--rate|--queue|--loss|--seed) DL_ARGS+=("$1" "$2"); shift 2 ;;
    --offload) DL_ARGS+=("$1"); shift ;;
    *) echo "wan.sh: unknown flag $1" >&2; exit 2 ;;
  esac
done
A="$NAME-a"; B="$NAME-b"
STATE="target/wan"; PIDF="$STATE/$NAME.pid"; LOG="$STATE/$NAME.log"

down() {
  if [ -f "$PIDF" ]; then
    pid="$(cat "$PIDF")"
    if kill "$pid" 2>/dev/null; then
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$PIDF"
  fi
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
}

case "$cmd" in
  up)
    down
    mkdir -p "$STATE"
    DL="${DELAYLINE_BIN:-target/release/delayline}"
    [ -n "${DELAYLINE_BIN:-}" ] || cargo build -q --release -p delayline
    ip netns add "$A"; ip netns add "$B"
    # Device names are global until moved: make them unique to this name.
    DA="${NAME:0:10}-ta"; DB="${NAME:0:10}-tb"
    : >"$LOG"
    "$DL" --dev-a "$DA" --dev-b "$DB" "${DL_ARGS[@]}" >"$LOG.out" 2>>"$LOG" &
    echo $! >"$PIDF"
    for _ in $(seq 100); do grep -q ready "$LOG.out" 2>/dev/null && break; sleep 0.05; done
    grep -q ready "$LOG.out" || { cat "$LOG" >&2; down; exit 1; }
    ip link set "$DA" netns "$A"; ip link set "$DB" netns "$B"
    for side in a b; do
      ns="$NAME-$side"; dev="${NAME:0:10}-t$side"
      if [ $side = a ]; then me=10.99.0.1; peer=10.99.0.2; else me=10.99.0.2; peer=10.99.0.1; fi
      ip -n "$ns" link set lo up
      ip -n "$ns" addr add "$me" peer "$peer" dev "$dev"
      ip -n "$ns" link set "$dev" mtu "$MTU" txqueuelen 1000 up
      ip netns exec "$ns" sh -c 'echo "4096 131072 67108864" >/proc/sys/net/ipv4/tcp_rmem; echo "4096 16384 67108864" >/proc/sys/net/ipv4/tcp_wmem' 2>/dev/null || true
    done
    echo "wan $NAME up: $A (10.99.0.1) <-> $B (10.99.0.2), mtu $MTU, delay line ${DL_ARGS[*]:-(30 ms one way)}; log $LOG"
    ;;
  down)
    down
    [ -f "$LOG" ] && cat "$LOG"
    ;;
  *)
    sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
