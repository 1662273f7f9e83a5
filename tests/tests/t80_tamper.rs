//! Tamper evidence against real data directories: every change an attacker with write
//! access to a stopped node's store can make is detected and *named* by `trailctl verify`
//! (or `trailctl proof`), with the verifier key pinned before the tampering.
//!
//! Each test starts `traild` with small blocks (`--block-events 64`, sealed every 100 ms),
//! ingests a few hundred to a few thousand events, checks that the untampered store
//! verifies (exit 0), stops the node (SIGTERM), edits its fjall database, or swaps its
//! whole data directory, restarts it and checks that verification exits 1 with a message
//! that names what was changed:
//!
//! 1. one byte of a stored event: the block and its seq range (merkle root); the node
//!    refuses to prove that event (DATA_LOSS naming the block);
//! 2. a deleted event: the missing seq;
//! 3. two swapped events: both seqs, out of order;
//! 4. a block header edited, with its stored block hash recomputed: the next block's
//!    broken link, the block's own merkle root, or, for the last block, the signed root;
//! 5. a rollback to an older copy of the data directory: fewer blocks than a kept
//!    checkpoint (which verified before the rollback), then, regrown, not a prefix; a
//!    truncated tail of blocks: the missing blocks;
//! 6. two histories forked from one copy: each side's kept checkpoint is refused by the
//!    other;
//! 7. a kept checkpoint with an edited root, size or signature, or signed by another key;
//! 8. one tenant's proof presented as another's, and another tenant's event asked for.
//!
//! The store is opened with the node stopped through `storage::tamper` (the node's own
//! storage options do not matter for reads and point writes), edited, made durable and
//! closed before the restart. The tests run `target/<profile>/traild` and `trailctl` as built: the harness
//! builds them only when missing, so build them first after changing them
//! (`cargo build -p trail-client -p trail-node`).

use std::path::{Path, PathBuf};

use trail_proto::v1;
use trail_tests::{event, Traild};

const SHARDS: u32 = 2;
const NODE_ARGS: &[&str] = &[
    "--shards",
    "2",
    "--block-events",
    "64",
    "--seal-interval-ms",
    "100",
];
/// Events of a tenant that is never tampered with, on the same node.
const NEIGHBOUR: &str = "ten_neighbour";
const EN_DASH: char = '\u{2013}';

// ---------------------------------------------------------------------------------------
// Running trailctl
// ---------------------------------------------------------------------------------------

