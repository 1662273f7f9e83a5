//! Publication of signed checkpoints outside the store: per stream, one append-only
//! file per UTC day under the checkpoint directory,
//! `{tenant}/{stream index}/{YYYY-MM-DD}.jsonl`, one line per checkpoint:
//! `{"tree_size":N,"note":"<the signed note>"}`.
//!
//! (Not one file per checkpoint, which costs a 4 KiB block and an inode for a
//! ~300-byte note: with a checkpoint every 10 s, 35 MB a day per active tenant, a
//! tenth of the data directory's bytes per event at 10 M events, and ~10% of a node's
//! CPU in inode allocation under ingest.)
//!
//! Lines are only ever appended; a file is never rewritten. A stream's checkpoints are
//! appended in tree-size order: a checkpoint at or below the last one published (a replay
//! after a restart) is looked up in the stream's newest file and not written again; if
//! the file holds that size with a *different* note, that is a fork signal, logged as an
//! error and counted. Writing runs on its own thread behind a bounded queue, so the
//! fsyncs of publication never sit in the apply path; a full queue makes apply wait
//! (the queue holds 4,096 notes, ~1 MiB). The thread appends whatever is queued (up to
//! 1,024 notes) and then makes the lot durable: an `fdatasync` of each file appended
//! to, and an `fsync` of each directory that got a new entry. (Not one `syncfs`: it
//! does it in one call, but it also writes back every dirty page of the file system,
//! the store's table and index files included, and the journal's fsyncs, which every
//! ingest ack waits for, queue behind those writes.)
//!
//! Durability: a line that cannot be written (an open, a read of the newest file, or a
//! write failing: a full disk, a permission) is retried with a backoff from 10 ms up
//! to 5 s; after [`PUBLISH_RETRY_FOR`] of failures the node stops (exit 74, as on a
//! journal fsync error), so no line is ever skipped while the node goes on. While it
//! retries the queue fills and apply waits for it. A failed `fdatasync`/`fsync` stops
//! the node at once: after a failed fsync the kernel may have dropped the dirty pages,
//! and a retry can report success for lines that are gone. What the files lack is
//! written again from the store: at every open, and after every snapshot install,
//! the shard asks for a [`Publisher::publish_missing`] walk, which appends every
//! checkpoint of the shard's streams above the last one each stream's files hold (so
//! a replica that installed a snapshot publishes the checkpoints it carries, and a
//! restart after a lost write fills the gap), in tree-size order, before any
//! checkpoint applied after it. A torn last line (a crash or a failed write
//! mid-append) is closed with a newline before the next line is appended.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{chain_key, chain_key_number, ShardKeyspaces, CHAIN_CHECKPOINT};

const QUEUE_NOTES_MAX: usize = 4096;
const WRITE_BATCH_MAX: usize = 1024;
/// The first wait before a failed line is written again; it doubles up to
/// [`RETRY_BACKOFF_MAX`].
const RETRY_BACKOFF_MIN: Duration = Duration::from_millis(10);
const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a line is retried before the node stops: long enough for an operator to
/// free disk space, short enough that a node that cannot publish does not stall its
/// ingest for good without saying so.
pub const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(120);

/// One checkpoint to publish.
struct Note {
    stream_dir: PathBuf,
    tree_size: u64,
    note: String,
}

enum Job {
    Note(Note),
    /// Every checkpoint of the shard's streams that their files lack.
    Missing(ShardKeyspaces),
}

/// Counters of the publisher, for /metrics and tests.
#[derive(Debug, Default)]
pub struct PublishCounters {
    pub published: AtomicU64,
    pub already_present: AtomicU64,
    pub conflicts: AtomicU64,
    /// Failed attempts (each retried, or the node stopped).
    pub errors: AtomicU64,
}

#[derive(Clone)]
pub struct Publisher {
    sender: SyncSender<Job>,
    pub counters: Arc<PublishCounters>,
    pub dir: Arc<PathBuf>,
}

