//! How far a shard's state machine has applied, as the rest of the node may rely on it.
//!
//! The state machine publishes its applied index here after the fjall batch that
//! applied (or installed) it is committed, so it is in the shared journal. Two readers:
//!
//! - the log store (`log_store.rs`) journals a purge only once the state machine has
//!   reached it, so the purge comes after that batch in the journal and no crash can
//!   keep the purge without it (fjall recovers a prefix of the journal; a memtable flush
//!   fsyncs the journal first, so nothing reaches a table file out of order);
//! - linearizable reads (`shard::ShardHandle::read_barrier`) wait here until the
//!   replica has applied what its leadership check requires.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

#[derive(Debug, Default)]
pub struct AppliedProgress {
    /// The applied log index plus one; 0 while nothing is applied.
    next: AtomicU64,
    /// The state machine failed (apply or install returned an error): it will not
    /// advance in this process.
    failed: AtomicBool,
    changed: Notify,
}

/// The state machine stopped with an error; whatever waited for it cannot proceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the shard's state machine failed and applies no more entries")]
pub struct StateMachineFailed;

impl AppliedProgress {
    pub fn new(applied_index: Option<u64>) -> AppliedProgress {
        let progress = AppliedProgress::default();
        progress.next.store(
            applied_index.map_or(0, |index| index + 1),
            Ordering::Release,
        );
        progress
    }

    /// The last applied log index, if any entry (or snapshot) was applied.
    pub fn applied_index(&self) -> Option<u64> {
        self.next.load(Ordering::Acquire).checked_sub(1)
    }

    /// Whether the state machine has applied the entry at `index`.
    pub fn reached(&self, index: u64) -> bool {
        self.next.load(Ordering::Acquire) > index
    }

    pub fn has_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Called by the state machine once its batch is committed to the journal.
    pub fn publish(&self, applied_index: Option<u64>) {
        self.next.store(
            applied_index.map_or(0, |index| index + 1),
            Ordering::Release,
        );
        self.changed.notify_waiters();
    }

    /// Called by the state machine when apply or install fails.
    pub fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Waits until the entry at `index` is applied. Callers bound it with a timeout.
    pub async fn wait_for(&self, index: u64) -> Result<(), StateMachineFailed> {
        loop {
            // Registered before the check, so a publish between the check and the
            // await is not missed.
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.reached(index) {
                return Ok(());
            }
            if self.has_failed() {
                return Err(StateMachineFailed);
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn none_is_below_index_zero() {
        let progress = AppliedProgress::new(None);
        assert_eq!(progress.applied_index(), None);
        assert!(!progress.reached(0));
        progress.publish(Some(0));
        assert_eq!(progress.applied_index(), Some(0));
        assert!(progress.reached(0));
        assert!(!progress.reached(1));
    }

    #[tokio::test]
    async fn wait_for_wakes_on_publish_and_on_failure() {
        let progress = Arc::new(AppliedProgress::new(Some(3)));
        progress.wait_for(3).await.expect("already reached");

        let waiter = tokio::spawn({
            let progress = progress.clone();
            async move { progress.wait_for(7).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        progress.publish(Some(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "5 is below 7");
        progress.publish(Some(7));
        waiter.await.expect("task").expect("reached");

        let waiter = tokio::spawn({
            let progress = progress.clone();
            async move { progress.wait_for(9).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        progress.fail();
        assert_eq!(waiter.await.expect("task"), Err(StateMachineFailed));
    }
}
