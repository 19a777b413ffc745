//! Lays out the code a node runs at start-up, at idle and in a transfer side by side (release builds on
//! x86_64 Linux).
//!
//! `symbol-order.txt` (written by `scripts/symbol-order.sh`) lists those functions; the linker places them
//! first, in that order. An idle node then keeps a few contiguous pages of its binary resident instead of
//! the 64 KiB the kernel maps around each of many scattered functions. Only where the linker is rustc's
//! default for the target, rust-lld (Rust ≥ 1.90 on x86_64-unknown-linux-gnu), which takes
//! `--symbol-ordering-file`; a build that names its own linker, or sets `HYPHAE_SYMBOL_ORDER=off`, links
//! without it. A stale list still links: names no longer in the binary are skipped.
use std::env;

fn main() {
    println!("cargo:rerun-if-changed=symbol-order.txt");
    println!("cargo:rerun-if-env-changed=HYPHAE_SYMBOL_ORDER");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let own_linker = !var("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_empty()
        || var("CARGO_ENCODED_RUSTFLAGS").contains("link")
        || !var("RUSTC_LINKER").is_empty();
    if var("TARGET") != "x86_64-unknown-linux-gnu" || var("PROFILE") != "release" || own_linker || var("HYPHAE_SYMBOL_ORDER") == "off" {
        return;
    }
    let list = format!("{}/symbol-order.txt", var("CARGO_MANIFEST_DIR"));
    if std::path::Path::new(&list).exists() {
        println!("cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={list}");
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
}