impl Publisher {
    /// Starts the publishing thread; it ends when every `Publisher` clone is dropped.
    pub fn start(dir: &Path) -> std::io::Result<Publisher> {
        std::fs::create_dir_all(dir)?;
        let (sender, receiver) = mpsc::sync_channel(QUEUE_NOTES_MAX);
        let counters = Arc::new(PublishCounters::default());
        let thread_counters = counters.clone();
        let thread_dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("trail-publish".into())
            .spawn(move || run(&thread_dir, receiver, &thread_counters))?;
        Ok(Publisher {
            sender,
            counters,
            dir: Arc::new(dir.to_path_buf()),
        })
    }

    /// A stream's directory of day files, relative to the checkpoint directory.
    pub fn stream_dir(tenant_id: &str, stream_index: u32) -> PathBuf {
        // Tenant ids are `[A-Za-z0-9_.-]`, starting with a letter or digit: safe as a
        // path segment (no separators, never `.` or `..`). Apply refuses any other
        // (`ledger::recheck`); should one come all the same, it is encoded, never
        // joined as it is: `%XX` per other byte (no tenant id holds `%`, so an encoded
        // name is no valid id's), a digest when that is too long for a file name.
        let safe = (1..=64).contains(&tenant_id.len())
            && !tenant_id.starts_with('.')
            && tenant_id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'));
        if safe {
            return PathBuf::from(tenant_id).join(stream_index.to_string());
        }
        let mut encoded = String::from("%");
        for byte in tenant_id.bytes() {
            if byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'-') {
                encoded.push(char::from(byte));
            } else {
                encoded.push_str(&format!("%{byte:02X}"));
            }
        }
        if encoded.len() > 200 {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(tenant_id.as_bytes());
            encoded = digest
                .iter()
                .fold(String::from("%sha256-"), |mut name, byte| {
                    name.push_str(&format!("{byte:02x}"));
                    name
                });
        }
        PathBuf::from(encoded).join(stream_index.to_string())
    }

    pub fn publish(&self, tenant_id: &str, stream_index: u32, tree_size: u64, note: String) {
        self.send(Job::Note(Note {
            stream_dir: Publisher::stream_dir(tenant_id, stream_index),
            tree_size,
            note,
        }));
    }

    /// Publishes every checkpoint of the shard's streams above the last one each
    /// stream's files hold, before any note published after this call (a shard's open,
    /// a snapshot install). Idempotent; the walk runs on the publishing thread.
    pub fn publish_missing(&self, keyspaces: ShardKeyspaces) {
        self.send(Job::Missing(keyspaces));
    }

    fn send(&self, job: Job) {
        if self.sender.send(job).is_err() {
            // The thread ends only by stopping the process: a checkpoint not published
            // must not go unnoticed while the node goes on.
            tracing::error!("checkpoint publisher thread is gone; stopping the node");
            std::process::exit(74);
        }
    }
}

/// One line of a day file.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Line {
    tree_size: u64,
    note: String,
}

