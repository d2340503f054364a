//! The crate's layering, checked from its source.
//!
//! The rules are the table in `src/lib.rs` ("may import"). Every file in `src/` is parsed (with
//! `syn`); every path it names — in `use` trees (nested groups included), in code, and in the
//! tokens of macro calls — is resolved against the file's module (`crate::`, `super::` however
//! many times, `self::`) and must stay within the file's own top-level module or name one its
//! row allows. Within each directory module, files must not import each other in a circle,
//! whether they name a sibling file or an item the parent's `mod.rs` re-exports from it. A
//! wrong-way import fails with the file, the module it reached and the rule.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The "may import" column of `src/lib.rs`'s layer table, in the table's order.
fn layers() -> Vec<(String, BTreeSet<String>)> {
    let lib = fs::read_to_string(src_dir().join("lib.rs")).expect("read lib.rs");
    let mut out = Vec::new();
    for line in lib.lines() {
        let Some(row) = line.strip_prefix("//! | [`") else {
            continue;
        };
        let module = row.split('`').next().expect("a module name").to_string();
        let allowed = row
            .trim_end()
            .trim_end_matches('|')
            .rsplit('|')
            .next()
            .expect("a last column");
        let allowed = allowed
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect();
        out.push((module, allowed));
    }
    out
}

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

/// The module path of a file: `src/wal/disk.rs` → [wal, disk], `src/wal/mod.rs` → [wal],
/// `src/lib.rs` → [].
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

/// Every path a file names, resolved to absolute module paths (segments after `crate`), with
/// the line it is on. Paths that start anywhere else (std, other crates, local names) are
/// not this test's business and are dropped.
struct Paths {
    /// The module the visitor is in: the file's, plus inline `mod` blocks entered.
    module: Vec<String>,
    found: Vec<(Vec<String>, usize)>,
}

impl Paths {
    /// `segments` as written, from the current module; `None` if not crate-relative. A `use`
    /// path may also start with a child module's name (`use machine::StateMachine;` in a
    /// `mod.rs`): `relative` resolves such a path from the current module (a path into another
    /// crate then lands inside the current module, where no rule looks at it).
    fn resolve(&self, segments: &[String], relative: bool) -> Option<Vec<String>> {
        let mut at = self.module.clone();
        let mut rest = segments;
        match rest.first().map(String::as_str) {
            Some("crate") => {
                at.clear();
                rest = &rest[1..];
            }
            Some("super") => {
                while rest.first().map(String::as_str) == Some("super") {
                    at.pop()?;
                    rest = &rest[1..];
                }
            }
            Some("self") => rest = &rest[1..],
            Some(_) if relative => {}
            _ => return None,
        }
        at.extend(rest.iter().cloned());
        Some(at)
    }

    fn add(&mut self, segments: &[String], line: usize) {
        if let Some(p) = self.resolve(segments, false) {
            self.found.push((p, line));
        }
    }

    fn add_use(&mut self, segments: &[String], line: usize) {
        if let Some(p) = self.resolve(segments, true) {
            self.found.push((p, line));
        }
    }

    /// Walks a `use` tree, adding each leaf's full path (nested groups included).
    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.add_use(prefix, n.ident.span().start().line);
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.add_use(prefix, r.ident.span().start().line);
                prefix.pop();
            }
            syn::UseTree::Glob(g) => self.add_use(prefix, g.star_token.spans[0].start().line),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// Paths inside a macro call's tokens (`format!("…", crate::x::y)`, `matches!(…)`): runs
    /// of `ident :: ident …` that start with `crate`, `super` or `self`.
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id)
                    if matches!(id.to_string().as_str(), "crate" | "super" | "self") =>
                {
                    let line = id.span().start().line;
                    let mut segments = vec![id.to_string()];
                    let mut j = i + 1;
                    loop {
                        let colons = matches!(
                            (trees.get(j), trees.get(j + 1)),
                            (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)))
                                if a.as_char() == ':' && b.as_char() == ':'
                        );
                        match (colons, trees.get(j + 2)) {
                            (true, Some(TokenTree::Ident(next))) => {
                                segments.push(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    self.add(&segments, line);
                    i = j;
                    continue;
                }
                _ => {}
            }
            i += 1;
        }
    }
}

