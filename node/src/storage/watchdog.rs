//! Rotates fjall's memtables on time, so that fjall's workers never deadlock.
//!
//! fjall 3.1.13 has a worker-pool deadlock under sustained writes (upstream:
//! fjall-rs/fjall PR #323, "a worker that `send(Flush)`s on the same bounded channel it
//! reads deadlocks when write load fills that channel with `RotateMemtable`"). Once a
//! keyspace's memtable is over its size, every write to it `try_send`s a
//! `RotateMemtable` to the workers' channel (1,000 messages); a worker that rotates then
//! sends the flush with a *blocking* send on that same channel. When the channel is
//! full at that moment, every worker ends up blocked in that send and nothing reads the
//! channel again: no flush, no compaction, no journal rotation, for good. Measured here
//! (gdb on a live node, 10 M-event run): both workers parked in
//! `inner_rotate_memtable -> flume::send` about 5 minutes into the run; memtables then
//! grew to 6.4 GB, the journal to 4.7 GB, RSS to 7.5 GB, and a restart replays it all.
//!
//! So the node rotates memtables itself and fjall never asks: fjall's own memtable
//! bound is set out of reach (`storage::FJALL_MEMTABLE_BYTES_OUT_OF_REACH`), and this
//! thread looks at every registered keyspace's active memtable every [`CHECK_INTERVAL`]
//! and rotates the ones at their bound. (A first version rotated at 3/4 of fjall's
//! bound; when its own send waited on a full channel, fjall's requests started and the
//! workers deadlocked again 5 minutes into the 10 M run.)
//! `Keyspace::rotate_memtable` rotates on the calling thread; its blocking send of the
//! flush message comes from outside the pool, so it waits for a worker to take a message
//! and never deadlocks. It also bounds the journals: fjall's own bound is set out of
//! reach (its enforcement is another source of `RotateMemtable` messages), and when the
//! journals are over [`Bounds::journal_bytes`] every non-empty memtable is rotated, so
//! the oldest journal can be deleted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use fjall::{AbstractTree, Database, Keyspace};

const CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// While no memtable changed between checks, the interval doubles up to this: an idle
/// node with 200 shards (1,400 keyspaces) spent ~2% of a core checking every 50 ms.
const IDLE_CHECK_INTERVAL_MAX: Duration = Duration::from_millis(400);
/// Rotations for the journals' sake are at least this far apart: the flushes they
/// start take a while to let the oldest journal go, and rotating every memtable at
/// every check made tables so small and many (30 level-0 runs) that fjall halted
/// writes (measured: the indexer stalled for minutes).
const JOURNAL_ROTATION_INTERVAL: Duration = Duration::from_secs(10);

/// The keyspaces the watchdog rotates, with their memtable bounds; shards register
/// theirs when they open. The thread ends (and lets go of the database) as soon as the
/// last clone is dropped.
#[derive(Clone)]
pub struct Watchdog {
    keyspaces: Arc<Mutex<Vec<(Keyspace, u64)>>>,
    _stop: Arc<std::sync::mpsc::Sender<()>>,
}

/// Bounds the watchdog keeps.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub journal_bytes: u64,
}

impl Watchdog {
    pub fn start(db: &Database, bounds: Bounds) -> Watchdog {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let watchdog = Watchdog {
            keyspaces: Arc::default(),
            _stop: Arc::new(stop),
        };
        let keyspaces = Arc::downgrade(&watchdog.keyspaces);
        let db = db.clone();
        let mut journal_rotated_at: Option<std::time::Instant> = None;
        let mut interval = CHECK_INTERVAL;
        let mut last_total: u64 = 0;
        std::thread::Builder::new()
            .name("fjall-watchdog".into())
            .spawn(move || loop {
                if stopped.recv_timeout(interval) != Err(std::sync::mpsc::RecvTimeoutError::Timeout)
                {
                    return;
                }
                let Some(keyspaces) = keyspaces.upgrade() else {
                    return;
                };
                // Checked under the lock (only `watch` takes it, when a shard opens):
                // cloning 1,400 keyspace handles 20 times a second was most of the
                // thread's cost on an idle node with 200 shards.
                let keyspaces = keyspaces.lock().expect("watchdog lock");
                let journals_over = db.journal_disk_space().unwrap_or(0) > bounds.journal_bytes
                    && journal_rotated_at
                        .is_none_or(|at| at.elapsed() >= JOURNAL_ROTATION_INTERVAL);
                if journals_over {
                    journal_rotated_at = Some(std::time::Instant::now());
                }
                let mut total: u64 = 0;
                for (keyspace, memtable_bytes_max) in keyspaces.iter() {
                    let size = keyspace.tree.active_memtable().size();
                    total = total.wrapping_add(size);
                    let full = size >= *memtable_bytes_max;
                    if full || (journals_over && size > 0) {
                        if let Err(error) = keyspace.rotate_memtable() {
                            tracing::error!(%error, "rotating a memtable failed");
                        }
                    }
                }
                interval = if total == last_total && !journals_over {
                    (interval * 2).min(IDLE_CHECK_INTERVAL_MAX)
                } else {
                    CHECK_INTERVAL
                };
                last_total = total;
            })
            .expect("spawn the fjall watchdog");
        watchdog
    }

    /// Rotates `keyspace`'s memtable from now on before it holds `memtable_bytes_max`.
    pub fn watch(&self, keyspace: Keyspace, memtable_bytes_max: u64) {
        self.keyspaces
            .lock()
            .expect("watchdog lock")
            .push((keyspace, memtable_bytes_max));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjall::KeyspaceCreateOptions;

    /// A memtable fjall would not rotate by itself (its own bound is far away) is
    /// rotated and flushed once it is near the bound it is watched with.
    #[test]
    fn memtables_over_the_bound_are_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path()).open().unwrap();
        let keyspace = db
            .keyspace("big", || {
                KeyspaceCreateOptions::default().max_memtable_size(256 << 20)
            })
            .unwrap();
        let watchdog = Watchdog::start(
            &db,
            Bounds {
                journal_bytes: u64::MAX,
            },
        );
        watchdog.watch(keyspace.clone(), 1 << 20);
        for index in 0u32..4_000 {
            keyspace.insert(index.to_be_bytes(), [7u8; 1_000]).unwrap();
        }
        assert!(
            db.write_buffer_size() > 2 << 20,
            "the writes are in the memtable"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db.write_buffer_size() > 1 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "memtables still hold {} bytes",
                db.write_buffer_size()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            keyspace.table_count() >= 1,
            "the memtable was flushed to a table"
        );
    }
}