fn run(dir: &Path, receiver: Receiver<Job>, counters: &PublishCounters) {
    let mut publishing = Publishing {
        dir,
        streams: Streams::default(),
        files: Disk,
        counters,
        sleep: &std::thread::sleep,
    };
    while let Ok(first) = receiver.recv() {
        let mut jobs = vec![first];
        while jobs.len() < WRITE_BATCH_MAX {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        if let Err(error) = publishing.batch(&day, jobs) {
            tracing::error!(
                %error,
                dir = %dir.display(),
                "checkpoints could not be published durably; stopping the node"
            );
            // EX_IOERR, as on a journal fsync error (`syncer.rs`).
            std::process::exit(74);
        }
    }
}

/// The file system calls publication makes, behind a trait so that tests can make
/// them fail.
trait Files {
    /// Appends `line` to the file at `path` (created if need be) in one write, after a
    /// newline if the file ends in a torn line.
    fn append(&mut self, path: &Path, line: &[u8]) -> std::io::Result<()>;
    fn sync_file(&mut self, path: &Path) -> std::io::Result<()>;
    fn sync_dir(&mut self, path: &Path) -> std::io::Result<()>;
}

/// The real file system.
struct Disk;

impl Files for Disk {
    fn append(&mut self, path: &Path, line: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        let length = file.metadata()?.len();
        let mut last = [b'\n'];
        if length > 0 {
            file.read_exact_at(&mut last, length - 1)?;
        }
        // One write of the whole line: O_APPEND puts it at the end in one piece.
        if last[0] == b'\n' {
            file.write_all(line)
        } else {
            let mut closed = Vec::with_capacity(line.len() + 1);
            closed.push(b'\n');
            closed.extend_from_slice(line);
            file.write_all(&closed)
        }
    }

    fn sync_file(&mut self, path: &Path) -> std::io::Result<()> {
        std::fs::File::open(path)?.sync_data()
    }

    fn sync_dir(&mut self, path: &Path) -> std::io::Result<()> {
        std::fs::File::open(path)?.sync_all()
    }
}

/// The publishing thread's state.
struct Publishing<'a, F: Files> {
    dir: &'a Path,
    streams: Streams,
    files: F,
    counters: &'a PublishCounters,
    sleep: &'a dyn Fn(Duration),
}

