//! No top-level module of `node/src` imports from a module that imports it back
//! (docs/ARCHITECTURE.md, "Layers"). The modules form layers so that each can be read,
//! tested and replaced from the ones below it; a cycle is where that stops being true.
//!
//! `top_level_modules_import_each_other_in_no_cycle`, in steps:
//! 1. list the top-level modules: the directories and `.rs` files directly under
//!    `node/src` (`lib.rs` and `bin/` aside);
//! 2. read every source file of each module, drop comments, string and char literals and
//!    `#[cfg(test)]` items (a unit test may drive its module through a higher one), and
//!    collect its references to other top-level modules: `crate::m`, `crate::{m, ..}`
//!    and `super::` chains that climb to the crate root;
//! 3. find the strongly connected components of that graph, less the edges in
//!    [`ALLOWED`], and fail listing each component of two or more modules with every
//!    edge inside it and the lines that make it.
//!
//! `api_submodules_import_each_other_in_no_cycle` does the same for the submodules of
//! `node/src/api` (references `crate::api::m`, `super::m` from a file of `api/`).
//!
//! The other tests check the scanner itself on small sources.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

#[path = "support/source_scan.rs"]
mod source_scan;

use source_scan::{rust_files, tokens, Token};

/// Edges left out of the graph, each with why it stands: `(from, to, why)`. Empty: a
/// new entry is a debt to name in review, never a way to quiet the check.
const ALLOWED: &[(&str, &str, &str)] = &[];

/// One reference from a module to another: the file and line that make it.
type Evidence = BTreeMap<(String, String), Vec<String>>;

/// The modules of `root` (the crate root when empty, `["api"]` for the submodules of
/// `api/`) one file refers to, with the line of each reference. `file_path` is the
/// file's module path (`["shard", "query"]` for `shard/query.rs`); inline `mod x { .. }`
/// blocks extend it, so `super::` chains resolve where they stand.
fn references(
    source: &str,
    file_path: &[String],
    root: &[String],
    modules: &BTreeSet<String>,
) -> Vec<(String, usize)> {
    let tokens = tokens(source);
    let ident = |k: usize| match tokens.get(k) {
        Some((Token::Ident(name), _)) => Some(name.as_str()),
        _ => None,
    };
    let is = |k: usize, want: &Token| tokens.get(k).map(|(token, _)| token) == Some(want);
    let mut found = Vec::new();
    // One entry per open brace: `Some(name)` for an inline module's body.
    let mut braces: Vec<Option<String>> = Vec::new();
    let mut pending_mod: Option<String> = None;
    let mut k = 0;
    while k < tokens.len() {
        let (token, line) = &tokens[k];
        // `#[cfg(test)]`: skip the item it marks, up to its `;` or its closing brace.
        if *token == Token::Punct('#')
            && is(k + 1, &Token::Punct('['))
            && ident(k + 2) == Some("cfg")
            && is(k + 3, &Token::Punct('('))
            && ident(k + 4) == Some("test")
            && is(k + 5, &Token::Punct(')'))
            && is(k + 6, &Token::Punct(']'))
        {
            k += 7;
            let mut depth = 0;
            while k < tokens.len() {
                match tokens[k].0 {
                    Token::Punct('{') => depth += 1,
                    Token::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Token::Punct(';') if depth == 0 => break,
                    _ => {}
                }
                k += 1;
            }
            k += 1;
            continue;
        }
        match token {
            Token::Ident(name) if name == "mod" => {
                pending_mod = ident(k + 1).map(str::to_string);
            }
            Token::Punct(';') => pending_mod = None,
            Token::Punct('{') => braces.push(pending_mod.take()),
            Token::Punct('}') => {
                braces.pop();
            }
            Token::Ident(name) if name == "crate" && is(k + 1, &Token::PathSep) => {
                // `crate::` then the root's segments, each followed by `::`.
                let mut j = k + 2;
                let mut under_root = true;
                for segment in root {
                    if ident(j) == Some(segment.as_str()) && is(j + 1, &Token::PathSep) {
                        j += 2;
                    } else {
                        under_root = false;
                        break;
                    }
                }
                if under_root {
                    found.extend(targets(&tokens, j, modules).into_iter().map(|m| (m, *line)));
                }
            }
            Token::Ident(name)
                if name == "super"
                    && is(k + 1, &Token::PathSep)
                    && (k < 2 || !is(k - 1, &Token::PathSep)) =>
            {
                let mut depth: Vec<String> = file_path.to_vec();
                depth.extend(braces.iter().flatten().cloned());
                let mut j = k;
                while ident(j) == Some("super") && is(j + 1, &Token::PathSep) {
                    depth.pop();
                    j += 2;
                }
                if depth == root {
                    found.extend(targets(&tokens, j, modules).into_iter().map(|m| (m, *line)));
                }
            }
            _ => {}
        }
        k += 1;
    }
    found
}