#[derive(Debug)]
struct Output {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_trailctl(endpoint: Option<&str>, args: &[&str]) -> Output {
    let mut command = trail_tests::trailctl();
    if let Some(endpoint) = endpoint {
        command.arg("--endpoint").arg(endpoint);
    }
    // A pinned key comes from --key only: nothing from the environment.
    command.env_remove("TRAIL_VERIFIER_KEY");
    let output = command.args(args).output().expect("run trailctl");
    Output {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn trailctl(node: &Traild, args: &[&str]) -> Output {
    run_trailctl(Some(&node.endpoint()), args)
}

fn expect_ok(output: &Output, what: &str) {
    assert_eq!(
        output.code, 0,
        "{what}: expected exit 0\nstdout: {}\nstderr: {}",
        output.stdout, output.stderr
    );
}

/// Exit 1 with a message (stderr) holding every one of `words`; returns the message.
fn expect_failure(output: &Output, what: &str, words: &[&str]) -> String {
    assert_eq!(
        output.code, 1,
        "{what}: expected exit 1 (detected)\nstdout: {}\nstderr: {}",
        output.stdout, output.stderr
    );
    let message = output.stderr.trim().to_string();
    for word in words {
        assert!(
            message.contains(word),
            "{what}: the message does not say {word:?}:\n{message}"
        );
    }
    eprintln!("[{what}] exit 1: {message}");
    message
}

/// `name+keyid`, as messages show a key.
fn short_key(key: &str) -> String {
    key.splitn(3, '+').take(2).collect::<Vec<_>>().join("+")
}

/// The node's verifier key, read once before any tampering and pinned from then on.
fn verifier_key(node: &Traild) -> String {
    let output = trailctl(node, &["status", "--json"]);
    expect_ok(&output, "status");
    let status: serde_json::Value =
        serde_json::from_str(output.stdout.trim()).expect("status --json prints JSON");
    let key = status["verifier_key"]
        .as_str()
        .expect("status has verifier_key")
        .to_string();
    assert!(key.starts_with("trail.local+"), "{key}");
    key
}

fn verify_tenant(node: &Traild, key: &str, tenant: &str) -> Output {
    trailctl(
        node,
        &["verify", "--quiet", "--tenant", tenant, "--key", key],
    )
}

fn verify_kept(node: &Traild, key: &str, kept: &Path) -> Output {
    trailctl(
        node,
        &[
            "verify",
            "--quiet",
            "--checkpoint",
            kept.to_str().unwrap(),
            "--key",
            key,
        ],
    )
}

/// `trailctl checkpoint --seal-now --out FILE`: keeps a checkpoint covering every event
/// recorded so far; returns its tree size.
fn keep_checkpoint(node: &Traild, key: &str, tenant: &str, path: &Path) -> u64 {
    let output = trailctl(
        node,
        &[
            "checkpoint",
            "--tenant",
            tenant,
            "--seal-now",
            "--out",
            path.to_str().unwrap(),
            "--key",
            key,
        ],
    );
    expect_ok(&output, "checkpoint --out");
    tree_size(&std::fs::read_to_string(path).expect("kept checkpoint"))
}

/// The node's current tree size for `tenant` (after sealing everything recorded).
fn current_tree_size(node: &Traild, key: &str, tenant: &str) -> u64 {
    let output = trailctl(
        node,
        &["checkpoint", "--tenant", tenant, "--seal-now", "--key", key],
    );
    expect_ok(&output, "checkpoint");
    tree_size(&output.stdout)
}

/// Line 2 of a checkpoint note.
fn tree_size(note: &str) -> u64 {
    note.lines()
        .nth(1)
        .and_then(|line| line.parse().ok())
        .unwrap_or_else(|| panic!("not a checkpoint note:\n{note}"))
}

// ---------------------------------------------------------------------------------------
// The node
// ---------------------------------------------------------------------------------------

/// Records `count` events `{prefix}-{i}` for `tenant`, in order, all accepted.
async fn ingest(node: &Traild, tenant: &str, prefix: &str, count: usize) {
    let mut client = node.client().await.expect("connect");
    let ids: Vec<String> = (0..count)
        .map(|index| format!("{prefix}-{index}"))
        .collect();
    for chunk in ids.chunks(400) {
        let events = chunk.iter().map(|id| event(tenant, id)).collect();
        let response = client
            .record_batch(v1::RecordBatchRequest { events })
            .await
            .expect("record_batch")
            .into_inner();
        for outcome in response.outcomes {
            assert!(
                matches!(
                    outcome.outcome,
                    Some(v1::record_outcome::Outcome::Receipt(_))
                ),
                "event not recorded: {outcome:?}"
            );
        }
    }
}

/// SIGTERM; the node exits 0 and its store can be opened.
fn stop(node: &mut Traild) {
    assert_eq!(node.terminate(), Some(0), "SIGTERM stops the node cleanly");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create directory");
    for entry in std::fs::read_dir(from).expect("read directory") {
        let entry = entry.expect("directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            // Keeps the mode (node.key must stay 0600).
            std::fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Replaces the data directory with a copy of `with`, as an attacker restoring an old
/// backup would.
fn replace_dir(data_dir: &Path, with: &Path) {
    std::fs::remove_dir_all(data_dir).expect("remove the data directory");
    copy_dir(with, data_dir);
}

/// 1234 -> "1,234", as trailctl prints counts.
fn thousands(number: usize) -> String {
    let digits = number.to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// A node on a fresh directory with `tenant`'s `events` (and a neighbour's) sealed, and
/// its verifier key; the untampered store verifies.
async fn node_with(tenant: &str, events: usize) -> (tempfile::TempDir, Traild, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = Traild::start(&dir.path().join("data"), NODE_ARGS).await;
    ingest(&node, tenant, "evt", events).await;
    ingest(&node, NEIGHBOUR, "nbr", 150).await;
    let key = verifier_key(&node);
    let output = verify_tenant(&node, &key, tenant);
    expect_ok(&output, "untampered baseline");
    assert!(
        output.stdout.contains(&format!(
            "stream {tenant}/0: verified {} events",
            thousands(events)
        )),
        "{}",
        output.stdout
    );
    expect_ok(&verify_tenant(&node, &key, NEIGHBOUR), "neighbour baseline");
    (dir, node, key)
}

// ---------------------------------------------------------------------------------------
// The store, edited with the node stopped
// ---------------------------------------------------------------------------------------

mod store {
    use std::path::Path;

    use trail_node::ledger::{block_hash, BlockHeader, BlockRecord};
    use trail_node::storage::tamper::StoppedStream;

    /// One tenant's stream in a stopped node's database: the raw edits are storage's
    /// (`storage::tamper`), the block-level ones are here.
    pub struct Store {
        stream: StoppedStream,
    }

    impl Store {
        /// Opens `<data_dir>/db` and finds the shard holding `tenant` and its stream
        /// number.
        pub fn open(data_dir: &Path, tenant: &str) -> Store {
            Store {
                stream: StoppedStream::open(data_dir, super::SHARDS, tenant),
            }
        }

        /// The stream's sealed block headers, by index.
        pub fn blocks(&self) -> Vec<BlockHeader> {
            self.stream
                .block_records()
                .iter()
                .enumerate()
                .map(|(index, value)| {
                    let record = BlockRecord::decode(value).expect("untampered record");
                    let header = BlockHeader::decode(&record.header).expect("header");
                    assert_eq!(header.block_index, index as u64);
                    header
                })
                .collect()
        }

        pub fn event(&self, seq: u64) -> Vec<u8> {
            self.stream.event(seq)
        }

        pub fn set_event(&self, seq: u64, bytes: &[u8]) {
            self.stream.set_event(seq, bytes);
        }

        pub fn remove_event(&self, seq: u64) {
            self.stream.remove_event(seq);
        }

        /// The stored record bytes of block `index` (block_hash | tree_root_after |
        /// header).
        pub fn block_record(&self, index: u64) -> Vec<u8> {
            self.stream.block_record(index)
        }

        pub fn set_block_record(&self, index: u64, bytes: &[u8]) {
            self.stream.set_block_record(index, bytes);
        }

        /// Edits block `index`'s header as a careful attacker would: the stored
        /// block_hash is recomputed, so the record passes its own checksum. Returns the
        /// original record bytes.
        pub fn rewrite_header(&self, index: u64, edit: impl FnOnce(&mut BlockHeader)) -> Vec<u8> {
            let original = self.block_record(index);
            let record = BlockRecord::decode(&original).expect("untampered record");
            let mut header = BlockHeader::decode(&record.header).expect("header");
            edit(&mut header);
            let header_bytes = header.encode();
            assert_ne!(header_bytes, record.header, "the edit changed nothing");
            let edited = BlockRecord {
                block_hash: block_hash(&header_bytes),
                tree_root_after: record.tree_root_after,
                header: header_bytes,
            };
            self.set_block_record(index, &edited.encode());
            original
        }

        /// Deletes the last `count` blocks with their events, as a truncated store
        /// would have them.
        pub fn truncate_blocks(&self, count: usize) {
            let blocks = self.blocks();
            for header in &blocks[blocks.len() - count..] {
                for seq in header.first_seq..=header.last_seq() {
                    self.remove_event(seq);
                }
                self.stream
                    .remove_block(header.block_index, header.last_seq());
            }
        }

        /// Makes the edits durable and closes the database.
        pub fn close(self) {
            self.stream.close();
        }
    }
}

use store::Store;

/// Flips one bit of a byte inside the event's user agent text: the bytes still decode,
/// only their hash changes.
fn flip_a_byte(bytes: &mut [u8]) {
    let at = bytes
        .windows(b"trail-tests".len())
        .position(|window| window == b"trail-tests")
        .expect("the harness's user agent is in the canonical bytes");
    bytes[at] ^= 0x01;
}

fn event_id_of(bytes: &[u8]) -> String {
    trail_client::event::CanonicalEvent::decode(bytes)
        .expect("canonical event")
        .event_id
}

/// A block sealed by size (64 events: a timer seal can cut a smaller one), not the last,
/// about `1 / fraction` of the way into the stream.
fn full_block(
    blocks: &[trail_node::ledger::BlockHeader],
    fraction: usize,
) -> trail_node::ledger::BlockHeader {
    let full: Vec<_> = blocks[..blocks.len() - 1]
        .iter()
        .filter(|header| header.count == 64)
        .collect();
    assert!(full.len() >= 3, "too few full blocks: {blocks:?}");
    full[full.len() / fraction].clone()
}

fn seqs(header: &trail_node::ledger::BlockHeader) -> String {
    format!(
        "block {} (seqs {}{EN_DASH}{})",
        header.block_index,
        header.first_seq,
        header.last_seq()
    )
}

// ---------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------

/// Case 1: one byte of one stored event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_byte_in_an_event_names_its_block() {
    let tenant = "ten_flip";
    let (dir, mut node, key) = node_with(tenant, 1_000).await;
    let data_dir = dir.path().join("data");

    stop(&mut node);
    let store = Store::open(&data_dir, tenant);
    let blocks = store.blocks();
    assert!(blocks.len() >= 10, "{} blocks", blocks.len());
    let target = full_block(&blocks, 2);
    let seq = target.first_seq + u64::from(target.count) / 2;
    let mut bytes = store.event(seq);
    let event_id = event_id_of(&bytes);
    flip_a_byte(&mut bytes);
    store.set_event(seq, &bytes);
    let untouched = event_id_of(&store.event(blocks[0].first_seq));
    store.close();
    node.restart().await;

    expect_failure(
        &verify_tenant(&node, &key, tenant),
        "changed byte: verify",
        &[
            &format!("stream {tenant}/0"),
            &seqs(&target),
            "merkle root",
            "does not match the header",
            "altered",
        ],
    );
    // The node refuses to prove the altered event rather than serve a bad proof ...
    expect_failure(
        &trailctl(
            &node,
            &["proof", "--tenant", tenant, &event_id, "--key", &key],
        ),
        "changed byte: proof of the altered event",
        &[
            &format!("cannot prove event \"{event_id}\" of tenant {tenant}"),
            "DATA_LOSS",
            &format!("block {} of stream {tenant}/0", target.block_index),
            "events do not hash to the block's root",
            &format!("trailctl verify --tenant {tenant}"),
        ],
    );
    // ... while events of other blocks still prove, and other tenants still verify.
    expect_ok(
        &trailctl(
            &node,
            &["proof", "--tenant", tenant, &untouched, "--key", &key],
        ),
        "proof of an event in an untouched block",
    );
    expect_ok(&verify_tenant(&node, &key, NEIGHBOUR), "neighbour");
}

/// Case 2: an event deleted, from the middle of a block, then the stream's last one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_event_is_named_by_its_seq() {
    let tenant = "ten_delete";
    let (dir, mut node, key) = node_with(tenant, 1_000).await;
    let data_dir = dir.path().join("data");

    stop(&mut node);
    let store = Store::open(&data_dir, tenant);
    let blocks = store.blocks();
    let target = full_block(&blocks, 3);
    let seq = target.first_seq + 5;
    let deleted = store.event(seq);
    store.remove_event(seq);
    store.close();
    node.restart().await;

    expect_failure(
        &verify_tenant(&node, &key, tenant),
        "deleted event: verify",
        &[&seqs(&target), &format!("seq {seq} is missing"), "deleted"],
    );

    // Put it back and delete the stream's last event instead: no later event takes its
    // place, the block holds one event fewer than its header counts.
    stop(&mut node);
    let store = Store::open(&data_dir, tenant);
    store.set_event(seq, &deleted);
    let last = store.blocks().last().cloned().expect("blocks");
    store.remove_event(last.last_seq());
    store.close();
    node.restart().await;

    expect_failure(
        &verify_tenant(&node, &key, tenant),
        "deleted last event: verify",
        &[
            &seqs(&last),
            &format!(
                "header counts {} events but {} are stored",
                last.count,
                last.count - 1
            ),
            &format!("seq {} is missing", last.last_seq()),
        ],
    );
}

/// Case 3: two events of one block swapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_events_are_named_by_their_seqs() {
    let tenant = "ten_swap";
    let (dir, mut node, key) = node_with(tenant, 1_000).await;
    let data_dir = dir.path().join("data");

    stop(&mut node);
    let store = Store::open(&data_dir, tenant);
    let blocks = store.blocks();
    let target = full_block(&blocks, 2);
    let (first, second) = (target.first_seq + 2, target.first_seq + 9);
    let (first_bytes, second_bytes) = (store.event(first), store.event(second));
    store.set_event(first, &second_bytes);
    store.set_event(second, &first_bytes);
    store.close();
    node.restart().await;

    expect_failure(
        &verify_tenant(&node, &key, tenant),
        "swapped events: verify",
        &[
            &seqs(&target),
            &format!("seq {second} is stored at position 2, where seq {first} belongs"),
            &format!("seq {first} is at position 9"),
            "out of order",
        ],
    );
}

/// Case 4: a block header edited, the stored block hash recomputed to match: the chain
/// link of the next block breaks; a fixed-up merkle root no longer matches the events;
/// the last block, which has no successor, no longer gives the signed root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edited_block_header_breaks_the_chain_or_the_signed_root() {
    let tenant = "ten_header";
    let (dir, mut node, key) = node_with(tenant, 1_000).await;
    let data_dir = dir.path().join("data");

    // sealed_at of a block in the middle.
    stop(&mut node);
    let store = Store::open(&data_dir, tenant);
    let blocks = store.blocks();
    let middle = full_block(&blocks, 2);
    let last = blocks.last().cloned().expect("blocks");
    let middle_event = event_id_of(&store.event(middle.first_seq));
    let original_middle = store.rewrite_header(middle.block_index, |header| {
        header.sealed_at_ns -= 1_000_000_000;
    });
    store.close();
    node.restart().await;

    let next = middle.block_index + 1;
    expect_failure(
        &verify_tenant(&node, &key, tenant),
        "edited sealed_at: verify",
        &[
            &format!("block {next} (seqs"),
            "prev_block_hash",
            &format!("is not the hash of block {}", middle.block_index),
            &format!("block {} was altered", middle.block_index),
        ],
    );
    expect_failure(
        &trailctl(
            &node,
            &["proof", "--tenant", tenant, &middle_event, "--key", &key],
        ),
        "edited sealed_at: proof of an event in the edited block",
        &[
            &format!("cannot prove event \"{middle_event}\""),
            "DATA_LOSS",
            // The node builds proofs from the stream tree's stored nodes and checks them
            // against the signed root before it serves one: an edited block breaks that.
            &format!(
                "stream {tenant}/0: the stream tree's stored nodes do not lead to the \
                 checkpoint's root"
            ),
        ],
    );

    // The merkle root of the same block, as if its events had been rewritten too.
    stop(&mut node);
    let store = Store::open(&data_dir, tenant);
    store.set_block_record(middle.block_index, &original_middle);
    store.rewrite_header(middle.block_index, |header| header.merkle_root[0] ^= 0x01);
    store.close();
    node.restart().await;

    expect_failure(
        &verify_tenant(&node, &key, tenant),
        "edited merkle_root: verify",
        &[&seqs(&middle), "merkle root", "does not match the header"],
    );

    // sealed_at of the last block: no link to break, the checkpoint's root catches it.
    stop(&mut node);
    let store = Store::open(&data_dir, tenant);
    store.set_block_record(middle.block_index, &original_middle);
    store.rewrite_header(last.block_index, |header| header.sealed_at_ns -= 1_000);
    store.close();
    node.restart().await;

    expect_failure(
        &verify_tenant(&node, &key, tenant),
        "edited last block: verify",
        &[
            &format!("checkpoint (tree size {})", last.block_index + 1),
            &format!(
                "stream tree root over the {} block hashes",
                last.block_index + 1
            ),
            "the signed checkpoint says",
        ],
    );
}

/// Case 5 and the kept-checkpoint flow: a checkpoint kept at a later state verifies while
/// the node grows; after the data directory is replaced by an older copy, the node's tree
/// is smaller than the kept checkpoint's (rolled back), and once regrown it is not an
/// extension of it. The rolled-back store is consistent in itself: its full audit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_fails_against_a_kept_checkpoint() {
    let tenant = "ten_rollback";
    let (dir, mut node, key) = node_with(tenant, 640).await;
    let data_dir = dir.path().join("data");
    let early = dir.path().join("early.checkpoint");
    let kept = dir.path().join("kept.checkpoint");
    let early_size = keep_checkpoint(&node, &key, tenant, &early);

    stop(&mut node);
    let old_copy = dir.path().join("old-copy");
    copy_dir(&data_dir, &old_copy);
    node.restart().await;

    ingest(&node, tenant, "later", 640).await;
    let kept_size = keep_checkpoint(&node, &key, tenant, &kept);
    assert!(kept_size > early_size, "{kept_size} > {early_size}");
    let consistent = verify_kept(&node, &key, &early);
    expect_ok(&consistent, "early checkpoint after growth");
    assert!(
        consistent.stdout.contains("consistent"),
        "{}",
        consistent.stdout
    );
    ingest(&node, tenant, "even-later", 200).await;
    expect_ok(
        &verify_kept(&node, &key, &kept),
        "kept checkpoint after growth",
    );
    expect_ok(
        &verify_tenant(&node, &key, tenant),
        "full audit after growth",
    );

    // The attacker restores the old copy.
    stop(&mut node);
    replace_dir(&data_dir, &old_copy);
    node.restart().await;

    expect_ok(
        &verify_tenant(&node, &key, tenant),
        "full audit of the rolled-back store (consistent in itself)",
    );
    expect_ok(&verify_kept(&node, &key, &early), "early checkpoint");
    expect_failure(
        &verify_kept(&node, &key, &kept),
        "rollback: verify --checkpoint",
        &[
            &format!("stream {tenant}/0"),
            &format!("has {early_size} blocks, fewer than the {kept_size} of the kept"),
            "rolled back",
        ],
    );

    // Rolled back and regrown past the kept size: not an extension of the kept tree.
    ingest(&node, tenant, "regrown", 1_200).await;
    let regrown_size = current_tree_size(&node, &key, tenant);
    assert!(regrown_size > kept_size, "{regrown_size} > {kept_size}");
    expect_failure(
        &verify_kept(&node, &key, &kept),
        "rollback and regrowth: verify --checkpoint",
        &[
            &format!("tree of {regrown_size} blocks does not extend the kept checkpoint of {kept_size} blocks"),
            "rewritten",
        ],
    );
}

/// Case 5, in place: the last blocks of a stream (records and events) deleted from the
/// store; the node's own checkpoint covers more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_tail_of_blocks_is_named() {
    let tenant = "ten_truncate";
    let (dir, mut node, key) = node_with(tenant, 1_000).await;
    let data_dir = dir.path().join("data");