impl<F: Files> Publishing<'_, F> {
    /// Publishes `jobs` and makes them durable; an error is fatal: a line that failed
    /// for [`PUBLISH_RETRY_FOR`], or a failed sync.
    fn batch(&mut self, day: &str, jobs: Vec<Job>) -> std::io::Result<()> {
        let mut unsynced = Unsynced::default();
        for job in jobs {
            match job {
                Job::Note(note) => self.publish_retrying(day, &note, &mut unsynced)?,
                Job::Missing(keyspaces) => self.publish_missing(day, &keyspaces, &mut unsynced)?,
            }
        }
        unsynced.sync(&mut self.files)
    }

    /// Writes one line (not yet durable), retrying with a growing wait.
    fn publish_retrying(
        &mut self,
        day: &str,
        note: &Note,
        unsynced: &mut Unsynced,
    ) -> std::io::Result<()> {
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut waited = Duration::ZERO;
        loop {
            match publish_one(
                self.dir,
                day,
                &mut self.streams,
                note,
                unsynced,
                &mut self.files,
            ) {
                Ok(written) => {
                    self.count(note, written);
                    return Ok(());
                }
                Err(error) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    if waited >= PUBLISH_RETRY_FOR {
                        return Err(error);
                    }
                    tracing::warn!(
                        stream = %note.stream_dir.display(),
                        tree_size = note.tree_size,
                        %error,
                        retry_in_ms = backoff.as_millis() as u64,
                        "publishing a checkpoint failed; retrying"
                    );
                    (self.sleep)(backoff);
                    waited += backoff;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
    }

    fn count(&self, note: &Note, written: Written) {
        match written {
            Written::New => {
                self.counters.published.fetch_add(1, Ordering::Relaxed);
            }
            Written::Same => {
                self.counters
                    .already_present
                    .fetch_add(1, Ordering::Relaxed);
            }
            Written::Different => {
                self.counters.conflicts.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    stream = %note.stream_dir.display(),
                    tree_size = note.tree_size,
                    "a published checkpoint of this size exists with different content \
                     (a fork, or a store restored from elsewhere): left untouched"
                );
            }
        }
    }

    /// Publishes, per stream of the shard, the recorded checkpoints above the last one
    /// its files hold, in tree-size order; syncs every [`WRITE_BATCH_MAX`] lines. Cost:
    /// per stream one look at its newest file (remembered after) and one range read;
    /// then one line per missing checkpoint.
    fn publish_missing(
        &mut self,
        day: &str,
        keyspaces: &ShardKeyspaces,
        unsynced: &mut Unsynced,
    ) -> std::io::Result<()> {
        let mut walked_streams = 0u64;
        let mut published = 0u64;
        for guard in keyspaces.tenants.iter() {
            let (key, value) = match guard.into_inner() {
                Ok(entry) => entry,
                Err(error) => {
                    // Read again at the next open; nothing is lost meanwhile.
                    tracing::error!(shard = keyspaces.shard, %error, "reading tenants to publish their checkpoints failed");
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
            };
            let Some(state) = crate::ledger::TenantState::decode(&value) else {
                continue;
            };
            let Ok(tenant_id) = std::str::from_utf8(&key) else {
                continue;
            };
            walked_streams += 1;
            let stream_dir = Publisher::stream_dir(tenant_id, 0);
            let last = self.last_retrying(&stream_dir)?;
            let range = chain_key(CHAIN_CHECKPOINT, state.stream_no, last.saturating_add(1))
                ..=chain_key(CHAIN_CHECKPOINT, state.stream_no, u64::MAX);
            for guard in keyspaces.chain.range(range) {
                let (key, value) = match guard.into_inner() {
                    Ok(entry) => entry,
                    Err(error) => {
                        tracing::error!(shard = keyspaces.shard, %error, "reading checkpoints to publish failed");
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        return Ok(());
                    }
                };
                let Some(tree_size) = chain_key_number(&key) else {
                    continue;
                };
                let note = Note {
                    stream_dir: stream_dir.clone(),
                    tree_size,
                    note: String::from_utf8_lossy(&value).into_owned(),
                };
                self.publish_retrying(day, &note, unsynced)?;
                published += 1;
                if unsynced.lines >= WRITE_BATCH_MAX {
                    std::mem::take(unsynced).sync(&mut self.files)?;
                }
            }
        }
        // Nothing to say at an ordinary start: only a directory that lacked lines (an
        // install, a crash between apply and publication) is news.
        if published > 0 {
            tracing::info!(
                shard = keyspaces.shard,
                streams = walked_streams,
                checkpoints = published,
                "published the checkpoints the checkpoint directory lacked"
            );
        }
        Ok(())
    }

    /// The last tree size a stream's files hold, retrying a failed read.
    fn last_retrying(&mut self, stream_dir: &Path) -> std::io::Result<u64> {
        let mut backoff = RETRY_BACKOFF_MIN;
        let mut waited = Duration::ZERO;
        loop {
            match self.streams.last(self.dir, stream_dir) {
                Ok(last) => return Ok(last),
                Err(error) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    if waited >= PUBLISH_RETRY_FOR {
                        return Err(error);
                    }
                    (self.sleep)(backoff);
                    waited += backoff;
                    backoff = (backoff * 2).min(RETRY_BACKOFF_MAX);
                }
            }
        }
    }
}

/// What a batch of appends left to make durable: paths, not open files, so that a batch
/// of up to 1,024 streams does not hold as many descriptors.
#[derive(Default)]
struct Unsynced {
    files: std::collections::BTreeSet<PathBuf>,
    dirs: std::collections::BTreeSet<PathBuf>,
    /// Lines appended.
    lines: usize,
}