impl<'ast> Visit<'ast> for Paths {
    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if let Some(first) = p.segments.first() {
            self.add(&segments, first.ident.span().start().line);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        self.module.push(m.ident.to_string());
        syn::visit::visit_item_mod(self, m);
        self.module.pop();
    }
}

/// The resolved paths one source text names, from module `module`.
fn paths_in(text: &str, module: &[String], file: &Path) -> Vec<(Vec<String>, usize)> {
    let ast = syn::parse_file(text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let mut v = Paths {
        module: module.to_vec(),
        found: Vec::new(),
    };
    v.visit_file(&ast);
    v.found
}

/// One file of `src/`: its module path and the resolved paths it names, with their lines.
struct Source {
    file: PathBuf,
    module: Vec<String>,
    paths: Vec<(Vec<String>, usize)>,
}

/// Every file in `src/`.
fn scan() -> Vec<Source> {
    let src = src_dir();
    rust_files(&src)
        .into_iter()
        .map(|file| {
            let module = module_path(&src, &file);
            let text = fs::read_to_string(&file).expect("read source");
            let paths = paths_in(&text, &module, &file);
            Source {
                file,
                module,
                paths,
            }
        })
        .collect()
}

/// The layer violations in `files`, one line each.
fn violations(layers: &[(String, BTreeSet<String>)], files: &[Source]) -> Vec<String> {
    let rules: BTreeMap<&str, &BTreeSet<String>> =
        layers.iter().map(|(m, a)| (m.as_str(), a)).collect();
    let mut broken = Vec::new();
    for Source {
        file,
        module,
        paths,
    } in files
    {
        // lib.rs declares the modules; main.rs is the binary, above everything.
        let Some(own) = module.first() else { continue };
        let allowed = rules.get(own.as_str()).unwrap_or_else(|| {
            panic!(
                "{}: module `{own}` has no row in src/lib.rs's layer table",
                file.display()
            )
        });
        for (path, line) in paths {
            let Some(target) = path.first() else { continue };
            if target != own && rules.contains_key(target.as_str()) && !allowed.contains(target) {
                broken.push(format!(
                    "{}:{line}: `{own}` reaches `crate::{}`, but may import only {allowed:?}",
                    file.display(),
                    path.join("::")
                ));
            }
        }
    }
    broken
}

#[test]
fn modules_import_only_the_layers_their_row_allows() {
    let layers = layers();
    let files = scan();
    let seen: usize = files.iter().map(|s| s.paths.len()).sum();
    assert!(
        seen > 500,
        "only {seen} crate paths found: the scan is broken"
    );
    let broken = violations(&layers, &files);
    assert!(
        broken.is_empty(),
        "imports against the layering (src/lib.rs):\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_layer_table_names_every_module_once_and_only_modules_above_each_row() {
    let lib = fs::read_to_string(src_dir().join("lib.rs")).expect("read lib.rs");
    let declared: BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|m| m.trim_end_matches(';').to_string())
        .collect();
    let layers = layers();
    let rows: Vec<&String> = layers.iter().map(|(m, _)| m).collect();
    let listed: BTreeSet<String> = rows.iter().map(|m| m.to_string()).collect();
    assert_eq!(rows.len(), listed.len(), "a module has two rows: {rows:?}");
    assert_eq!(declared, listed, "src/lib.rs's modules vs its layer table");
    let mut above = BTreeSet::new();
    for (m, allowed) in &layers {
        for a in allowed {
            assert!(
                above.contains(a),
                "{m} may import {a}, which is not above it in the table"
            );
        }
        above.insert(m.clone());
    }
}

#[test]
fn files_of_one_module_import_each_other_in_one_direction() {
    let src = src_dir();
    let files = scan();
    // Sibling files of each directory module, and what its mod.rs re-exports from which file.
    let mut siblings: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let path = module_path(&src, &file);
        if file.file_name().is_some_and(|n| n != "mod.rs") && path.len() >= 2 {
            let (name, parent) = path.split_last().expect("non-empty");
            siblings
                .entry(parent.to_vec())
                .or_default()
                .insert(name.clone());
        }
    }
    let mut reexports: BTreeMap<(Vec<String>, String), String> = BTreeMap::new();
    for Source {
        file,
        module,
        paths,
    } in &files
    {
        if file.file_name().is_some_and(|n| n == "mod.rs") {
            let sibs = siblings.get(module).cloned().unwrap_or_default();
            for (p, _) in paths {
                if p.len() == module.len() + 2 && p.starts_with(module) {
                    let (from, item) = (&p[module.len()], &p[module.len() + 1]);
                    if sibs.contains(from) {
                        reexports.insert((module.clone(), item.clone()), from.clone());
                    }
                }
            }
        }
    }
    // Edges: file → sibling file it names (directly or through its parent's re-export).
    let mut edges: BTreeMap<(Vec<String>, String), BTreeSet<String>> = BTreeMap::new();
    for Source {
        file,
        module,
        paths,
    } in &files
    {
        if file.file_name().is_some_and(|n| n == "mod.rs") || module.len() < 2 {
            continue;
        }
        let (name, parent) = module.split_last().expect("non-empty");
        let sibs = &siblings[parent];
        for (p, _) in paths {
            if p.len() <= parent.len() || !p.starts_with(parent) {
                continue;
            }
            let next = &p[parent.len()];
            let target = if sibs.contains(next) {
                Some(next.clone())
            } else {
                reexports.get(&(parent.to_vec(), next.clone())).cloned()
            };
            if let Some(t) = target
                && t != *name
            {
                edges
                    .entry((parent.to_vec(), name.clone()))
                    .or_default()
                    .insert(t);
            }
        }
    }
    assert!(
        edges.len() > 20,
        "only {} files import a sibling: the scan is broken",
        edges.len()
    );
    let mut circles = Vec::new();
    for (parent, sibs) in &siblings {
        for start in sibs {
            let mut stack = vec![(start.clone(), vec![start.clone()])];
            let mut visited = BTreeSet::new();
            while let Some((at, trail)) = stack.pop() {
                let next = edges
                    .get(&(parent.clone(), at))
                    .cloned()
                    .unwrap_or_default();
                for n in next {
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
        circles.is_empty(),
        "files that import each other:\n{}",
        circles.join("\n")
    );
}

/// The scan sees the forms a line-based reading misses: a `use` group over several lines,
/// nested groups, `super::super::`, a path inside a macro call, a path after a `//` in a string,
/// a `use` path relative to the current module.
#[test]
fn the_scan_resolves_every_form_of_path() {
    let text = r#"
        use crate::{
            a::X,
            b::{c::Y, Z},
        };
        use super::super::d::W;
        fn f() {
            let _ = format!("http://{}", crate::e::V);
            let _ = self::g::U;
            mod inner { use super::h::T; }
        }
        use child::S;
    "#;
    let module = vec!["m".to_string(), "n".to_string(), "o".to_string()];
    let found: BTreeSet<String> = paths_in(text, &module, Path::new("example.rs"))
        .into_iter()
        .map(|(p, _)| p.join("::"))
        .collect();
    for want in [
        "a::X",
        "b::c::Y",
        "b::Z",
        "m::d::W",
        "e::V",
        "m::n::o::g::U",
        "m::n::o::h::T",
        "m::n::o::child::S",
    ] {
        assert!(found.contains(want), "{want} not found in {found:?}");
    }
}