    stop(&mut node);
    let store = Store::open(&data_dir, tenant);
    let blocks = store.blocks().len() as u64;
    store.truncate_blocks(3);
    store.close();
    node.restart().await;

    expect_failure(
        &verify_tenant(&node, &key, tenant),
        "truncated tail: verify",
        &[
            &format!(
                "the checkpoint covers {blocks} blocks but the node served {}",
                blocks - 3
            ),
            &format!("blocks {}{EN_DASH}{} are missing", blocks - 3, blocks - 1),
            "truncated",
        ],
    );
}

/// Case 6: two histories grown from one copy of the store (same node key); a checkpoint
/// kept from either is refused by the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forked_history_fails_against_either_kept_checkpoint() {
    let tenant = "ten_fork";
    let (dir, mut node, key) = node_with(tenant, 300).await;
    let data_dir = dir.path().join("data");
    let base = dir.path().join("base");
    let history_a = dir.path().join("history-a");
    let kept_a = dir.path().join("a.checkpoint");
    let kept_b = dir.path().join("b.checkpoint");

    stop(&mut node);
    copy_dir(&data_dir, &base);

    // History A.
    node.restart().await;
    ingest(&node, tenant, "a", 320).await;
    let size_a = keep_checkpoint(&node, &key, tenant, &kept_a);
    stop(&mut node);
    copy_dir(&data_dir, &history_a);