impl Unsynced {
    fn sync(self, files: &mut impl Files) -> std::io::Result<()> {
        for file in &self.files {
            files.sync_file(file)?;
        }
        // Deepest first, so that each directory's new entry is durable before its
        // parent's entry for it.
        for dir in self.dirs.iter().rev() {
            files.sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Per stream, the last tree size published, learned from the stream's newest file
/// the first time the stream publishes after a start. At most `STREAMS_KNOWN_MAX`
/// streams are remembered; past that the memory starts over (and each stream reads
/// its newest file's last line again).
#[derive(Default)]
struct Streams {
    last: HashMap<PathBuf, u64>,
}

const STREAMS_KNOWN_MAX: usize = 100_000;

impl Streams {
    fn last(&mut self, dir: &Path, stream_dir: &Path) -> std::io::Result<u64> {
        if let Some(&last) = self.last.get(stream_dir) {
            return Ok(last);
        }
        let last = match newest_file(&dir.join(stream_dir))? {
            None => 0,
            Some(path) => read_lines(&path)?.last().map_or(0, |line| line.tree_size),
        };
        if self.last.len() >= STREAMS_KNOWN_MAX {
            self.last.clear();
        }
        self.last.insert(stream_dir.to_path_buf(), last);
        Ok(last)
    }
}

/// The stream's day file that sorts last, if any.
fn newest_file(stream_dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let entries = match std::fs::read_dir(stream_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut newest: Option<PathBuf> = None;
    for entry in entries {
        let path = entry?.path();
        if path
            .extension()
            .is_some_and(|extension| extension == "jsonl")
            && newest.as_ref().is_none_or(|newest| path > *newest)
        {
            newest = Some(path);
        }
    }
    Ok(newest)
}

/// The lines of a day file; a torn last line (a crash mid-append) is skipped.
fn read_lines(path: &Path) -> std::io::Result<Vec<Line>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<Line>(line).ok())
        .collect())
}

/// Appends one checkpoint, not yet durable (what to sync is added to `unsynced`).
fn publish_one(
    dir: &Path,
    day: &str,
    streams: &mut Streams,
    job: &Note,
    unsynced: &mut Unsynced,
    files: &mut impl Files,
) -> std::io::Result<Written> {
    let last = streams.last(dir, &job.stream_dir)?;
    if job.tree_size <= last {
        // A replay: the newest file holds it, with the same note or not.
        let Some(path) = newest_file(&dir.join(&job.stream_dir))? else {
            return Ok(Written::Same);
        };
        let found = read_lines(&path)?
            .into_iter()
            .find(|line| line.tree_size == job.tree_size);
        return Ok(match found {
            Some(line) if line.note != job.note => Written::Different,
            _ => Written::Same,
        });
    }
    let stream_dir = dir.join(&job.stream_dir);
    if !stream_dir.is_dir() {
        // New entries in the stream's parent (the tenant's directory, itself new
        // perhaps) and in the checkpoint directory.
        std::fs::create_dir_all(&stream_dir)?;
        let mut parent = stream_dir.parent();
        while let Some(entry_holder) = parent.filter(|holder| holder.starts_with(dir)) {
            unsynced.dirs.insert(entry_holder.to_path_buf());
            parent = entry_holder.parent();
        }
    }
    let path = stream_dir.join(format!("{day}.jsonl"));
    if !unsynced.files.contains(&path) && !path.exists() {
        unsynced.dirs.insert(stream_dir.clone());
    }
    unsynced.files.insert(path.clone());
    let mut line = serde_json::to_vec(&Line {
        tree_size: job.tree_size,
        note: job.note.clone(),
    })?;
    line.push(b'\n');
    files.append(&path, &line)?;
    unsynced.lines += 1;
    streams.last.insert(job.stream_dir.clone(), job.tree_size);
    Ok(Written::New)
}

enum Written {
    New,
    Same,
    Different,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn job(tree_size: u64, note: &str) -> Note {
        Note {
            stream_dir: Publisher::stream_dir("acme", 0),
            tree_size,
            note: note.into(),
        }
    }

    fn written(result: std::io::Result<Written>) -> usize {
        match result.expect("written") {
            Written::New => 1,
            Written::Same | Written::Different => 0,
        }
    }

