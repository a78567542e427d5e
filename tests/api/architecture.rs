//! The direction of imports between the top-level modules of `src/` (docs/architecture.md):
//! read from the `crate::` paths of each file outside its `#[cfg(test)]` part, with no build
//! tool (cargo-modules would build rust-analyzer's crates on every fresh CI machine).
//!
//! A cycle makes modules impossible to understand, test or delete one at a time: there is
//! none, and a new one fails. The example domain is a guest: only its own files import it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

// example-domain:begin
/// The files of the example domain outside `src/invoices/`: its routes, the one place it plugs
/// into the app (`routes::invoices::example_domain`).
const EXAMPLE_DOMAIN_ROUTES: &[&str] = &[
    "routes/attachments.rs",
    "routes/events.rs",
    "routes/invoices.rs",
    "routes/stats.rs",
    "routes/webhooks.rs",
];
// example-domain:end

fn source_files(dir: &Path, files: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable").flatten() {
        let path = entry.path();
        if path.is_dir() {
            source_files(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
}

/// The top-level modules: `src/NAME.rs` and `src/NAME/`, but `lib` and `main`.
fn top_level_modules(src: &Path) -> BTreeSet<String> {
    std::fs::read_dir(src)
        .expect("src/ is readable")
        .flatten()
        .filter_map(|entry| {
            let path = entry.path();
            let name = path.file_stem()?.to_str()?.to_owned();
            (path.is_dir() || path.extension().is_some_and(|e| e == "rs")).then_some(name)
        })
        .filter(|name| name != "lib" && name != "main")
        .collect()
}

/// The top-level modules `text` names after `crate::`, directly or in a `use crate::{…}` group.
fn imports(text: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let identifier = |text: &str| -> String {
        text.trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let Some(group) = rest.strip_prefix('{') else {
            found.insert(identifier(rest));
            continue;
        };
        // The first name of each item of the group: `{db::{self, Pool}, error}` names db and error.
        found.insert(identifier(group));
        let mut depth = 1;
        for (i, c) in group.char_indices() {
            match c {
                '{' => depth += 1,
                '}' if depth == 1 => break,
                '}' => depth -= 1,
                ',' if depth == 1 => {
                    found.insert(identifier(&group[i + 1..]));
                }
                _ => {}
            }
        }
    }
    found.retain(|name| modules.contains(name));
    found
}

/// Each file of `src/` (its path below `src/`) with the top-level modules it imports.
fn file_imports() -> Vec<(String, BTreeSet<String>)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let modules = top_level_modules(&src);
    let mut files = Vec::new();
    source_files(&src, &mut files);
    files
        .into_iter()
        .map(|file| {
            let relative = file
                .strip_prefix(&src)
                .expect("under src/")
                .to_string_lossy()
                .into_owned();
            let text = std::fs::read_to_string(&file).expect("a readable source file");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            (relative, imports(code, &modules))
        })
        .collect()
}

fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = top_level_modules(&src)
        .into_iter()
        .map(|m| (m, BTreeSet::new()))
        .collect();
    for (file, imported) in file_imports() {
        let top = file.split('/').next().unwrap_or_default().trim_end_matches(".rs");
        let Some(edges) = graph.get_mut(top) else {
            continue; // lib.rs, main.rs
        };
        edges.extend(imported.into_iter().filter(|m| m != top));
    }
    graph
}

/// The strongly connected components of more than one module (Tarjan's algorithm).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'g> {
        graph: &'g BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        found: Vec<Vec<String>>,
    }
    impl<'g> Walk<'g> {
        fn visit(&mut self, node: &'g str) {
            let next = self.index.len();
            self.index.insert(node, next);
            self.low.insert(node, next);
            self.stack.push(node);
            for target in self.graph.get(node).into_iter().flatten() {
                let target = target.as_str();
                if !self.index.contains_key(target) {
                    self.visit(target);
                    let low = self.low[node].min(self.low[target]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&target) {
                    let low = self.low[node].min(self.index[target]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let at = self.stack.iter().rposition(|n| *n == node).unwrap_or(0);
                let mut component: Vec<String> = self.stack.drain(at..).map(str::to_owned).collect();
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for node in graph.keys() {
        if !walk.index.contains_key(node.as_str()) {
            walk.visit(node);
        }
    }
    walk.found.sort();
    walk.found
}

#[test]
fn no_import_cycle_among_the_top_level_modules() {
    let graph = import_graph();
    assert!(graph.len() > 10, "modules found: {:?}", graph.keys());
    let cycles = cycles(&graph);
    assert!(
        cycles.is_empty(),
        "import cycles {cycles:?}: see docs/architecture.md for the direction\nthe imports: {graph:#?}"
    );
}

#[test]
fn only_the_example_domain_imports_the_example_domain() {
    let importers: Vec<String> = file_imports()
        .into_iter()
        .filter(|(file, imported)| imported.contains("invoices") && !file.starts_with("invoices"))
        .map(|(file, _)| file)
        .collect();
    let allowed: &[&[&str]] = &[
        // example-domain:begin
        EXAMPLE_DOMAIN_ROUTES,
        // example-domain:end
    ];
    let core: Vec<&String> = importers
        .iter()
        .filter(|file| !allowed.iter().any(|files| files.contains(&file.as_str())))
        .collect();
    assert!(core.is_empty(), "the core imports the example domain: {core:?}");
}

#[test]
fn the_cycle_finder_finds_cycles_and_only_them() {
    let graph: BTreeMap<String, BTreeSet<String>> = [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e")]
        .into_iter()
        .fold(BTreeMap::new(), |mut graph, (from, to)| {
            graph.entry(from.to_owned()).or_default().insert(to.to_owned());
            graph.entry(to.to_owned()).or_default();
            graph
        });
    assert_eq!(cycles(&graph), [["a", "b", "c"]]);
    let modules: BTreeSet<String> = ["db", "error", "config"].iter().map(|m| (*m).to_owned()).collect();
    let text = "use crate::{db::{self, Pool}, error::ApiError};\nfn f() { crate::config::load(); }";
    assert_eq!(imports(text, &modules), modules);
}