    // History B, from the same base, served in A's place.
    replace_dir(&data_dir, &base);
    node.restart().await;
    ingest(&node, tenant, "b", 1_280).await;
    let size_b = keep_checkpoint(&node, &key, tenant, &kept_b);
    assert!(size_b > size_a, "{size_b} > {size_a}");
    expect_ok(
        &verify_tenant(&node, &key, tenant),
        "full audit of history B (consistent in itself)",
    );
    expect_ok(&verify_kept(&node, &key, &kept_b), "B's own checkpoint");
    expect_failure(
        &verify_kept(&node, &key, &kept_a),
        "fork: A's checkpoint against history B",
        &[
            &format!(
                "tree of {size_b} blocks does not extend the kept checkpoint of {size_a} blocks"
            ),
            "forked",
        ],
    );

    // History A again, grown past B.
    stop(&mut node);
    replace_dir(&data_dir, &history_a);
    node.restart().await;
    ingest(&node, tenant, "a-more", 1_600).await;
    let size_a_now = current_tree_size(&node, &key, tenant);
    assert!(size_a_now > size_b, "{size_a_now} > {size_b}");
    expect_ok(&verify_kept(&node, &key, &kept_a), "A's own checkpoint");
    expect_failure(
        &verify_kept(&node, &key, &kept_b),
        "fork: B's checkpoint against history A",
        &[
            &format!("tree of {size_a_now} blocks does not extend the kept checkpoint of {size_b} blocks"),
            "forked",
        ],
    );
}

