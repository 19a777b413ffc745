#!/usr/bin/env bash
# Regenerates crates/hyphae-cli/symbol-order.txt: the functions of the `hyphae` binary that a node runs
# while it starts and idles, then those of a perf transfer, one mangled name a line. The release build
# hands the file to the linker (crates/hyphae-cli/build.rs), which lays those functions out side by side
# at the start of the code, so an idle node keeps ~1.4 MB of its binary resident instead of the 64 KiB the
# kernel maps around each first-touched page (the page cache's fault-around) at ~80 places scattered
# through 7.7 MB: ~5 MB. See BENCHMARKS.md,
# "Idle node RSS: the code a node runs, laid out together".
#
# Re-run it after a large change (new services, a new dependency on the start-up path): a stale file still
# links (names it lists that no longer exist are skipped) but keeps less of the start-up code together.
# Needs valgrind (installed here if missing: Debian package). Takes ~3 minutes plus a release build.
#
#   scripts/symbol-order.sh            # writes crates/hyphae-cli/symbol-order.txt
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v valgrind >/dev/null; then
  apt-get install -y --no-install-recommends valgrind >/dev/null
fi
cargo build --release -p hyphae-cli --quiet
bin="$(pwd)/target/release/hyphae"
out=crates/hyphae-cli/symbol-order.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Runs "$@" under callgrind for $secs seconds, then stops it the way a user does (SIGINT).
profile() {
  local name=$1 secs=$2
  shift 2
  valgrind --tool=callgrind --demangle=no --dump-instr=no --callgrind-out-file="$tmp/$name.cg" \
    "$bin" "$@" >"$tmp/$name.log" 2>&1 &
  local pid=$!
  sleep "$secs"
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" || true
  # A run that did not get as far as listening (a wrong flag, a busy socket) profiles the wrong code.
  if [ ! -s "$tmp/$name.cg" ] || ! grep -q "/p2p/\|^/ip4/" "$tmp/$name.log"; then
    cat "$tmp/$name.log"
    echo "symbol-order: $name did not start; no list written" >&2
    exit 1
  fi
}

# The default node (TCP, QUIC, the DHT client, identify, ping, gossipsub), a node on one TCP address, and
# the daemon: what the idle-RSS measurements start.
profile node 25 node
profile node-again 25 node
profile node-tcp 20 node --listen /ip4/127.0.0.1/tcp/0
profile daemon 20 daemon -listen "/unix$tmp/p2pd.sock" -hostAddrs /ip4/127.0.0.1/tcp/0

# A perf transfer each way, over TCP+Noise+Yamux and over QUIC: the functions that move bytes come after
# the start-up ones, side by side too. (With the start-up functions alone moved, QUIC on loopback lost ~7%:
# the few hot functions that also run at start-up had moved away from the rest of their path.)
transfer() {
  local name=$1 listen=$2 pick=$3
  valgrind --tool=callgrind --demangle=no --dump-instr=no --callgrind-out-file="$tmp/$name-server.cg" \
    "$bin" perf --server --listen "$listen" >"$tmp/$name-server.log" 2>&1 &
  local pid=$! addr=""
  for _ in $(seq 600); do
    addr=$(grep -m1 "$pick/p2p/" "$tmp/$name-server.log" || true)
    [ -z "$addr" ] || break
    sleep 0.1
  done
  [ -n "$addr" ] || { cat "$tmp/$name-server.log"; echo "symbol-order: the $name perf server did not start" >&2; exit 1; }
  if ! valgrind --tool=callgrind --demangle=no --dump-instr=no --callgrind-out-file="$tmp/$name-client.cg" \
    "$bin" perf "$addr" --upload 16777216 --download 16777216 >"$tmp/$name-client.log" 2>&1; then
    cat "$tmp/$name-client.log"
    echo "symbol-order: the $name perf transfer failed" >&2
    exit 1
  fi
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" || true
}
transfer tcp /ip4/127.0.0.1/tcp/0 '/tcp/[0-9]*'
transfer quic /ip4/127.0.0.1/udp/0/quic-v1 /quic-v1

# Callgrind's format names each function once (`fn=(id) name` or `cfn=(id) name`, later `fn=(id)`) and each
# object file once (`ob=(id) path`). Keep the functions with cost in hyphae's own binary, in the order the
# profiles first list them; drop callgrind's recursion suffix ('2) and unnamed addresses.
awk -v bin="$bin" '
  FNR == 1 { delete fname; delete oname; cur = "" }
  /^(ob|cob)=\(/ {
    match($0, /\([0-9]+\)/); id = substr($0, RSTART, RLENGTH)
    rest = substr($0, RSTART + RLENGTH + 1)
    if (rest != "") oname[id] = rest
    if ($0 ~ /^ob=/) cur = oname[id]
    next
  }
  /^(fn|cfn)=\(/ {
    match($0, /\([0-9]+\)/); id = substr($0, RSTART, RLENGTH)
    rest = substr($0, RSTART + RLENGTH + 1)
    if (rest != "") fname[id] = rest
    if ($0 ~ /^fn=/ && cur == bin) {
      n = fname[id]; sub(/\x27[0-9]+$/, "", n)
      if (n != "" && n !~ /^0x/ && !(n in seen)) { seen[n] = 1; print n }
    }
  }
' "$tmp/node.cg" "$tmp/node-again.cg" "$tmp/node-tcp.cg" "$tmp/daemon.cg" \
  "$tmp/tcp-client.cg" "$tmp/tcp-server.cg" "$tmp/quic-client.cg" "$tmp/quic-server.cg" >"$out"
echo "symbol-order: $(wc -l <"$out") functions written to $out"
