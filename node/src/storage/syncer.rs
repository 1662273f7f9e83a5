//! Group commit of the journal: one fsync for every Raft append that arrived while the
//! previous fsync ran, across all shards of the node (they share one journal).
//!
//! An fsync costs ~0.1–1 ms here and far more on cloud disks; at 150k events/s in
//! batches of ~1,000 that is ~150 appends/s, so coalescing keeps the disk well below
//! its fsync rate even with many shards.
//!
//! The fsync runs outside fjall's journal lock. `Database::persist(SyncData)` holds the
//! lock that every write (Raft appends, applied batches) takes for the whole fsync, and
//! while the disk is busy with a flush or a compaction an fsync took 10–70 ms
//! (measured): every write waited as long, applied batches too, which need no fsync.
//! So the thread only moves fjall's buffered writes into the page cache under the lock
//! (`PersistMode::Buffer`) and then `fdatasync`s the newest journal file through its
//! own descriptor. That covers everything written before the call: the writes are in
//! the file that was newest then, and a journal is fsynced in full (`SyncAll`, under
//! the lock) before fjall creates the next one, so if a newer file exists by the time
//! of the fsync, the older one is already on disk. Journals are fjall's `{id}.jnl`
//! files in the database's folder (fjall 3.1); if none is found the thread falls back
//! to fjall's own fsync.
//!
//! An fsync error stops the node: after a failed fsync the kernel may have dropped the
//! dirty pages, and retrying can report success for data that is gone.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use fjall::{Database, PersistMode};

/// Appends waiting for an fsync. A full queue makes `append` wait: backpressure on Raft.
const SYNC_QUEUE_MAX: usize = 4_096;

type SyncDone = Box<dyn FnOnce() + Send>;

#[derive(Clone)]
pub struct Syncer {
    sender: mpsc::SyncSender<SyncDone>,
}

impl Syncer {
    /// Starts the fsync thread for `db`, whose files are in `db_dir`.
    pub(super) fn start(db: Database, db_dir: &Path) -> Syncer {
        let (sender, receiver) = mpsc::sync_channel::<SyncDone>(SYNC_QUEUE_MAX);
        let journals = Journals::new(db_dir);
        std::thread::Builder::new()
            .name("trail-fsync".into())
            .spawn(move || run(db, journals, receiver))
            .expect("spawn the fsync thread");
        Syncer { sender }
    }

    /// Runs `done` after everything written to the journal before this call is on disk.
    pub fn after_sync(&self, done: impl FnOnce() + Send + 'static) {
        if self.sender.send(Box::new(done)).is_err() {
            // The thread only ends by stopping the process; nothing to report to.
            tracing::error!("fsync thread is gone");
            std::process::exit(74);
        }
    }

    /// Blocks until everything written to the journal before this call is on disk;
    /// `false` if the fsync thread ended first (nothing is known to be durable).
    /// Unlike `Database::persist`, it never holds fjall's journal lock through an
    /// fsync, so no write of any shard waits for it (see the module doc).
    #[must_use]
    pub fn wait(&self) -> bool {
        let (synced, done) = mpsc::sync_channel::<()>(1);
        self.after_sync(move || {
            let _ = synced.send(());
        });
        done.recv().is_ok()
    }
}

fn run(db: Database, mut journals: Journals, receiver: mpsc::Receiver<SyncDone>) {
    let mut waiting: Vec<SyncDone> = Vec::with_capacity(64);
    while let Ok(first) = receiver.recv() {
        waiting.push(first);
        while let Ok(next) = receiver.try_recv() {
            waiting.push(next);
        }
        if let Err(error) = sync(&db, &mut journals) {
            tracing::error!(%error, "fsync of the journal failed; stopping the node");
            // EX_IOERR. No destructors: fjall's drop would try to persist again.
            std::process::exit(74);
        }
        for done in waiting.drain(..) {
            done();
        }
    }
}

/// Makes everything written to the journal so far durable.
fn sync(db: &Database, journals: &mut Journals) -> anyhow::Result<()> {
    db.persist(PersistMode::Buffer)?;
    match journals.newest() {
        Some(file) => file.sync_data()?,
        None => db.persist(PersistMode::SyncData)?,
    }
    Ok(())
}

/// The newest of fjall's journal files, open for fsyncs.
struct Journals {
    dir: PathBuf,
    newest: Option<(u64, File)>,
    warned: bool,
}

impl Journals {
    fn new(dir: &Path) -> Journals {
        Journals {
            dir: dir.to_path_buf(),
            newest: None,
            warned: false,
        }
    }

    fn path(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id}.jnl"))
    }

    /// The newest journal file: the one known, or a newer one if fjall rotated since
    /// (one `stat` per call), or the largest id in the folder the first time.
    fn newest(&mut self) -> Option<&File> {
        let known = match &self.newest {
            Some((id, _)) => Some(*id),
            None => self.largest_id(),
        };
        let mut id = known?;
        while self.path(id + 1).exists() {
            id += 1;
        }
        if self.newest.as_ref().is_none_or(|(open, _)| *open != id) {
            match File::open(self.path(id)) {
                Ok(file) => self.newest = Some((id, file)),
                Err(error) => {
                    self.newest = None;
                    if !std::mem::replace(&mut self.warned, true) {
                        tracing::warn!(%error, "cannot open the newest journal; fsyncs take fjall's lock");
                    }
                    return None;
                }
            }
        }
        self.newest.as_ref().map(|(_, file)| file)
    }

    fn largest_id(&mut self) -> Option<u64> {
        let largest = std::fs::read_dir(&self.dir)
            .ok()?
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name();
                name.to_str()?.strip_suffix(".jnl")?.parse::<u64>().ok()
            })
            .max();
        if largest.is_none() && !std::mem::replace(&mut self.warned, true) {
            tracing::warn!(dir = %self.dir.display(), "no journal file found; fsyncs take fjall's lock");
        }
        largest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The syncer follows fjall's journal files as they rotate.
    #[test]
    fn the_newest_journal_is_found_and_followed() {
        let dir = tempfile::tempdir().unwrap();
        let db = fjall::Database::builder(dir.path())
            .manual_journal_persist(true)
            .open()
            .unwrap();
        let mut journals = Journals::new(dir.path());
        assert!(journals.newest().is_some());
        let first = journals.newest.as_ref().unwrap().0;
        // A newer journal appears (as fjall's rotation makes one): the next fsync uses it.
        File::create(dir.path().join(format!("{}.jnl", first + 1))).unwrap();
        assert!(journals.newest().is_some());
        assert_eq!(journals.newest.as_ref().unwrap().0, first + 1);
        sync(&db, &mut journals).unwrap();
    }

    /// Without journal files (another layout), the fsync falls back to fjall's own.
    #[test]
    fn without_a_journal_file_the_fsync_is_fjalls() {
        let dir = tempfile::tempdir().unwrap();
        let db = fjall::Database::builder(dir.path().join("db"))
            .open()
            .unwrap();
        let mut journals = Journals::new(&dir.path().join("elsewhere"));
        assert!(journals.newest().is_none());
        sync(&db, &mut journals).unwrap();
    }
}