/// The top-level modules named at `k`, just after `crate::`: one ident, or the first
/// ident of each entry of a `{ .. }` group.
fn targets(tokens: &[(Token, usize)], k: usize, modules: &BTreeSet<String>) -> Vec<String> {
    let mut names = Vec::new();
    match tokens.get(k).map(|(token, _)| token) {
        Some(Token::Ident(name)) => names.push(name.clone()),
        Some(Token::Punct('{')) => {
            let mut depth = 0;
            let mut entry_start = true;
            for (token, _) in &tokens[k..] {
                match token {
                    Token::Punct('{') => {
                        depth += 1;
                        entry_start = depth == 1;
                    }
                    Token::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    Token::Punct(',') if depth == 1 => entry_start = true,
                    Token::Ident(name) if entry_start && depth == 1 => {
                        names.push(name.clone());
                        entry_start = false;
                    }
                    _ => entry_start = false,
                }
            }
        }
        _ => {}
    }
    names.retain(|name| modules.contains(name));
    names
}

/// The module path of a file under a top-level module's directory.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).expect("under src");
    let mut path: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let last = path.pop().expect("a file name");
    if last != "mod.rs" {
        path.push(last.trim_end_matches(".rs").to_string());
    }
    path
}

/// Every reference between the modules of `root` (top-level modules of `src` when
/// empty), with its lines.
fn module_graph(src: &Path, root: &[String]) -> (BTreeSet<String>, Evidence) {
    let mut modules = BTreeSet::new();
    let mut dir_of_root = src.to_path_buf();
    dir_of_root.extend(root);
    for entry in std::fs::read_dir(&dir_of_root).expect("a module directory") {
        let path = entry.expect("directory entry").path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name == "lib.rs" || name == "mod.rs" || name == "bin" {
            continue;
        }
        if path.is_dir() {
            modules.insert(name);
        } else if let Some(stem) = name.strip_suffix(".rs") {
            modules.insert(stem.to_string());
        }
    }
    let mut evidence = Evidence::new();
    for module in &modules {
        let mut files = Vec::new();
        let dir = dir_of_root.join(module);
        if dir.is_dir() {
            rust_files(&dir, &mut files);
        } else {
            files.push(dir_of_root.join(format!("{module}.rs")));
        }
        for file in files {
            let source = std::fs::read_to_string(&file).expect("readable source");
            let path = module_path(src, &file);
            for (target, line) in references(&source, &path, root, &modules) {
                if &target == module {
                    continue;
                }
                let shown = file.strip_prefix(src).unwrap().display();
                evidence
                    .entry((module.clone(), target))
                    .or_default()
                    .push(format!("{shown}:{line}"));
            }
        }
    }
    (modules, evidence)
}

/// Strongly connected components of two or more modules (Tarjan's algorithm).
fn cycles(modules: &BTreeSet<String>, edges: &BTreeSet<(String, String)>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeSet<(String, String)>,
        index: BTreeMap<String, usize>,
        low: BTreeMap<String, usize>,
        stack: Vec<String>,
        on_stack: BTreeSet<String>,
        components: Vec<Vec<String>>,
    }
    fn visit(walk: &mut Walk, node: &str) {
        let number = walk.index.len();
        walk.index.insert(node.to_string(), number);
        walk.low.insert(node.to_string(), number);
        walk.stack.push(node.to_string());
        walk.on_stack.insert(node.to_string());
        let next: Vec<String> = walk
            .edges
            .iter()
            .filter(|(from, _)| from == node)
            .map(|(_, to)| to.clone())
            .collect();
        for to in next {
            if !walk.index.contains_key(&to) {
                visit(walk, &to);
                let low = walk.low[node].min(walk.low[&to]);
                walk.low.insert(node.to_string(), low);
            } else if walk.on_stack.contains(&to) {
                let low = walk.low[node].min(walk.index[&to]);
                walk.low.insert(node.to_string(), low);
            }
        }
        if walk.low[node] == walk.index[node] {
            let mut component = Vec::new();
            loop {
                let top = walk.stack.pop().expect("on the stack");
                walk.on_stack.remove(&top);
                let done = top == node;
                component.push(top);
                if done {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                walk.components.push(component);
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for module in modules {
        if !walk.index.contains_key(module) {
            visit(&mut walk, module);
        }
    }
    walk.components.sort();
    walk.components
}

#[test]
fn top_level_modules_import_each_other_in_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (modules, evidence) = module_graph(&src, &[]);
    assert!(
        modules.len() >= 8 && modules.contains("ledger") && modules.contains("api"),
        "modules found under {}: {modules:?}",
        src.display()
    );
    let report = cycles_report(&modules, &evidence, ALLOWED);
    assert!(
        report.is_empty(),
        "top-level modules of node/src import each other; move what both need down a \
         layer:\n{report}"
    );
}

/// The submodules of `api/` form layers too: headers, parameters and conversions at
/// the bottom, forwarding and ingest above them, the gRPC and HTTP services on top.
#[test]
fn api_submodules_import_each_other_in_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let (modules, evidence) = module_graph(&src, &["api".to_string()]);
    assert!(
        modules.contains("grpc") && modules.contains("ingest") && modules.contains("forward"),
        "modules found under {}: {modules:?}",
        src.join("api").display()
    );
    let report = cycles_report(&modules, &evidence, &[]);
    assert!(
        report.is_empty(),
        "submodules of node/src/api import each other; move what both need into a lower \
         module (headers.rs, params.rs, convert.rs):\n{report}"
    );
}

/// Each cycle of the graph (less the `allowed` edges, which must exist) with every edge
/// inside it and the lines that make it; empty when there is none.
fn cycles_report(
    modules: &BTreeSet<String>,
    evidence: &Evidence,
    allowed: &[(&str, &str, &str)],
) -> String {
    for (from, to, why) in allowed {
        assert!(
            evidence.contains_key(&(from.to_string(), to.to_string())),
            "allowed edge {from} -> {to} ({why}) no longer exists: remove it from ALLOWED"
        );
    }
    let edges: BTreeSet<(String, String)> = evidence
        .keys()
        .filter(|(from, to)| !allowed.iter().any(|(a, b, _)| from == a && to == b))
        .cloned()
        .collect();
    let components = cycles(modules, &edges);
    let mut report = String::new();
    for component in &components {
        report.push_str(&format!("cycle among {}:\n", component.join(", ")));
        for (from, to) in &edges {
            if component.contains(from) && component.contains(to) {
                let both = edges.contains(&(to.clone(), from.clone()));
                let lines = &evidence[&(from.clone(), to.clone())];
                report.push_str(&format!(
                    "  {from} -> {to}{}: {}\n",
                    if both { " (and back)" } else { "" },
                    lines.join(", ")
                ));
            }
        }
    }
    report
}

fn modules_of(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|name| name.to_string()).collect()
}

