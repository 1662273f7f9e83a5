//! Group commit of the journal: one fsync for every Raft append that arrived while the
//! previous fsync ran, across all shards of the node (they share one journal).
//!
//! An fsync costs ~0.1–1 ms here and far more on cloud disks; at 150k events/s in
//! batches of ~1,000 that is ~150 appends/s, so coalescing keeps the disk well below
//! its fsync rate even with many shards.
//!
//! An fsync error stops the node: after a failed fsync the kernel may have dropped the
//! dirty pages, and retrying can report success for data that is gone.

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
    pub fn start(db: Database) -> Syncer {
        let (sender, receiver) = mpsc::sync_channel::<SyncDone>(SYNC_QUEUE_MAX);
        std::thread::Builder::new()
            .name("trail-fsync".into())
            .spawn(move || run(db, receiver))
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
}

fn run(db: Database, receiver: mpsc::Receiver<SyncDone>) {
    let mut waiting: Vec<SyncDone> = Vec::with_capacity(64);
    while let Ok(first) = receiver.recv() {
        waiting.push(first);
        while let Ok(next) = receiver.try_recv() {
            waiting.push(next);
        }
        if let Err(error) = db.persist(PersistMode::SyncData) {
            tracing::error!(%error, "fsync of the journal failed; stopping the node");
            // EX_IOERR. No destructors: fjall's drop would try to persist again.
            std::process::exit(74);
        }
        for done in waiting.drain(..) {
            done();
        }
    }
}
