//! The controller's modules import one way (ARCHITECTURE.md: data flows
//! one way): no module reaches, through the modules it names, back to
//! itself. Read from the source: every `crate::NAME` a module's non-test
//! code mentions (and `use crate::{...}` lists) is an edge; a cycle is a
//! failure naming its modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module name -> the crate modules its code mentions.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
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
fn the_controllers_modules_import_one_way() {
    let graph = module_graph();
    assert!(graph.len() > 30, "the source was read: {} modules", graph.len());
    assert!(
        graph["campaign"].contains("trial"),
        "edges are read: {:?}",
        graph["campaign"]
    );
    assert_eq!(
        cycles(&graph),
        Vec::<Vec<String>>::new(),
        "modules that import each other, round"
    );
}

/// The command line is the top layer: the library's other modules never
/// name it (they take plain data; the CLI turns flags into that data).
#[test]
fn nothing_below_the_command_line_names_it() {
    let graph = module_graph();
    assert!(
        graph["cli"].contains("campaign"),
        "cli's edges are read: {:?}",
        graph["cli"]
    );
    let users: Vec<&String> = graph
        .iter()
        .filter(|(name, uses)| *name != "cli" && uses.contains("cli"))
        .map(|(name, _)| name)
        .collect();
    assert!(users.is_empty(), "modules that reach up into cli: {users:?}");
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
