//! Nothing outside `node/src/storage/` names the storage engine, its database or a key
//! layout (docs/ARCHITECTURE.md, "Layers"): the rest of the node reads and writes
//! through storage's typed methods, so the engine and the layouts can change (or be
//! simulated) behind them.
//!
//! `no_module_outside_storage_names_the_engine_or_a_key_layout`, in steps:
//! 1. list the key-encoding functions of `storage/`: every `fn` defined there whose name
//!    ends in `_key` or holds `_key_` (`event_key`, `chain_key`, `tindex_key_decode`, ..);
//! 2. read every other source file of `node/src` and every file of `node/tests`,
//!    comments and string and char literals dropped (`support/source_scan.rs`), test
//!    code included;
//! 3. fail listing each line that names `fjall`, calls or imports one of those
//!    functions, or reads a field `db` of anything but `self` (`store.db`: the node's
//!    database is a private field of `NodeStore`; a type of its own may hold a `db`,
//!    as the indexer holds its `StoreDb`).
//!
//! The other test checks the scan itself on small sources.

use std::collections::BTreeSet;
use std::path::Path;

#[path = "support/source_scan.rs"]
mod source_scan;

use source_scan::{rust_files, tokens, Token};

/// The identifier that names the storage engine's crate.
const ENGINE: &str = "fjall";

/// Whether a function name is one of storage's key encodings (by their naming rule).
fn is_key_encoding(name: &str) -> bool {
    name.ends_with("_key") || name.contains("_key_")
}

/// The key-encoding functions a source defines.
fn key_encodings(source: &str) -> BTreeSet<String> {
    let tokens = tokens(source);
    let mut found = BTreeSet::new();
    for pair in tokens.windows(2) {
        if let [(Token::Ident(keyword), _), (Token::Ident(name), _)] = pair {
            if keyword == "fn" && is_key_encoding(name) {
                found.insert(name.clone());
            }
        }
    }
    found
}

/// The field through which the node's database would be reached (`NodeStore::db`,
/// private to storage).
const DATABASE_FIELD: &str = "db";

/// The lines of a source that name the engine, call or import one of `encodings`
/// (the name followed by `(`, after `::` or in a `use`: a local variable of the same
/// name is no use of the function), or read a `db` field of another value than
/// `self`, with the name.
fn violations(source: &str, encodings: &BTreeSet<String>) -> Vec<(usize, String)> {
    let tokens = tokens(source);
    let mut found = Vec::new();
    let mut in_use = false;
    for (k, (token, line)) in tokens.iter().enumerate() {
        let name = match token {
            Token::Ident(name) => name,
            Token::Punct(';') => {
                in_use = false;
                continue;
            }
            _ => continue,
        };
        if name == "use" {
            in_use = true;
        }
        let called = tokens.get(k + 1).map(|(next, _)| next) == Some(&Token::Punct('('));
        let in_path = k > 0 && tokens[k - 1].0 == Token::PathSep;
        let is_field = k > 0 && tokens[k - 1].0 == Token::Punct('.');
        let of_self = k > 1 && tokens[k - 2].0 == Token::Ident("self".to_string());
        let database_field = name == DATABASE_FIELD && is_field && !of_self;
        if name == ENGINE
            || database_field
            || (encodings.contains(name) && (called || in_path || in_use))
        {
            found.push((*line, name.clone()));
        }
    }
    found
}

#[test]
fn no_module_outside_storage_names_the_engine_or_a_key_layout() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let storage = src.join("storage");
    let mut storage_files = Vec::new();
    rust_files(&storage, &mut storage_files);
    let mut encodings = BTreeSet::new();
    for file in &storage_files {
        let source = std::fs::read_to_string(file).expect("readable source");
        encodings.extend(key_encodings(&source));
    }
    assert!(
        encodings.contains("event_key") && encodings.contains("chain_key"),
        "key encodings found under {}: {encodings:?}",
        storage.display()
    );
    let node = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    rust_files(&node.join("tests"), &mut files);
    let mut report = String::new();
    for file in files.iter().filter(|file| !file.starts_with(&storage)) {
        let source = std::fs::read_to_string(file).expect("readable source");
        for (line, name) in violations(&source, &encodings) {
            let shown = file.strip_prefix(node).unwrap().display();
            report.push_str(&format!("  {shown}:{line}: {name}\n"));
        }
    }
    assert!(
        report.is_empty(),
        "code outside node/src/storage/ names the storage engine, its database or a key \
         encoding; read and write through storage's typed methods (add one there if \
         needed):\n{report}"
    );
}

#[test]
fn names_in_code_count_and_those_in_comments_and_strings_do_not() {
    let storage = "
/// A key: see `fjall`.
fn event_key(stream_no: u32, seq: u64) -> [u8; 12] { todo!() }
pub(super) fn tindex_key_decode(key: &[u8]) {}
fn keyed(x: u8) {}
";
    let encodings = key_encodings(storage);
    let names: Vec<&str> = encodings.iter().map(String::as_str).collect();
    assert_eq!(names, ["event_key", "tindex_key_decode"]);

    let outside = r#"
//! Reads over fjall, through `event_key`.
use fjall::Slice;
const TEXT: &str = "fjall::Keyspace event_key(1, 2)";
fn f() { let key = crate::storage::event_key(1, 2); sort_by_key(key); }
use crate::storage::{event_key, tindex_key_decode};
fn g() { let event_key = (1, 2); pending.get(&event_key); tindex_key_decode(&k); }
fn h() { StateMachine::open(store.db.clone()); self.db.batch(); let db = 1; db; }
"#;
    assert_eq!(
        violations(outside, &encodings),
        vec![
            (3, "fjall".to_string()),
            (5, "event_key".to_string()),
            (6, "event_key".to_string()),
            (6, "tindex_key_decode".to_string()),
            (7, "tindex_key_decode".to_string()),
            (8, "db".to_string()),
        ]
    );
}
