//! Generates Rust code for every `.proto` file under `src/` (kept beside the code that uses it) with
//! pb-rs, a pure-Rust generator: no `protoc` on the build path. The output goes to `OUT_DIR/<stem>.rs`
//! and is included by the protocol's `wire.rs`.

use pb_rs::{types::FileDescriptor, ConfigBuilder};
use std::path::{Path, PathBuf};

fn protos(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read src") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            protos(&p, out);
        } else if p.extension().is_some_and(|x| x == "proto") {
            out.push(p);
        }
    }
}

fn main() {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let mut files = Vec::new();
    protos(Path::new("src"), &mut files);
    files.sort();
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
        let tmp = out_dir.join("pb-rs");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).expect("create OUT_DIR/pb-rs");
        let include = f.parent().expect("a file has a folder").to_path_buf();
        let cfg = ConfigBuilder::new(std::slice::from_ref(f), None, Some(&tmp), &[include])
            .expect("pb-rs configuration")
            .dont_use_cow(true)
            .build();
        FileDescriptor::run(&cfg).unwrap_or_else(|e| panic!("pb-rs on {}: {e}", f.display()));
        let stem = f.file_stem().expect("a .proto file has a name").to_string_lossy().into_owned();
        let generated = std::fs::read_to_string(tmp.join(format!("{stem}.rs"))).expect("pb-rs wrote <stem>.rs");
        // `include!` takes items only: drop the file's inner attributes (the including module allows
        // the same lints) and the top-level `use super::*` that pb-rs adds for cross-file references
        // (nested messages' modules keep theirs: it brings the file's imports into them).
        let mut nested = false;
        let body: String = generated
            .lines()
            .filter(|l| {
                nested |= l.starts_with("pub mod ");
                !l.starts_with("#![") && (nested || !l.starts_with("use super::"))
            })
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(out_dir.join(format!("{stem}.rs")), body).expect("write generated code");
    }
    println!("cargo:rerun-if-changed=build.rs");
    // A new .proto file must be noticed too: cargo rescans the folder (pb-rs takes milliseconds).
    println!("cargo:rerun-if-changed=src");
}