/// Case 7: a kept checkpoint edited (root, size, signature) is refused for its
/// signature; a checkpoint, or a node, signed by another key than the pinned one is
/// refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_checkpoint_signature_is_named() {
    let tenant = "ten_signature";
    let (dir, node, key) = node_with(tenant, 300).await;
    let kept = dir.path().join("kept.checkpoint");
    keep_checkpoint(&node, &key, tenant, &kept);
    let note = std::fs::read_to_string(&kept).unwrap();
    expect_ok(
        &verify_kept(&node, &key, &kept),
        "untampered kept checkpoint",
    );

    let edited = |name: &str, line: usize, edit: &dyn Fn(&str) -> String| -> PathBuf {
        let lines: Vec<String> = note
            .split('\n')
            .enumerate()
            .map(|(index, text)| {
                if index == line {
                    edit(text)
                } else {
                    text.to_string()
                }
            })
            .collect();
        let text = lines.join("\n");
        assert_ne!(text, note);
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let swap_char = |text: &str, at: usize| -> String {
        let mut chars: Vec<char> = text.chars().collect();
        chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect()
    };

    // Line 2 is the root (base64), line 1 the tree size, the last line the signature.
    let root = edited("root.checkpoint", 2, &|text| swap_char(text, 0));
    let size = edited("size.checkpoint", 1, &|text| {
        (text.parse::<u64>().unwrap() - 1).to_string()
    });
    let signature_line = note.trim_end().split('\n').count() - 1;
    let signature = edited("signature.checkpoint", signature_line, &|text| {
        // `— <name> <base64(key id || signature)>`: a character well inside the
        // signature, past the key id.
        let at = text.len() - 30;
        swap_char(text, text[..at].chars().count())
    });
    for (path, what) in [
        (&root, "edited root"),
        (&size, "edited tree size"),
        (&signature, "edited signature"),
    ] {
        expect_failure(
            &verify_kept(&node, &key, path),
            &format!("{what}: verify --checkpoint"),
            &["kept checkpoint", "signature does not verify under key"],
        );
    }

    // Another node's key, pinned: the node's genuine checkpoint is not signed by it.
    let other_dir = tempfile::tempdir().unwrap();
    let other = trail_node::node::key::load_or_create(other_dir.path(), "trail.local")
        .expect("another node's key");
    let other_key = other.verifier_key();
    assert_ne!(other_key, key);
    expect_failure(
        &verify_kept(&node, &other_key, &kept),
        "another node's key pinned: verify --checkpoint",
        &[
            "kept checkpoint",
            &format!("has no signature by key {}", short_key(&other_key)),
            &format!("signed by: {}", short_key(&key)),
        ],
    );
    expect_failure(
        &verify_tenant(&node, &other_key, tenant),
        "another node's key pinned: verify --tenant",
        &[&format!(
            "the node's latest checkpoint has no signature by key {}",
            short_key(&other_key)
        )],
    );

    // A checkpoint forged by another key (a larger tree, any root), presented as kept
    // under the node's pinned key.
    let mut body = trail_node::ledger::CheckpointBody::parse_note(&note).unwrap();
    body.tree_size += 10;
    body.last_seq += 640;
    body.root[0] ^= 0x01;
    let forged = dir.path().join("forged.checkpoint");
    std::fs::write(&forged, other.sign(&body)).unwrap();
    expect_failure(
        &verify_kept(&node, &key, &forged),
        "forged checkpoint: verify --checkpoint",
        &[
            "kept checkpoint",
            &format!("has no signature by key {}", short_key(&key)),
            &format!("signed by: {}", short_key(&other.verifier_key())),
        ],
    );
}

