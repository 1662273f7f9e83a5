//! Publication of signed checkpoints outside the store: one file per checkpoint under
//! the checkpoint directory, `{tenant}/{stream index}/{tree size, 20 digits}.checkpoint`.
//!
//! Files are created once and never rewritten (append-only by construction): a replay
//! after a crash finds the file already there with the same bytes and moves on; a file
//! with *different* bytes is a fork signal, logged as an error and counted, never
//! overwritten. Writing runs on its own thread behind a bounded queue, so the fsyncs of
//! publication never sit in the apply path; a full queue makes apply wait (the queue
//! holds 4,096 notes, ~1 MiB). The thread writes whatever is queued (up to 1,024 files)
//! and then makes the lot durable with one `syncfs`: a checkpoint round of 1,000 tenants
//! costs one journal commit, not 2,000 fsyncs competing with the Raft log's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;

const QUEUE_NOTES_MAX: usize = 4096;
const WRITE_BATCH_MAX: usize = 1024;

struct Job {
    relative: PathBuf,
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

    pub fn path_of(tenant_id: &str, stream_index: u32, tree_size: u64) -> PathBuf {
        // Tenant ids are `[A-Za-z0-9_.-]`, starting with a letter or digit: safe as a
        // path segment (no separators, never `.` or `..`).
        PathBuf::from(tenant_id)
            .join(stream_index.to_string())
            .join(format!("{tree_size:020}.checkpoint"))
    }

    pub fn publish(&self, tenant_id: &str, stream_index: u32, tree_size: u64, note: String) {
        let job = Job {
            relative: Publisher::path_of(tenant_id, stream_index, tree_size),
            note,
        };
        if self.sender.send(job).is_err() {
            tracing::error!("checkpoint publisher thread is gone; checkpoint not published");
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn run(dir: &Path, receiver: Receiver<Job>, counters: &PublishCounters) {
    while let Ok(first) = receiver.recv() {
        let mut jobs = vec![first];
        while jobs.len() < WRITE_BATCH_MAX {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut written = 0;
        for job in jobs {
            written += publish_one(dir, job, counters);
        }
        if written > 0 {
            if let Err(error) = sync_filesystem(dir) {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "syncing published checkpoints failed");
            }
        }
    }
}

/// Flushes the file system holding `dir` (data and metadata of every file written).
fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let handle = std::fs::File::open(dir)?;
    // SAFETY: `syncfs` only reads the descriptor, which `handle` keeps open.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes one checkpoint file (not yet durable); 1 when a file was created.
fn publish_one(dir: &Path, job: Job, counters: &PublishCounters) -> usize {
    let path = dir.join(&job.relative);
    match write_once(&path, job.note.as_bytes()) {
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
                path = %path.display(),
                "a published checkpoint of this size exists with different content \
                 (a fork, or a store restored from elsewhere): left untouched"
            );
            0
        }
        Err(error) => {
            counters.errors.fetch_add(1, Ordering::Relaxed);
            tracing::error!(path = %path.display(), %error, "publishing a checkpoint failed");
            0
        }
    }
}

enum Written {
    New,
    Same,
    Different,
}

/// Creates `path` with `bytes` unless it exists: write to a temporary name, then
/// hard-link into place (fails if the name is taken), so a reader never sees half a
/// file and an existing checkpoint is never replaced. The caller makes it durable.
fn write_once(path: &Path, bytes: &[u8]) -> std::io::Result<Written> {
    if let Ok(existing) = std::fs::read(path) {
        return Ok(if existing == bytes {
            Written::Same
        } else {
            Written::Different
        });
    }
    let parent = path.parent().expect("checkpoint paths have a parent");
    std::fs::create_dir_all(parent)?;
    let mut temporary = tempfile::NamedTempFile::new_in(parent)?;
    temporary.write_all(bytes)?;
    match temporary.persist_noclobber(path) {
        Ok(_) => {}
        Err(error) if error.error.kind() == std::io::ErrorKind::AlreadyExists => {
            return write_once(path, bytes);
        }
        Err(error) => return Err(error.error),
    }
    Ok(Written::New)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_written_once_and_conflicts_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(Publisher::path_of("acme", 0, 7));
        assert!(path.ends_with("acme/0/00000000000000000007.checkpoint"));
        assert!(matches!(write_once(&path, b"a\n").unwrap(), Written::New));
        assert!(matches!(write_once(&path, b"a\n").unwrap(), Written::Same));
        assert!(matches!(
            write_once(&path, b"b\n").unwrap(),
            Written::Different
        ));
        assert_eq!(std::fs::read(&path).unwrap(), b"a\n");
    }
}
