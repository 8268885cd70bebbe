//! The controller's layers import one way (ARCHITECTURE.md: data flows
//! one way). Across crates: each layer's crate depends only on the layers
//! below it (read from `cargo metadata`; a cycle would not compile, an
//! upward arrow between two layers would). Within a crate: no module
//! reaches, through the modules it names, back to itself. Read from the
//! source: every `crate::NAME` a module's non-test code mentions (and
//! `use crate::{...}` lists) is an edge; a cycle is a failure naming its
//! modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The controller's crates, bottom to top (directories under controller/,
/// "" for the CLI's own), with their package names.
const LAYERS: &[(&str, &str)] = &[
    ("config", "crashlab-config"),
    ("machine", "crashlab-machine"),
    ("models", "crashlab-models"),
    ("campaign", "crashlab-campaign"),
    ("tools", "crashlab-tools"),
    ("", "crashlab-controller"),
];

/// Module name -> the crate modules its code mentions, for the crate in
/// `controller/<dir>`.
fn module_graph(dir: &str) -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join("src");
    let mut modules: BTreeMap<String, String> = BTreeMap::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        // Each file's non-test code: what precedes its `#[cfg(test)]`.
        let code_of = |file: &Path| {
            let text = std::fs::read_to_string(file).unwrap_or_default();
            text.split("#[cfg(test)]").next().unwrap_or("").to_string()
        };
        let code = if path.is_dir() {
            // A module directory (powerloss/, cli/): all its files are one module.
            std::fs::read_dir(&path)
                .unwrap()
                .map(|f| code_of(&f.unwrap().path()))
                .collect::<Vec<_>>()
                .join("\n")
        } else {
            code_of(&path)
        };
        if name == "main" || name == "lib" {
            continue;
        }
        modules.entry(name).or_default().push_str(&code);
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    modules
        .iter()
        .map(|(name, code)| {
            let mut uses = BTreeSet::new();
            for (i, _) in code.match_indices("crate::") {
                let rest = &code[i + "crate::".len()..];
                if let Some(list) = rest.strip_prefix('{') {
                    let list = &list[..list.find('}').unwrap_or(0)];
                    uses.extend(
                        list.split(',')
                            .map(|m| m.trim().split("::").next().unwrap_or("").to_string()),
                    );
                } else {
                    let word: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    uses.insert(word);
                }
            }
            let uses = uses.into_iter().filter(|u| names.contains(u) && u != name).collect();
            (name.clone(), uses)
        })
        .collect()
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        let n = w.index.len();
        w.index.insert(v, n);
        w.low.insert(v, n);
        w.stack.push(v);
        w.on_stack.insert(v);
        for u in &w.graph[v] {
            if !w.index.contains_key(u.as_str()) {
                visit(w, u);
                let low = w.low[v].min(w.low[u.as_str()]);
                w.low.insert(v, low);
            } else if w.on_stack.contains(u.as_str()) {
                let low = w.low[v].min(w.index[u.as_str()]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = Vec::new();
            while let Some(u) = w.stack.pop() {
                w.on_stack.remove(u);
                component.push(u.to_string());
                if u == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                w.found.push(component);
            }
        }
    }
    let mut w = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !w.index.contains_key(v.as_str()) {
            visit(&mut w, v);
        }
    }
    w.found
}

#[test]
fn each_crates_modules_import_one_way() {
    let graphs: Vec<_> = LAYERS.iter().map(|(dir, _)| (*dir, module_graph(dir))).collect();
    let modules: usize = graphs.iter().map(|(_, g)| g.len()).sum();
    assert!(modules > 30, "the sources were read: {modules} modules");
    let models = &graphs.iter().find(|(dir, _)| *dir == "models").unwrap().1;
    assert!(
        models["kernel_crash"].contains("evidence"),
        "edges are read: {:?}",
        models["kernel_crash"]
    );
    for (dir, graph) in &graphs {
        assert_eq!(
            cycles(graph),
            Vec::<Vec<String>>::new(),
            "modules of controller/{dir} that import each other, round"
        );
    }
}

/// Each layer's normal (non-dev) dependencies among the layers, from
/// `cargo metadata`.
fn layer_dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--no-deps", "--format-version=1", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let layer_names: BTreeSet<&str> = LAYERS.iter().map(|(_, name)| *name).collect();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| layer_names.contains(p["name"].as_str().unwrap()))
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null() && layer_names.contains(d["name"].as_str().unwrap()))
                .map(|d| d["name"].as_str().unwrap().to_string())
                .collect();
            (p["name"].as_str().unwrap().to_string(), deps)
        })
        .collect()
}

/// Every arrow points down: a layer names only layers below it, so the CLI
/// is the top (nothing names it) and `config` the bottom (it names none).
#[test]
fn each_layer_depends_only_on_the_layers_below_it() {
    let deps = layer_dependencies();
    assert_eq!(deps.len(), LAYERS.len(), "every layer is a workspace package: {deps:?}");
    assert!(
        deps["crashlab-tools"].contains("crashlab-campaign"),
        "edges are read: {deps:?}"
    );
    for (rank, (_, name)) in LAYERS.iter().enumerate() {
        let below: BTreeSet<String> = LAYERS[..rank].iter().map(|(_, n)| n.to_string()).collect();
        let upward: Vec<&String> = deps[*name].difference(&below).collect();
        assert!(upward.is_empty(), "{name} names layers at or above it: {upward:?}");
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    let edge = |a: &str, b: &[&str]| (a.to_string(), b.iter().map(|s| s.to_string()).collect());
    let graph: BTreeMap<String, BTreeSet<String>> = [
        edge("a", &["b"]),
        edge("b", &["c"]),
        edge("c", &["a"]),
        edge("d", &["a"]),
    ]
    .into_iter()
    .collect();
    assert_eq!(cycles(&graph), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
}
