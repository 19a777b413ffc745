#!/usr/bin/env bash
# Installs the interop peers into interop/.peers (idempotent, cached).
#  - go-libp2p v0.32.1: the static p2pd binary shipped in the hivemind 1.1.12 wheel (only p2pd + proto are unzipped)
#  - python venv with p2pclient 0.3.0 (drives p2pd)
#  - js-libp2p 3 node modules (interop/js)
#  - @libp2p/interop with its shims (interop/js-interop/setup.sh)
#  - redis-server (Debian package; the test-plans transport-interop mode)
#  - the rust-libp2p 0.57 peer (interop/rust-peer, built with cargo)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
PEERS="$HERE/.peers"
mkdir -p "$PEERS"

# --- go-libp2p (p2pd) ---
if [ ! -x "$PEERS/p2pd" ]; then
  tmp="$(mktemp -d)"
  python3 -m pip download --quiet --no-deps hivemind==1.1.12 -d "$tmp"
  whl="$(ls "$tmp"/hivemind-*.whl)"
  python3 - "$whl" "$PEERS" <<'PY'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name, dst in (("hivemind/hivemind_cli/p2pd", "p2pd"), ("hivemind/proto/p2pd.proto", "p2pd.proto")):
        with z.open(name) as src, open(os.path.join(out, dst + ".tmp"), "wb") as f:
            f.write(src.read())
        os.replace(os.path.join(out, dst + ".tmp"), os.path.join(out, dst))
PY
  chmod +x "$PEERS/p2pd"
  rm -rf "$tmp"
fi

# --- python venv with p2pclient ---
if [ ! -x "$PEERS/venv/bin/python" ] || ! "$PEERS/venv/bin/python" -c "import p2pclient" 2>/dev/null; then
  python3 -m venv "$PEERS/venv"
  "$PEERS/venv/bin/pip" install --quiet "p2pclient==0.3.0" "protobuf>=4" 
fi

# --- js-libp2p ---
if [ ! -d "$HERE/js/node_modules/@libp2p/mplex" ] || [ ! -d "$HERE/js/node_modules/@libp2p/tls" ] || [ ! -d "$HERE/js/node_modules/@libp2p/kad-dht" ] || [ ! -d "$HERE/js/node_modules/@libp2p/gossipsub" ] || [ "$HERE/js/package.json" -nt "$HERE/js/node_modules/.package-lock.json" ]; then
  (cd "$HERE/js" && npm install --no-audit --no-fund --silent)
fi
# --- rust-libp2p 0.57 peer (its own cargo workspace, built once; its target dir is a cache shared by
# this machine's checkouts, see scripts/target-cache.sh) ---
. "$HERE/../scripts/target-cache.sh"
link_target_cache "$HERE/rust-peer" rust-peer-target
if [ ! -x "$HERE/rust-peer/target/debug/rust-peer" ] || [ -n "$(find "$HERE/rust-peer/src" "$HERE/rust-peer/Cargo.toml" -newer "$HERE/rust-peer/target/debug/rust-peer")" ]; then
  cargo build --quiet --manifest-path "$HERE/rust-peer/Cargo.toml"
fi
# --- iptables (the AutoNAT tests build firewalls and NAT routers in network namespaces) ---
if ! command -v iptables >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q iptables >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q iptables >/dev/null)
  else
    echo "iptables missing and cannot be installed (not root or no apt-get): the AutoNAT namespace tests will skip"
  fi
fi
# --- @libp2p/interop (the libp2p daemons' interop suite, run with hyphae's daemon) ---
"$HERE/js-interop/setup.sh" >/dev/null

# --- redis-server (the test-plans transport-interop mode publishes and reads addresses through it) ---
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get install -y -q redis-server >/dev/null || (apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null)
    # Only the binary is wanted: the package's own service stays off.
    (command -v systemctl >/dev/null && systemctl disable --now redis-server >/dev/null 2>&1) || true
    (command -v service >/dev/null && service redis-server stop >/dev/null 2>&1) || true
  else
    echo "redis-server missing and cannot be installed (not root or no apt-get): the transport-interop tests will skip"
  fi
fi
echo "interop peers ready in $PEERS"
