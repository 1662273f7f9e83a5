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
//! and rotates the ones at their bound. (Leaving fjall's bound in place and rotating
//! earlier, at 3/4 of it, is not enough: when the thread's own send waits on a full
//! channel, fjall's requests start and the workers deadlock, measured 5 minutes into
//! a 10 M-event run.)
//! `Keyspace::rotate_memtable` rotates on the calling thread; its blocking send of the
//! flush message comes from outside the pool, so it waits for a worker to take a message
//! and never deadlocks. It also bounds the journals: fjall's own bound is set out of
//! reach (its enforcement is another source of `RotateMemtable` messages), and while the
//! journals are over [`Bounds::journal_bytes`] it rotates the memtables that hold data
//! and were rotated longest ago (they hold the oldest journal's writes), a few per
//! check, so that the oldest journal can be deleted. (Rotating every non-empty memtable
//! at once, ~9 per shard, would start as many flushes together, and each flush fsyncs
//! the journal under the lock every write takes: measured with `trailctl bench ingest
//! --latency-log`, every ingest request in flight stalls for 60-160 ms at each such
//! round; see [`to_rotate`].)
//!
//! It also lets fjall delete the tables compactions replaced. fjall deletes them only
//! when it collects old versions of a tree, which it does when a memtable rotates; the
//! compactions that run after ingest stops leave their inputs on disk until then (a
//! 10 M-event data directory held 4.1 GB of tables where 2.9 GB were live). So when no
//! memtable rotated for [`GC_INTERVAL`] and the trees' sizes changed meanwhile, the
//! thread writes one marker key to a keyspace of its own and rotates that memtable.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fjall::{AbstractTree, Database, Keyspace, KeyspaceCreateOptions};

const CHECK_INTERVAL: Duration = Duration::from_millis(50);
/// While no memtable changed between checks, the interval doubles up to this: an idle
/// node with 200 shards (1,400 keyspaces) spent ~2% of a core checking every 50 ms.
const IDLE_CHECK_INTERVAL_MAX: Duration = Duration::from_millis(400);
/// Rotations for the journals' sake: at most this many per check...
const JOURNAL_ROTATIONS_PER_CHECK: usize = 2;
/// ...of memtables rotated at least this long ago. The flushes take a while to let the
/// oldest journal go, and rotating every memtable at every check made tables so small
/// and many (30 level-0 runs) that fjall halted writes (measured: the indexer stalled
/// for minutes); a memtable rotated this recently holds only writes newer than the
/// oldest journal (256 MiB of journals take ~8 s of ingest at 30 MB/s).
const JOURNAL_ROTATION_AGE_MIN: Duration = Duration::from_secs(2);
/// Without a rotation this long, a change in the trees' sizes (a compaction) makes
/// the thread rotate its own keyspace so that fjall collects replaced tables.
pub const GC_INTERVAL: Duration = Duration::from_secs(30);
/// The watchdog's own keyspace: one key, rewritten to have a memtable to rotate.
const GC_KEYSPACE: &str = "watchdog_gc";

/// The keyspaces the watchdog rotates, with their memtable bounds; shards register
/// theirs when they open. The thread ends (and lets go of the database) as soon as the
/// last clone is dropped.
#[derive(Clone)]
pub struct Watchdog {
    keyspaces: Arc<Mutex<Vec<Watched>>>,
    _stop: Arc<std::sync::mpsc::Sender<()>>,
}

struct Watched {
    keyspace: Keyspace,
    memtable_bytes_max: u64,
    rotated_at: Instant,
}

/// A watched memtable as the watchdog sees it at a check.
#[derive(Debug, Clone, Copy)]
struct Memtable {
    bytes: u64,
    bytes_max: u64,
    since_rotation: Duration,
}

