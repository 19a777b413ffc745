#!/usr/bin/env bash
# Sourced by interop/setup.sh and fuzz/smoke.sh: `link_target_cache DIR NAME` makes DIR/target a link to
# a build cache outside the checkout ($HYPHAE_CACHE/NAME, default ~/.cache/hyphae/NAME), so a fresh clone on a
# machine that built before recompiles only its own crates, not every dependency: the rust-libp2p peer
# took 5m44s from nothing and the fuzz targets ~5 min, a third of CI's time on two cores. A checkout
# whose DIR/target is already a directory keeps it. The cache is wiped when it passes 8 GiB (the only
# growth is one copy of the checkout's own crates per clone path).
link_target_cache() {
  local dir=$1 name=$2
  local cache="${HYPHAE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hyphae}/$name"
  [ -e "$dir/target" ] && return 0
  [ -L "$dir/target" ] && rm -f "$dir/target"  # a link whose cache was wiped
  if [ -d "$cache" ] && [ "$(du -sm "$cache" 2>/dev/null | cut -f1)" -gt 8192 ]; then
    rm -rf "$cache"
  fi
  mkdir -p "$cache" && ln -s "$cache" "$dir/target"
}
