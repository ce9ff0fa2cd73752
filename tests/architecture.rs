//! The architecture check: the import graph of `src/` has no cycle, and no module imports from a
//! layer above its own (the layers are listed in `src/lib.rs` and in `LAYERS` below).
//!
//! Run `cargo test --test architecture -- --nocapture` to print the graph. `BELTCAM_ARCH_SRC=DIR`
//! checks another tree (e.g. an old checkout's `src/`). Only non-test code counts: a file is read up
//! to its first top-level `#[cfg(test)]`. A module and its own children may import each other
//! (`mod.rs` re-exports, children using their parent's types); every other edge counts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, bottom first. A module may import its own layer or lower ones.
const LAYERS: &[&[&str]] = &[
    &["limits", "shutdown", "systemd", "logging", "config"],
    &["obs"],
    &["pool", "http"],
    &["capture"],
    &["admit"],
    &["net"],
    &["serve"],
    &["daemon"],
];

fn layer_of(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    LAYERS.iter().position(|l| l.contains(&top))
}

/// Module path (`serve::conn`) of every `.rs` file under `src` (lib.rs and main.rs excluded).
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut map = BTreeMap::new();
    for f in files {
        let rel = f.strip_prefix(src).unwrap().with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod") {
            parts.pop();
        }
        if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
            continue;
        }
        map.insert(parts.join("::"), f);
    }
    map
}

/// The non-test code of a file, without comments.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("#[cfg(test)]") {
            break;
        }
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        out.push_str(line.split(" // ").next().unwrap_or(""));
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Expands `a::b::{c, d::{e, f}}` starting at `s` into the paths it names (segments only).
fn expand(s: &str) -> Vec<Vec<String>> {
    let mut segs = Vec::new();
    let mut rest = s;
    loop {
        let n = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
        if n > 0 {
            segs.push(rest[..n].to_string());
            rest = &rest[n..];
        }
        let group = if segs.is_empty() {
            rest.strip_prefix('{')
        } else {
            None
        };
        if let Some(r) = rest.strip_prefix("::").or(group.map(|_| rest)) {
            rest = r.trim_start();
            if let Some(inner) = rest.strip_prefix('{') {
                // Split the group at top-level commas.
                let mut depth = 0;
                let mut items = Vec::new();
                let mut start = 0;
                let mut end = inner.len();
                for (i, c) in inner.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            end = i;
                            break;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            items.push(&inner[start..i]);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                items.push(&inner[start..end]);
                let mut out = Vec::new();
                for item in items {
                    let item = item.trim();
                    if item.is_empty() {
                        continue;
                    }
                    for tail in expand(item) {
                        let mut p = segs.clone();
                        if tail.first().is_some_and(|t| t == "self") {
                            p.extend(tail.into_iter().skip(1));
                        } else {
                            p.extend(tail);
                        }
                        out.push(p);
                    }
                }
                return out;
            }
            continue;
        }
        return vec![segs];
    }
}

/// Every module path referred to from `module`'s code, absolute from the crate root.
fn references(module: &str, text: &str) -> Vec<Vec<String>> {
    let own: Vec<String> = module.split("::").map(String::from).collect();
    // `super` is relative to the module the file *is*: for `a/b.rs` (module a::b) it is `a`.
    let parent: Vec<String> = own[..own.len() - 1].to_vec();
    let mut out = Vec::new();
    for (prefix, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut from = 0;
        while let Some(i) = text[from..].find(prefix) {
            let at = from + i;
            from = at + prefix.len();
            if at > 0 && is_ident(text[..at].chars().last().unwrap()) {
                continue; // e.g. `mycrate::`
            }
            for p in expand(&text[at + prefix.len()..]) {
                let mut abs = base.clone();
                abs.extend(p);
                out.push(abs);
            }
        }
    }
    out
}

/// The longest module that `path` names or is inside of.
fn resolve<'a>(mods: &'a BTreeMap<String, PathBuf>, path: &[String]) -> Option<&'a str> {
    (1..=path.len()).rev().find_map(|n| {
        mods.get_key_value(&path[..n].join("::"))
            .map(|(k, _)| k.as_str())
    })
}

fn is_parent_child(a: &str, b: &str) -> bool {
    let parent = |m: &str| m.rsplit_once("::").map(|(p, _)| p.to_string());
    parent(a).as_deref() == Some(b) || parent(b).as_deref() == Some(a)
}

/// Strongly connected components of more than one module (Tarjan, iterative enough for our size).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'g> {
        g: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on: BTreeSet<&'g str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    impl<'g> T<'g> {
        fn visit(&mut self, v: &'g str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut scc = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    scc.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if scc.len() > 1 {
                    scc.sort();
                    self.out.push(scc);
                }
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn import_graph_has_no_cycle_and_respects_layers() {
    let src = std::env::var_os("BELTCAM_ARCH_SRC")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("src"));
    let mods = modules(&src);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, path) in &mods {
        let deps = graph.entry(m.clone()).or_default();
        for r in references(m, &code(path)) {
            if let Some(target) = resolve(&mods, &r) {
                if target != m && !is_parent_child(m, target) {
                    deps.insert(target.to_string());
                }
            }
        }
    }
    let mut problems = Vec::new();
    println!(
        "import graph of {} ({} modules):",
        src.display(),
        mods.len()
    );
    for (m, deps) in &graph {
        let layer = layer_of(m);
        if layer.is_none() {
            problems.push(format!(
                "module {m} has no layer (add it to LAYERS and lib.rs)"
            ));
        }
        let list: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!(
            "  [{}] {m} -> {}",
            layer.map_or("?".into(), |l| (l + 1).to_string()),
            list.join(", ")
        );
        for d in deps {
            if let (Some(a), Some(b)) = (layer, layer_of(d)) {
                if b > a {
                    problems.push(format!(
                        "{m} (layer {}) imports {d} (layer {}), a higher layer",
                        a + 1,
                        b + 1
                    ));
                }
            }
        }
    }
    for scc in cycles(&graph) {
        problems.push(format!("import cycle among: {}", scc.join(", ")));
    }
    let per_layer: Vec<String> = LAYERS
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let lines: usize = mods
                .iter()
                .filter(|(m, _)| layer_of(m) == Some(i))
                .map(|(_, p)| std::fs::read_to_string(p).map_or(0, |t| t.lines().count()))
                .sum();
            format!("{} {}: {lines}", i + 1, l.join("/"))
        })
        .collect();
    println!("lines per layer: {}", per_layer.join("; "));
    assert!(
        problems.is_empty(),
        "architecture check failed:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn path_expansion() {
    let g: Vec<String> = expand("{a, b::C};").iter().map(|s| s.join("::")).collect();
    assert_eq!(g, ["a", "b::C"]);
    let p = expand("obs::{self, health::Status, stats::{A, B}};");
    let names: Vec<String> = p.iter().map(|s| s.join("::")).collect();
    assert_eq!(
        names,
        [
            "obs",
            "obs::health::Status",
            "obs::stats::A",
            "obs::stats::B"
        ]
    );
}

#[test]
fn detects_a_cycle() {
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(cycles(&g), vec![vec!["a".to_string(), "b".to_string()]]);
}
