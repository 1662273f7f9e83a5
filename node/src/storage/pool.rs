//! The storage pool: the threads that run apply, snapshot installs and vote fsyncs.
//!
//! Not tokio's blocking pool: request-serving reads share that one, and a few hundred
//! reads parked there (a `ListBlocks` stream whose client does not read holds a thread
//! each) fill it, so every shard's apply would queue behind them and acks would stop
//! node-wide. Apply gets threads of its own here, so no read can delay it, however many
//! there are.
//!
//! Bounds: [`STORAGE_THREADS`] threads. openraft applies one batch of a shard at a time
//! and saves one vote at a time, so the queue holds at most about two jobs per shard;
//! [`QUEUE_MAX`] is far above that (a node hosts tens of shards), and a full queue
//! makes the submitting task wait (asleep, not blocking its runtime), never drops a job.

use std::panic::AssertUnwindSafe;
use std::sync::{mpsc, Arc, Mutex, OnceLock};

/// Threads of the pool. Apply is short CPU and fjall work (~1 ms per batch of hundreds
/// of events) and a snapshot install can hold a thread for seconds: four keep the
/// other shards applying during an install, on a machine of two cores or more.
pub const STORAGE_THREADS: usize = 4;
/// Jobs waiting for a thread, all shards.
const QUEUE_MAX: usize = 1_024;

type Job = Box<dyn FnOnce() + Send>;

fn queue() -> &'static mpsc::SyncSender<Job> {
    static QUEUE: OnceLock<mpsc::SyncSender<Job>> = OnceLock::new();
    QUEUE.get_or_init(|| {
        let (sender, receiver) = mpsc::sync_channel::<Job>(QUEUE_MAX);
        let receiver = Arc::new(Mutex::new(receiver));
        for number in 0..STORAGE_THREADS {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("trail-storage-{number}"))
                .spawn(move || loop {
                    let job = match receiver.lock().expect("storage pool queue").recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job();
                })
                .expect("spawn a storage pool thread");
        }
        sender
    })
}

/// Runs `work` on the storage pool and waits for it without blocking the runtime. A
/// panic in `work` resumes in the caller, as `spawn_blocking(...).await.unwrap()` did.
pub async fn run<F, R>(work: F) -> R
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = sender.send(std::panic::catch_unwind(AssertUnwindSafe(work)));
    });
    let queue = queue();
    let mut job = job;
    loop {
        match queue.try_send(job) {
            Ok(()) => break,
            // Full: wait for room without blocking the runtime's thread.
            Err(mpsc::TrySendError::Full(returned)) => {
                job = returned;
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            Err(mpsc::TrySendError::Disconnected(_)) => unreachable!("the pool never stops"),
        }
    }
    match receiver.await.expect("a storage pool job always answers") {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Apply is not delayed by a full tokio blocking pool: with every blocking thread
    /// parked, work on the storage pool still runs.
    #[test]
    fn storage_work_runs_while_the_blocking_pool_is_full() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .max_blocking_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (release, parked) = std::sync::mpsc::channel::<()>();
            let parked = Arc::new(Mutex::new(parked));
            let mut blockers = Vec::new();
            for _ in 0..4 {
                let parked = parked.clone();
                blockers.push(tokio::task::spawn_blocking(move || {
                    let _ = parked.lock().unwrap().recv();
                }));
            }
            let done = tokio::time::timeout(std::time::Duration::from_secs(5), run(|| 6 * 7))
                .await
                .expect("storage work is not queued behind blocked reads");
            assert_eq!(done, 42);
            for _ in 0..4 {
                release.send(()).unwrap();
            }
            for blocker in blockers {
                blocker.await.unwrap();
            }
        });
    }

    #[test]
    fn a_panic_in_storage_work_reaches_the_caller() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
            runtime.block_on(run(|| panic!("boom")))
        }));
        assert!(caught.is_err());
        // The pool still serves.
        assert_eq!(runtime.block_on(run(|| 1)), 1);
    }
}