/// The memtables to rotate at a check (indexes into `memtables`): every one at its
/// bound, and while the journals are over theirs, up to [`JOURNAL_ROTATIONS_PER_CHECK`]
/// more of those that hold data and were rotated at least [`JOURNAL_ROTATION_AGE_MIN`]
/// ago, longest ago first: the writes of the oldest journal are in those.
fn to_rotate(memtables: &[Memtable], journals_over: bool) -> Vec<usize> {
    let mut chosen: Vec<usize> = (0..memtables.len())
        .filter(|&index| memtables[index].bytes >= memtables[index].bytes_max)
        .collect();
    if journals_over {
        let mut stale: Vec<usize> = (0..memtables.len())
            .filter(|&index| {
                let memtable = &memtables[index];
                memtable.bytes > 0
                    && memtable.bytes < memtable.bytes_max
                    && memtable.since_rotation >= JOURNAL_ROTATION_AGE_MIN
            })
            .collect();
        stale.sort_by_key(|&index| std::cmp::Reverse(memtables[index].since_rotation));
        chosen.extend(stale.into_iter().take(JOURNAL_ROTATIONS_PER_CHECK));
    }
    chosen
}

/// Bounds the watchdog keeps.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub journal_bytes: u64,
    /// See [`GC_INTERVAL`].
    pub gc_interval: Duration,
}

