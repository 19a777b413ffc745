//! The layering rule of DESIGN.md, checked: within each crate of the workspace, no module imports a
//! module that imports it back (directly or around a longer circle). Modules are files; an import is
//! any `crate::a::b` or `super::x` path outside `#[cfg(test)]` code (tests may reach anywhere). A
//! submodule may use its parent (`identify::service` uses `identify`): they are one unit.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Module path (`identify::service`) → source text without its test module.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read src dir") {
            let p: PathBuf = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().and_then(|x| x.to_str()) != Some("rs") {
                continue;
            }
            let rel = p.strip_prefix(src).expect("under src").with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
            if parts.last().is_some_and(|l| l == "mod" || l == "lib" || l == "main") {
                parts.pop();
            }
            if parts.last().is_some_and(|l| l == "tests") {
                continue;
            }
            let text = std::fs::read_to_string(&p).expect("read source");
            let text = match text.find("#[cfg(test)]\nmod tests") {
                Some(i) => text[..i].to_string(),
                None => text,
            };
            out.insert(parts.join("::"), text);
        }
    }
    out
}

/// The modules `name` imports.
fn imports(name: &str, text: &str, all: &BTreeSet<String>) -> BTreeSet<String> {
    let mut deps = BTreeSet::new();
    let resolve = |path: &[&str]| -> Option<String> { (1..=path.len()).rev().map(|n| path[..n].join("::")).find(|m| all.contains(m)) };
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    for (prefix, base) in [("crate::", Vec::<&str>::new()), ("super::", name.split("::").collect::<Vec<_>>())] {
        let mut base = base;
        if prefix == "super::" {
            if base.is_empty() {
                continue;
            }
            base.pop();
        }
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(ident) {
                continue;
            }
            // Either a path `a::b::c` or a group `{a, b::c, ..}` (one level is enough for our imports).
            let heads: Vec<String> = if let Some(g) = rest.strip_prefix('{') {
                let end = g.find('}').unwrap_or(g.len());
                g[..end].split(',').map(|x| x.trim().to_string()).collect()
            } else {
                let end = rest.find(|c: char| !(ident(c) || c == ':')).unwrap_or(rest.len());
                vec![rest[..end].to_string()]
            };
            for h in heads {
                let mut path: Vec<&str> = base.to_vec();
                path.extend(h.split("::").filter(|x| !x.is_empty() && x.chars().all(ident)));
                if let Some(m) = resolve(&path) {
                    if m != name && !name.starts_with(&format!("{m}::")) {
                        deps.insert(m);
                    }
                }
            }
        }
    }
    deps
}

fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    // Depth-first search with colours; returns the first circle found.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        path: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        path.push(n.to_string());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d).copied().unwrap_or(0) {
                1 => {
                    let start = path.iter().position(|x| x == d).expect("on the path");
                    let mut c = path[start..].to_vec();
                    c.push(d.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, path) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        path.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, graph, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn layers_no_import_cycle_between_modules_of_any_crate() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("crates dir");
    let mut checked = 0;
    for e in std::fs::read_dir(crates).expect("read crates") {
        let src = e.expect("entry").path().join("src");
        if !src.is_dir() {
            continue;
        }
        let mods = modules(&src);
        let names: BTreeSet<String> = mods.keys().cloned().collect();
        let graph: BTreeMap<String, BTreeSet<String>> = mods.iter().map(|(n, t)| (n.clone(), imports(n, t, &names))).collect();
        if let Some(c) = find_cycle(&graph) {
            panic!("import cycle in {}: {}", src.display(), c.join(" -> "));
        }
        checked += 1;
    }
    assert!(checked >= 3, "found the workspace's crates");
}

#[test]
fn layers_checker_finds_a_planted_cycle() {
    let names: BTreeSet<String> = ["a", "b", "b::c"].iter().map(|s| s.to_string()).collect();
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), imports("a", "use crate::b::c::X;", &names));
    g.insert("b".to_string(), BTreeSet::new());
    g.insert("b::c".to_string(), imports("b::c", "use crate::{a, foo};", &names));
    assert_eq!(find_cycle(&g), Some(vec!["a".to_string(), "b::c".to_string(), "a".to_string()]));
}