    /// The directories that got a new entry are synced, deepest first; an existing
    /// file of an existing stream needs no directory sync.
    #[test]
    fn new_entries_sync_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        let mut streams = Streams::default();
        let mut unsynced = Unsynced::default();
        publish_one(
            dir.path(),
            "2026-11-24",
            &mut streams,
            &job(1, "a\n"),
            &mut unsynced,
            &mut Disk,
        )
        .unwrap();
        let expected: Vec<PathBuf> = vec![
            dir.path().to_path_buf(),
            dir.path().join("acme"),
            dir.path().join("acme/0"),
        ];
        assert_eq!(unsynced.dirs.iter().cloned().collect::<Vec<_>>(), expected);
        unsynced.sync(&mut Disk).unwrap();
        let mut again = Unsynced::default();
        publish_one(
            dir.path(),
            "2026-11-24",
            &mut streams,
            &job(2, "b\n"),
            &mut again,
            &mut Disk,
        )
        .unwrap();
        assert!(again.dirs.is_empty());
        assert_eq!(again.files.len(), 1);
        let mut next_day = Unsynced::default();
        publish_one(
            dir.path(),
            "2026-11-25",
            &mut streams,
            &job(3, "c\n"),
            &mut next_day,
            &mut Disk,
        )
        .unwrap();
        assert_eq!(
            next_day.dirs.iter().cloned().collect::<Vec<_>>(),
            vec![dir.path().join("acme/0")]
        );
    }

