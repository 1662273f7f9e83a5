//! Publication of signed checkpoints outside the store: per stream, one append-only
//! file per UTC day under the checkpoint directory,
//! `{tenant}/{stream index}/{YYYY-MM-DD}.jsonl`, one line per checkpoint:
//! `{"tree_size":N,"note":"<the signed note>"}`.
//!
//! (One file per checkpoint, as before, cost a 4 KiB block and an inode for a ~300-byte
//! note: with a checkpoint every 10 s, 35 MB a day per active tenant, a tenth of the
//! data directory's bytes per event at 10 M events, and ~10% of a node's CPU in inode
//! allocation under ingest.)
//!
//! Lines are only ever appended; a file is never rewritten. A stream's checkpoints are
//! appended in tree-size order: a checkpoint at or below the last one published (a replay
//! after a restart) is looked up in the stream's newest file and not written again; if
//! the file holds that size with a *different* note, that is a fork signal, logged as an
//! error and counted. Writing runs on its own thread behind a bounded queue, so the
//! fsyncs of publication never sit in the apply path; a full queue makes apply wait
//! (the queue holds 4,096 notes, ~1 MiB). The thread appends whatever is queued (up to
//! 1,024 notes) and then makes the lot durable: an `fdatasync` of each file appended
//! to, and an `fsync` of each directory that got a new entry. (One `syncfs` did it in
//! one call, but it also wrote back every dirty page of the file system, the store's
//! table and index files included, and the journal's fsyncs, which every ingest ack
//! waits for, queued behind those writes.)

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

const QUEUE_NOTES_MAX: usize = 4096;
const WRITE_BATCH_MAX: usize = 1024;

struct Job {
    stream_dir: PathBuf,
    tree_size: u64,
    note: String,
}

