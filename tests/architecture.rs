//! The crate's layering, checked from its source: every `crate::…` path in `src/` (use lines
//! and paths in code alike, comments left out) must name a module its own module may import,
//! as `src/lib.rs` documents; and no two files of one directory module may import each other,
//! directly or around a longer circle. A wrong-way import added anywhere fails this test with
//! the file, the line and the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Which top-level modules each may import (besides itself). Keep in step with `src/lib.rs`.
const LAYERS: &[(&str, &[&str])] = &[
    ("wire", &[]),
    ("proto", &[]),
    ("codec", &["wire"]),
    ("tenant", &["codec", "wire"]),
    ("command", &["tenant", "codec", "wire"]),
    ("raft", &["command"]),
    ("wal", &["codec", "wire"]),
    ("transport", &["wire"]),
    (
        "state_machine",
        &["raft", "command", "tenant", "codec", "wire"],
    ),
    ("client", &["transport", "proto", "wire"]),
    (
        "server",
        &[
            "state_machine",
            "wal",
            "raft",
            "command",
            "tenant",
            "codec",
            "transport",
            "proto",
            "wire",
        ],
    ),
    (
        "peer",
        &[
            "state_machine",
            "raft",
            "codec",
            "transport",
            "proto",
            "wire",
        ],
    ),
    (
        "node",
        &[
            "server",
            "peer",
            "state_machine",
            "wal",
            "raft",
            "command",
            "tenant",
            "codec",
            "transport",
            "proto",
            "wire",
        ],
    ),
    ("cli", &["client", "command", "proto", "wire"]),
    (
        "bench",
        &["client", "command", "transport", "proto", "wire"],
    ),
];

/// Every `.rs` file below `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).expect("read src") {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// `src`-relative module path of a file: `src/wal/disk.rs` → ["wal", "disk"],
/// `src/wal/mod.rs` → ["wal"], `src/lib.rs` → [].
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let stem = last.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// The file's lines with comments removed (line comments, doc comments; block comments are not
/// used in this crate's code).
fn code_lines(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .map(|(i, l)| {
            let code = match l.find("//") {
                Some(at) => &l[..at],
                None => l,
            };
            (i + 1, code.to_string())
        })
        .collect()
}

/// The identifiers right after `prefix` in `code` (`crate::` → `wal`, `crate::{a, b::c}` →
/// `a`, `b`).
fn idents_after(code: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find(prefix) {
        // `supercrate::` or `my_crate::` are not this crate.
        let before = rest[..at].chars().next_back();
        rest = &rest[at + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let id: String = item
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !id.is_empty() {
                    out.push(id);
                }
            }
        } else {
            let id: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !id.is_empty() {
                out.push(id);
            }
        }
    }
    out
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn modules_import_only_the_layers_below_them() {
    let src = src_dir();
    let layers: BTreeMap<&str, BTreeSet<&str>> = LAYERS
        .iter()
        .map(|(m, deps)| (*m, deps.iter().copied().collect()))
        .collect();
    let mut broken = Vec::new();
    let mut checked = 0;
    for file in rust_files(&src) {
        let path = module_path(&src, &file);
        // lib.rs declares the modules; main.rs is the binary, above everything.
        let Some(module) = path.first() else { continue };
        let allowed = layers.get(module.as_str()).unwrap_or_else(|| {
            panic!(
                "{}: module `{module}` has no entry in LAYERS (tests/architecture.rs)",
                file.display()
            )
        });
        let text = fs::read_to_string(&file).expect("read source");
        for (line, code) in code_lines(&text) {
            for target in idents_after(&code, "crate::") {
                checked += 1;
                if target != *module && !allowed.contains(target.as_str()) {
                    broken.push(format!(
                        "{}:{line}: `{module}` imports `crate::{target}`, but may import only \
                         {allowed:?}",
                        file.strip_prefix(&src).unwrap().display()
                    ));
                }
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} crate paths found: the scan is broken"
    );
    assert!(
        broken.is_empty(),
        "imports against the layering:\n{}",
        broken.join("\n")
    );
}

#[test]
fn every_module_has_a_layer_and_no_layer_names_an_unknown_module() {
    let lib = fs::read_to_string(src_dir().join("lib.rs")).expect("read lib.rs");
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    let layered: BTreeSet<String> = LAYERS.iter().map(|(m, _)| m.to_string()).collect();
    assert_eq!(declared, layered, "src/lib.rs's modules vs LAYERS");
    for (m, deps) in LAYERS {
        for d in *deps {
            assert!(
                layered.contains(*d),
                "{m} may import {d}, which is no module"
            );
        }
    }
}

#[test]
fn layers_form_no_circle() {
    // Each module's allowed set must only name modules listed before it.
    let mut seen = BTreeSet::new();
    for (m, deps) in LAYERS {
        for d in *deps {
            assert!(
                seen.contains(d),
                "{m} may import {d}, which is not below it in LAYERS"
            );
        }
        seen.insert(*m);
    }
}

#[test]
fn files_of_one_module_import_each_other_in_one_direction() {
    let src = src_dir();
    // Edges between sibling files: (directory module, from file) → files it names.
    let mut edges: BTreeMap<(Vec<String>, String), BTreeSet<String>> = BTreeMap::new();
    let files = rust_files(&src);
    let mut siblings: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let path = module_path(&src, file);
        if file.file_name().is_some_and(|n| n == "mod.rs") || path.len() < 2 {
            continue;
        }
        let (name, parent) = path.split_last().expect("non-empty");
        siblings
            .entry(parent.to_vec())
            .or_default()
            .insert(name.clone());
    }
    for file in &files {
        let path = module_path(&src, file);
        if file.file_name().is_some_and(|n| n == "mod.rs") || path.len() < 2 {
            continue;
        }
        let (name, parent) = path.split_last().expect("non-empty");
        let sibs = &siblings[parent];
        let text = fs::read_to_string(file).expect("read source");
        let parent_path = format!("crate::{}::", parent.join("::"));
        for (_, code) in code_lines(&text) {
            let named = idents_after(&code, "super::")
                .into_iter()
                .chain(idents_after(&code, &parent_path));
            for target in named {
                if target != *name && sibs.contains(&target) {
                    edges
                        .entry((parent.to_vec(), name.clone()))
                        .or_default()
                        .insert(target);
                }
            }
        }
    }
    // Depth-first search for a circle within each directory module.
    let mut circles = Vec::new();
    for (parent, sibs) in &siblings {
        let next = |f: &String| -> Vec<String> {
            edges
                .get(&(parent.clone(), f.clone()))
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default()
        };
        for start in sibs {
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            let mut visited = BTreeSet::new();
            while let Some((at, trail)) = stack.pop() {
                for n in next(&at) {
                    if n == *start {
                        circles.push(format!(
                            "{}: {} → {start}",
                            parent.join("::"),
                            trail.join(" → ")
                        ));
                    } else if visited.insert(n.clone()) {
                        let mut t = trail.clone();
                        t.push(n.clone());
                        stack.push((n, t));
                    }
                }
            }
        }
    }
    assert!(
        !edges.is_empty(),
        "no imports between sibling files found: the scan is broken"
    );
    assert!(
        circles.is_empty(),
        "files that import each other:\n{}",
        circles.join("\n")
    );
}