    #[test]
    fn lines_are_appended_once_and_conflicts_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let counters = PublishCounters::default();
        let mut publishing = Publishing {
            dir: dir.path(),
            streams: Streams::default(),
            files: Disk,
            counters: &counters,
            sleep: &|_| {},
        };
        let publish = |publishing: &mut Publishing<'_, Disk>, day: &str, tree_size, note: &str| {
            let mut unsynced = Unsynced::default();
            let count = written(publish_one(
                dir.path(),
                day,
                &mut publishing.streams,
                &job(tree_size, note),
                &mut unsynced,
                &mut Disk,
            ));
            assert_eq!(unsynced.files.len(), count, "each line written is synced");
            unsynced.sync(&mut Disk).unwrap();
            publishing
                .batch(day, vec![Job::Note(job(tree_size, note))])
                .unwrap();
            count
        };
        assert_eq!(publish(&mut publishing, "2026-11-24", 7, "a\n\n- sig\n"), 1);
        assert_eq!(publish(&mut publishing, "2026-11-24", 9, "b\n"), 1);
        // A replay of either is not written again, whatever the memory holds.
        assert_eq!(publish(&mut publishing, "2026-11-24", 7, "a\n\n- sig\n"), 0);
        publishing.streams = Streams::default();
        assert_eq!(publish(&mut publishing, "2026-11-24", 9, "b\n"), 0);
        // Another note for a published size is a conflict, and changes nothing.
        assert_eq!(publish(&mut publishing, "2026-11-24", 9, "forged\n"), 0);
        // A new day starts a new file; the stream carries on from its last size.
        assert_eq!(publish(&mut publishing, "2026-11-25", 12, "c\n"), 1);
        let stream_dir = dir.path().join("acme/0");
        let first = read_lines(&stream_dir.join("2026-11-24.jsonl")).unwrap();
        assert_eq!(
            first,
            vec![
                Line {
                    tree_size: 7,
                    note: "a\n\n- sig\n".into()
                },
                Line {
                    tree_size: 9,
                    note: "b\n".into()
                },
            ]
        );
        let second = read_lines(&stream_dir.join("2026-11-25.jsonl")).unwrap();
        assert_eq!(second.len(), 1);
        // Each line went through `batch` once more as a replay.
        assert_eq!(counters.published.load(Ordering::Relaxed), 0);
        assert_eq!(counters.already_present.load(Ordering::Relaxed), 5);
        assert_eq!(counters.conflicts.load(Ordering::Relaxed), 1);
        // A torn last line (a crash mid-append) is skipped, the rest still read.
        let path = stream_dir.join("2026-11-25.jsonl");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"tree_size\":13,\"no")
            .unwrap();
        assert_eq!(read_lines(&path).unwrap().len(), 1);
        // The next line is not glued to it.
        publishing
            .batch("2026-11-25", vec![Job::Note(job(14, "d\n"))])
            .unwrap();
        let lines = read_lines(&path).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].tree_size, 14);
    }

    /// The real file system, with the first `failing_appends` appends failing (the
    /// first of them after writing half its line, as a full disk does) and syncs
    /// failing while `failing_syncs`.
    struct FlakyFiles {
        failing_appends: usize,
        failing_syncs: bool,
    }

    impl Files for FlakyFiles {
        fn append(&mut self, path: &Path, line: &[u8]) -> std::io::Result<()> {
            if self.failing_appends > 0 {
                self.failing_appends -= 1;
                if path.exists() {
                    Disk.append(path, &line[..line.len() / 2])?;
                }
                return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
            }
            Disk.append(path, line)
        }

        fn sync_file(&mut self, path: &Path) -> std::io::Result<()> {
            if self.failing_syncs {
                return Err(std::io::Error::from_raw_os_error(5)); // EIO
            }
            Disk.sync_file(path)
        }

        fn sync_dir(&mut self, path: &Path) -> std::io::Result<()> {
            Disk.sync_dir(path)
        }
    }

    /// A write that fails (a full disk) is retried with a doubling wait until it is
    /// written: no line is lost, none is written twice, and a half-written line does
    /// not spoil the next.
    #[test]
    fn a_failed_write_is_retried_until_it_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let counters = PublishCounters::default();
        let waits = RefCell::new(Vec::new());
        let sleep = |wait: Duration| waits.borrow_mut().push(wait);
        let mut publishing = Publishing {
            dir: dir.path(),
            streams: Streams::default(),
            files: FlakyFiles {
                failing_appends: 0,
                failing_syncs: false,
            },
            counters: &counters,
            sleep: &sleep,
        };
        publishing
            .batch("2026-11-24", vec![Job::Note(job(1, "a\n"))])
            .unwrap();
        publishing.files.failing_appends = 4;
        let jobs = (2..=5).map(|size| Job::Note(job(size, "n\n"))).collect();
        publishing.batch("2026-11-24", jobs).unwrap();
        let lines = read_lines(&dir.path().join("acme/0/2026-11-24.jsonl")).unwrap();
        let sizes: Vec<u64> = lines.iter().map(|line| line.tree_size).collect();
        assert_eq!(sizes, vec![1, 2, 3, 4, 5]);
        assert_eq!(counters.errors.load(Ordering::Relaxed), 4);
        assert_eq!(counters.published.load(Ordering::Relaxed), 5);
        assert_eq!(
            *waits.borrow(),
            vec![
                Duration::from_millis(10),
                Duration::from_millis(20),
                Duration::from_millis(40),
                Duration::from_millis(80)
            ]
        );
    }

    /// A write that keeps failing is given up after `PUBLISH_RETRY_FOR` of waits, with
    /// an error (the node stops on it); so is a failed sync, at once.
    #[test]
    fn a_write_failing_for_too_long_and_a_failed_sync_are_fatal() {
        let dir = tempfile::tempdir().unwrap();
        let counters = PublishCounters::default();
        let waits = RefCell::new(Vec::new());
        let sleep = |wait: Duration| waits.borrow_mut().push(wait);
        let mut publishing = Publishing {
            dir: dir.path(),
            streams: Streams::default(),
            files: FlakyFiles {
                failing_appends: usize::MAX,
                failing_syncs: false,
            },
            counters: &counters,
            sleep: &sleep,
        };
        let error = publishing
            .batch("2026-11-24", vec![Job::Note(job(1, "a\n"))])
            .expect_err("never written");
        assert_eq!(error.raw_os_error(), Some(28));
        let waited: Duration = waits.borrow().iter().sum();
        assert!(waited >= PUBLISH_RETRY_FOR, "{waited:?}");
        assert!(waits.borrow().iter().all(|wait| *wait <= RETRY_BACKOFF_MAX));

        publishing.files = FlakyFiles {
            failing_appends: 0,
            failing_syncs: true,
        };
        let error = publishing
            .batch("2026-11-24", vec![Job::Note(job(2, "b\n"))])
            .expect_err("a failed sync");
        assert_eq!(error.raw_os_error(), Some(5));
    }
}