fn path_of(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|part| part.to_string()).collect()
}

#[test]
fn references_in_code_count_and_those_in_comments_strings_and_tests_do_not() {
    let modules = modules_of(&["api", "index", "node", "shard", "storage", "ledger"]);
    let source = r##"
//! See [`crate::api`] and `crate::node`.
/* crate::storage /* nested */ crate::storage */
use crate::index::search::Position;
use crate::{ledger::FieldError, shard::{query, cursor}};
const TEXT: &str = "crate::storage::x";
const RAW: &str = r#"crate::storage "quoted""#;
const QUOTE: char = '"';
fn f<'a>(x: &'a str) -> crate::shard::Thing { todo!() }
#[cfg(test)]
mod tests {
    use crate::api::Something;
    fn g() { crate::storage::h(); }
}
#[cfg(test)]
use crate::node::Node;
"##;
    let found = references(source, &path_of(&["index", "merge"]), &[], &modules);
    let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["index", "ledger", "shard", "shard"], "{found:?}");
    assert_eq!(found[0].1, 4, "the line of the first reference");
}

#[test]
fn super_chains_resolve_from_the_file_and_its_inline_modules() {
    let modules = modules_of(&["ledger", "shard", "storage"]);
    let source = "
use super::dedup::Thing;
use super::super::ledger::A;
mod inner {
    use super::super::super::shard::B;
    use super::super::Sibling;
}
";
    let found = references(
        source,
        &path_of(&["storage", "state_machine"]),
        &[],
        &modules,
    );
    let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["ledger", "shard"], "{found:?}");
}

#[test]
fn references_between_submodules_resolve_under_their_parent() {
    let modules = modules_of(&["forward", "query", "headers"]);
    let source = "
use super::query::ParamError;
use super::{headers, forward};
use crate::api::headers::ACTOR_HEADER;
use crate::query::Filters;
use crate::node::Node;
fn f() { $crate::api::forward::call(); }
";
    let found = references(
        source,
        &path_of(&["api", "audit"]),
        &path_of(&["api"]),
        &modules,
    );
    let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        ["query", "headers", "forward", "headers", "forward"],
        "{found:?}"
    );
}

#[test]
fn cycles_are_found_directly_and_through_longer_loops() {
    let modules = modules_of(&["a", "b", "c", "d", "e"]);
    let edges: BTreeSet<(String, String)> =
        [("a", "b"), ("b", "a"), ("c", "d"), ("d", "e"), ("e", "c")]
            .iter()
            .map(|(from, to)| (from.to_string(), to.to_string()))
            .collect();
    assert_eq!(
        cycles(&modules, &edges),
        vec![path_of(&["a", "b"]), path_of(&["c", "d", "e"])]
    );
    let layered: BTreeSet<(String, String)> = [("a", "b"), ("b", "c"), ("a", "c")]
        .iter()
        .map(|(from, to)| (from.to_string(), to.to_string()))
        .collect();
    assert!(cycles(&modules, &layered).is_empty());
}