impl Watchdog {
    pub(super) fn start(db: &Database, bounds: Bounds) -> Watchdog {
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let watchdog = Watchdog {
            keyspaces: Arc::default(),
            _stop: Arc::new(stop),
        };
        let keyspaces = Arc::downgrade(&watchdog.keyspaces);
        let db = db.clone();
        let gc_keyspace = db.keyspace(GC_KEYSPACE, KeyspaceCreateOptions::default);
        let mut rotated_at = Instant::now();
        let mut gc_checked_at = Instant::now();
        let mut sizes_seen: u64 = 0;
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
                let mut keyspaces = keyspaces.lock().expect("watchdog lock");
                let journals_over = db.journal_disk_space().unwrap_or(0) > bounds.journal_bytes;
                let now = Instant::now();
                let memtables: Vec<Memtable> = keyspaces
                    .iter()
                    .map(|watched| Memtable {
                        bytes: watched.keyspace.tree.active_memtable().size(),
                        bytes_max: watched.memtable_bytes_max,
                        since_rotation: now.saturating_duration_since(watched.rotated_at),
                    })
                    .collect();
                let total = memtables
                    .iter()
                    .map(|memtable| memtable.bytes)
                    .fold(0u64, u64::wrapping_add);
                for index in to_rotate(&memtables, journals_over) {
                    let watched = &mut keyspaces[index];
                    rotated_at = Instant::now();
                    watched.rotated_at = rotated_at;
                    if let Err(error) = watched.keyspace.rotate_memtable() {
                        tracing::error!(%error, "rotating a memtable failed");
                    }
                }
                if rotated_at.elapsed() >= bounds.gc_interval
                    && gc_checked_at.elapsed() >= bounds.gc_interval
                {
                    gc_checked_at = Instant::now();
                    let sizes = keyspaces
                        .iter()
                        .map(|watched| watched.keyspace.disk_space())
                        .fold(0u64, u64::wrapping_add);
                    if sizes != sizes_seen {
                        sizes_seen = sizes;
                        rotated_at = Instant::now();
                        if let Ok(gc_keyspace) = &gc_keyspace {
                            let rotated = gc_keyspace
                                .insert("gc", sizes.to_be_bytes())
                                .and_then(|()| gc_keyspace.rotate_memtable());
                            if let Err(error) = rotated {
                                tracing::warn!(%error, "collecting replaced tables failed");
                            }
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
    pub(super) fn watch(&self, keyspace: Keyspace, memtable_bytes_max: u64) {
        self.keyspaces.lock().expect("watchdog lock").push(Watched {
            keyspace,
            memtable_bytes_max,
            rotated_at: Instant::now(),
        });
    }

    /// Stops watching `keyspace` (one being deleted: fjall removes its directory once
    /// the last handle is dropped, and this one would be the last).
    pub(super) fn unwatch(&self, keyspace: &Keyspace) {
        self.keyspaces
            .lock()
            .expect("watchdog lock")
            .retain(|watched| watched.keyspace.name() != keyspace.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memtable(bytes: u64, since_rotation_s: u64) -> Memtable {
        Memtable {
            bytes,
            bytes_max: 100,
            since_rotation: Duration::from_secs(since_rotation_s),
        }
    }

    #[test]
    fn full_memtables_rotate_and_the_journals_take_the_stalest_few() {
        let memtables = [
            memtable(100, 0), // full: always
            memtable(10, 30), // the stalest
            memtable(0, 60),  // empty: nothing to flush
            memtable(10, 5),
            memtable(10, 20),
            memtable(10, 1), // rotated too recently
        ];
        assert_eq!(to_rotate(&memtables, false), vec![0]);
        let mut chosen = to_rotate(&memtables, true);
        assert_eq!(chosen.len(), 1 + JOURNAL_ROTATIONS_PER_CHECK);
        assert_eq!(&chosen[..3], &[0, 1, 4], "full, then stalest first");
        chosen.sort_unstable();
        assert!(!chosen.contains(&2) && !chosen.contains(&5));
        // Once the stalest are rotated, the next check takes the next ones.
        let after = [
            memtable(0, 0),
            memtable(0, 0),
            memtable(0, 60),
            memtable(10, 5),
            memtable(0, 0),
            memtable(10, 2),
        ];
        assert_eq!(to_rotate(&after, true), vec![3, 5]);
    }

    /// A database with one keyspace fjall would not rotate by itself, and a watchdog
    /// keeping the journals under `journal_bytes`.
    fn watched_setup(dir: &std::path::Path, journal_bytes: u64) -> (Database, Keyspace, Watchdog) {
        let db = Database::builder(dir).open().unwrap();
        let keyspace = db
            .keyspace("big", || {
                KeyspaceCreateOptions::default().max_memtable_size(256 << 20)
            })
            .unwrap();
        let watchdog = Watchdog::start(
            &db,
            Bounds {
                journal_bytes,
                gc_interval: GC_INTERVAL,
            },
        );
        (db, keyspace, watchdog)
    }

    /// A memtable fjall would not rotate by itself (its own bound is far away) is
    /// rotated and flushed once it is near the bound it is watched with.
    #[test]
    fn memtables_over_the_bound_are_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let (db, keyspace, watchdog) = watched_setup(dir.path(), u64::MAX);
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

    /// While the journals are over their bound, a memtable far below its own bound is
    /// rotated once it is old enough: it holds writes of the oldest journal.
    #[test]
    fn slow_memtables_are_rotated_for_the_journals() {
        let dir = tempfile::tempdir().unwrap();
        let (_db, slow, watchdog) = watched_setup(dir.path(), 0);
        watchdog.watch(slow.clone(), 64 << 20);
        slow.insert("key", [7u8; 100]).unwrap();
        let started = Instant::now();
        while slow.table_count() == 0 {
            assert!(
                started.elapsed() < JOURNAL_ROTATION_AGE_MIN + Duration::from_secs(10),
                "the slow memtable was never rotated"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            started.elapsed() >= JOURNAL_ROTATION_AGE_MIN - Duration::from_millis(100),
            "rotated before it was old enough"
        );
    }

    fn tables_bytes(dir: &std::path::Path) -> u64 {
        let mut total = 0;
        for entry in walk(dir) {
            if entry.components().any(|part| part.as_os_str() == "tables") {
                total += std::fs::metadata(&entry).map_or(0, |meta| meta.len());
            }
        }
        total
    }

    fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
        files
    }

    /// Tables a compaction replaced are deleted although no memtable rotates after it
    /// (fjall collects them only at a rotation).
    #[test]
    fn tables_replaced_by_a_compaction_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::builder(dir.path()).open().unwrap();
        let keyspace = db.keyspace("bulk", KeyspaceCreateOptions::default).unwrap();
        // Several tables, then one compaction of them all, with no rotation after.
        for round in 0..4u64 {
            for index in 0..2_000u64 {
                keyspace
                    .insert((round * 10_000 + index).to_be_bytes(), [round as u8; 500])
                    .unwrap();
            }
            keyspace.rotate_memtable_and_wait().unwrap();
        }
        keyspace.major_compact().unwrap();
        let live = keyspace.disk_space();
        assert!(
            tables_bytes(dir.path()) > live + live / 2,
            "before: the replaced tables are still on disk ({} bytes, {live} live)",
            tables_bytes(dir.path())
        );
        let watchdog = Watchdog::start(
            &db,
            Bounds {
                journal_bytes: u64::MAX,
                gc_interval: Duration::from_millis(100),
            },
        );
        watchdog.watch(keyspace.clone(), 64 << 20);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while tables_bytes(dir.path()) > live + live / 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "replaced tables still on disk: {} bytes, {live} live",
                tables_bytes(dir.path())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