/// Counters of the publisher, for /metrics and tests.
#[derive(Debug, Default)]
pub struct PublishCounters {
    pub published: AtomicU64,
    pub already_present: AtomicU64,
    pub conflicts: AtomicU64,
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
        let job = Job {
            stream_dir: Publisher::stream_dir(tenant_id, stream_index),
            tree_size,
            note,
        };
        if self.sender.send(job).is_err() {
            tracing::error!("checkpoint publisher thread is gone; checkpoint not published");
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
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
    let mut streams = Streams::default();
    while let Ok(first) = receiver.recv() {
        let mut jobs = vec![first];
        while jobs.len() < WRITE_BATCH_MAX {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
        let mut unsynced = Unsynced::default();
        for job in jobs {
            publish_one(dir, &day, &mut streams, job, &mut unsynced, counters);
        }
        if let Err(error) = unsynced.sync() {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(%error, "syncing published checkpoints failed");
        }
    }
}

/// What a batch of appends left to make durable: paths, not open files, so that a batch
/// of up to 1,024 streams does not hold as many descriptors.
#[derive(Default)]
struct Unsynced {
    files: std::collections::BTreeSet<PathBuf>,
    dirs: std::collections::BTreeSet<PathBuf>,
}

impl Unsynced {
    fn sync(self) -> std::io::Result<()> {
        for file in &self.files {
            std::fs::File::open(file)?.sync_data()?;
        }
        // Deepest first, so that each directory's new entry is durable before its
        // parent's entry for it.
        for dir in self.dirs.iter().rev() {
            std::fs::File::open(dir)?.sync_all()?;
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

/// Appends one checkpoint, not yet durable (what to sync is added to `unsynced`); 1
/// when a line was written.
fn publish_one(
    dir: &Path,
    day: &str,
    streams: &mut Streams,
    job: Job,
    unsynced: &mut Unsynced,
    counters: &PublishCounters,
) -> usize {
    let result = (|| -> std::io::Result<Written> {
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
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        unsynced.files.insert(path);
        let mut line = serde_json::to_vec(&Line {
            tree_size: job.tree_size,
            note: job.note.clone(),
        })?;
        line.push(b'\n');
        // One write of the whole line: O_APPEND puts it at the end in one piece.
        file.write_all(&line)?;
        streams.last.insert(job.stream_dir.clone(), job.tree_size);
        Ok(Written::New)
    })();
    match result {
        Ok(Written::New) => {
            counters.published.fetch_add(1, Ordering::Relaxed);
            1
        }
        Ok(Written::Same) => {
            counters.already_present.fetch_add(1, Ordering::Relaxed);
            0
        }
        Ok(Written::Different) => {
            counters.conflicts.fetch_add(1, Ordering::Relaxed);
            tracing::error!(
                stream = %job.stream_dir.display(),
                tree_size = job.tree_size,
                "a published checkpoint of this size exists with different content \
                 (a fork, or a store restored from elsewhere): left untouched"
            );
            0
        }
        Err(error) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(stream = %job.stream_dir.display(), %error, "publishing a checkpoint failed");
            0
        }
    }
}

enum Written {
    New,
    Same,
    Different,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(tree_size: u64, note: &str) -> Job {
        Job {
            stream_dir: Publisher::stream_dir("acme", 0),
            tree_size,
            note: note.into(),
        }
    }

    /// The directories that got a new entry are synced, deepest first; an existing
    /// file of an existing stream needs no directory sync.
    #[test]
    fn new_entries_sync_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        let counters = PublishCounters::default();
        let mut streams = Streams::default();
        let mut unsynced = Unsynced::default();
        publish_one(
            dir.path(),
            "2026-11-24",
            &mut streams,
            job(1, "a\n"),
            &mut unsynced,
            &counters,
        );
        let expected: Vec<PathBuf> = vec![
            dir.path().to_path_buf(),
            dir.path().join("acme"),
            dir.path().join("acme/0"),
        ];
        assert_eq!(unsynced.dirs.iter().cloned().collect::<Vec<_>>(), expected);
        unsynced.sync().unwrap();
        let mut again = Unsynced::default();
        publish_one(
            dir.path(),
            "2026-11-24",
            &mut streams,
            job(2, "b\n"),
            &mut again,
            &counters,
        );
        assert!(again.dirs.is_empty());
        assert_eq!(again.files.len(), 1);
        let mut next_day = Unsynced::default();
        publish_one(
            dir.path(),
            "2026-11-25",
            &mut streams,
            job(3, "c\n"),
            &mut next_day,
            &counters,
        );
        assert_eq!(
            next_day.dirs.iter().cloned().collect::<Vec<_>>(),
            vec![dir.path().join("acme/0")]
        );
    }

    #[test]
    fn lines_are_appended_once_and_conflicts_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let counters = PublishCounters::default();
        let mut streams = Streams::default();
        let publish = |day: &str, streams: &mut Streams, tree_size, note: &str| {
            let mut unsynced = Unsynced::default();
            let written = publish_one(
                dir.path(),
                day,
                streams,
                job(tree_size, note),
                &mut unsynced,
                &counters,
            );
            assert_eq!(unsynced.files.len(), written, "each line written is synced");
            unsynced.sync().unwrap();
            written
        };
        assert_eq!(publish("2026-11-24", &mut streams, 7, "a\n\n- sig\n"), 1);
        assert_eq!(publish("2026-11-24", &mut streams, 9, "b\n"), 1);
        // A replay of either is not written again, whatever the memory holds.
        assert_eq!(publish("2026-11-24", &mut streams, 7, "a\n\n- sig\n"), 0);
        let mut restarted = Streams::default();
        assert_eq!(publish("2026-11-24", &mut restarted, 9, "b\n"), 0);
        // Another note for a published size is a conflict, and changes nothing.
        assert_eq!(publish("2026-11-24", &mut restarted, 9, "forged\n"), 0);
        // A new day starts a new file; the stream carries on from its last size.
        assert_eq!(publish("2026-11-25", &mut restarted, 12, "c\n"), 1);
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
        assert_eq!(counters.published.load(Ordering::Relaxed), 3);
        assert_eq!(counters.already_present.load(Ordering::Relaxed), 2);
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
    }
}