/// Case 8: a proof bundle of tenant A presented as tenant B's is refused, naming the
/// tenant; the node does not prove A's event for B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proof_of_another_tenants_event_is_refused() {
    let (tenant_a, tenant_b) = ("ten_alpha", "ten_bravo");
    let (dir, node, key) = node_with(tenant_a, 300).await;
    ingest(&node, tenant_b, "bravo", 300).await;
    let event_of_a = "evt-7";
    let bundle_path = dir.path().join("bundle.json");
    expect_ok(
        &trailctl(
            &node,
            &[
                "proof",
                "--tenant",
                tenant_a,
                event_of_a,
                "--out",
                bundle_path.to_str().unwrap(),
                "--key",
                &key,
            ],
        ),
        "proof of A's event",
    );
    let offline = |path: &Path, key: &str| {
        run_trailctl(
            None,
            &["proof", "--verify", path.to_str().unwrap(), "--key", key],
        )
    };
    expect_ok(&offline(&bundle_path, &key), "A's bundle, offline");
    let bundle: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&bundle_path).unwrap()).unwrap();
    assert_eq!(bundle["tenant_id"], tenant_a);

    let kept_b = dir.path().join("b.checkpoint");
    keep_checkpoint(&node, &key, tenant_b, &kept_b);
    let checkpoint_of_b = std::fs::read_to_string(&kept_b).unwrap();
    let stream_b = format!("{tenant_b}/0");
    let presented = |name: &str, fields: &[(&str, &str)]| -> PathBuf {
        let mut edited = bundle.clone();
        for (field, value) in fields {
            edited[*field] = serde_json::Value::String(value.to_string());
        }
        let path = dir.path().join(name);
        std::fs::write(&path, serde_json::to_string_pretty(&edited).unwrap()).unwrap();
        path
    };

    let tenant_only = presented("tenant.json", &[("tenant_id", tenant_b)]);
    expect_failure(
        &offline(&tenant_only, &key),
        "A's bundle with tenant B",
        &[
            "proof rejected",
            &format!("bundle stream \"{tenant_a}/0\" is not \"{tenant_b}/<stream index>\""),
        ],
    );
    let tenant_and_stream = presented(
        "stream.json",
        &[("tenant_id", tenant_b), ("stream", &stream_b)],
    );
    expect_failure(
        &offline(&tenant_and_stream, &key),
        "A's bundle with tenant and stream B",
        &[
            "proof rejected",
            &format!("is for stream {tenant_a}/0, not the bundle's {stream_b}"),
        ],
    );
    let with_b_checkpoint = presented(
        "checkpoint.json",
        &[
            ("tenant_id", tenant_b),
            ("stream", &stream_b),
            ("checkpoint", &checkpoint_of_b),
        ],
    );
    expect_failure(
        &offline(&with_b_checkpoint, &key),
        "A's bundle with B's tenant, stream and genuine checkpoint",
        &[
            "proof rejected",
            &format!("event belongs to tenant {tenant_a}, not {tenant_b}"),
        ],
    );

    // The node: tenant B has no event evt-7 (only A has), so nothing is proved for B.
    expect_failure(
        &trailctl(
            &node,
            &["proof", "--tenant", tenant_b, event_of_a, "--key", &key],
        ),
        "B asks the node for A's event",
        &["not found", event_of_a, tenant_b],
    );
    // And a pinned key of another node refuses A's genuine bundle.
    let other_dir = tempfile::tempdir().unwrap();
    let other_key = trail_node::node::key::load_or_create(other_dir.path(), "trail.local")
        .expect("another node's key")
        .verifier_key();
    expect_failure(
        &offline(&bundle_path, &other_key),
        "A's genuine bundle under another node's key",
        &[
            "proof rejected",
            &format!("has no signature by key {}", short_key(&other_key)),
        ],
    );
}
