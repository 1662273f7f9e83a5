//! Group commit: the leader's per-shard batcher.
//!
//! Requests wait in a bounded queue. When a proposal slot is free, the batcher takes
//! everything queued (up to `batch_events_max` events and `batch_bytes_max` bytes) and
//! proposes it as ONE Raft entry. Under load the queue fills while slots are busy, so
//! batches grow by themselves; at low load a request is proposed at once, with no linger.
//!
//! Budget at 150k events/s: with 2 slots per shard and ~2–5 ms per round (journal write,
//! fsync, apply), a shard proposes ~1,000 entries/s at most, so entries of ~500 events
//! amortize the fsync and the Raft round over hundreds of events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use crate::clock::Clock;
use crate::consensus::{Raft, CLIENT_WRITE_TIMEOUT};
use crate::index::IndexProgress;
use crate::ledger::{ApplyReceipt, EventRecord, LedgerCommand};

/// Longest a proposal waits for the indexes (see [`IndexGate`]): bounds what a slow
/// indexer can take from ingest to about two entries per second per slot.
const INDEX_HOLD_MAX: Duration = Duration::from_secs(1);
const INDEX_HOLD_POLL: Duration = Duration::from_millis(5);
/// The pause before each proposal while the lag nears its bound: from nothing at
/// [`PACE_FROM_PERCENT`] of the bound up to this at the bound.
const INDEX_PACE_MAX: Duration = Duration::from_millis(250);
const PACE_FROM_PERCENT: u64 = 60;

/// How long a proposal pauses for an index lag of `lag_ms` under a bound of
/// `lag_ms_max`: nothing below 60% of the bound, then in proportion up to
/// [`INDEX_PACE_MAX`] at the bound (over it, the gate holds instead).
fn pace(lag_ms: u64, lag_ms_max: u64) -> Duration {
    let from = lag_ms_max * PACE_FROM_PERCENT / 100;
    if lag_ms <= from || lag_ms_max == 0 {
        return Duration::ZERO;
    }
    let share = (lag_ms - from).min(lag_ms_max - from) as f64 / (lag_ms_max - from).max(1) as f64;
    INDEX_PACE_MAX.mul_f64(share)
}

/// Backpressure from the secondary indexes: as the shard's index lag nears
/// `index_hold_lag_ms`, each proposal first pauses in proportion ([`pace`], up to
/// 250 ms), and while the lag is over the bound the batcher holds its next proposal
/// back (up to [`INDEX_HOLD_MAX`] each), so requests queue, entries grow, and once the
/// queue is full producers are told to back off. The pacing makes ingest slow down
/// smoothly to what the indexer keeps up with, rather than stop and go at the bound
/// (which made the ack p99 about the 1 s hold). Without it a shard ingesting faster than one
/// node-wide indexer thread can index grows its lag without bound (180-220 s on the
/// whale's shard in a 10 M-event run), and every query scans that unindexed tail.
/// Unattached (before the shard joins the index) it never holds.
#[derive(Clone, Default)]
pub struct IndexGate {
    progress: Arc<OnceLock<Arc<IndexProgress>>>,
    held_us: Arc<AtomicU64>,
}

impl IndexGate {
    pub fn attach(&self, progress: Arc<IndexProgress>) {
        let _ = self.progress.set(progress);
    }

    /// Microseconds proposals were held back, in all.
    pub fn held_us(&self) -> u64 {
        self.held_us.load(Ordering::Relaxed)
    }

    fn holds(&self, lag_ms_max: u64) -> bool {
        lag_ms_max > 0
            && self
                .progress
                .get()
                .is_some_and(|progress| progress.holds_ingest(lag_ms_max))
    }

    /// The pause for the lag now (zero when the gate does not apply).
    fn pace(&self, lag_ms_max: u64) -> Duration {
        match self.progress.get() {
            Some(progress) if lag_ms_max > 0 && progress.paces_ingest() => {
                pace(progress.lag_ms.load(Ordering::Relaxed), lag_ms_max)
            }
            _ => Duration::ZERO,
        }
    }

    async fn hold(&self, lag_ms_max: u64) {
        if !self.holds(lag_ms_max) {
            let pause = self.pace(lag_ms_max);
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
                self.held_us
                    .fetch_add(pause.as_micros() as u64, Ordering::Relaxed);
            }
            return;
        }
        let started = tokio::time::Instant::now();
        while self.holds(lag_ms_max) && started.elapsed() < INDEX_HOLD_MAX {
            tokio::time::sleep(INDEX_HOLD_POLL).await;
        }
        self.held_us
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}

/// Limits of one shard's write path, all bounded.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Most events in one Raft entry.
    pub batch_events_max: usize,
    /// Most bytes of events in one Raft entry.
    pub batch_bytes_max: usize,
    /// Raft entries proposed and not yet applied, per shard.
    pub proposals_in_flight_max: usize,
    /// Bytes of events accepted and not yet acknowledged, per shard: the queue's memory.
    pub queue_bytes_max: usize,
    /// Requests waiting in the queue, per shard.
    pub queue_requests_max: usize,
    /// Events that seal a block by size; stamped into each entry so that every replica
    /// seals at the same event.
    pub block_events_max: u32,
    /// Index lag (ms) over which proposals wait for the indexes ([`IndexGate`]);
    /// 0: never.
    pub index_hold_lag_ms: u64,
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            batch_events_max: 2_000,
            batch_bytes_max: 2 << 20,
            // Measured (docs/bench/history/ingest-single-node.md, "Ingest, single
            // node"): 1-2 slots make larger entries and gave 52-61k events/s where 4
            // gave 48-52k and 8 gave 49k; 2 keeps one entry filling while the other
            // is fsynced and applied.
            proposals_in_flight_max: 2,
            queue_bytes_max: 32 << 20,
            queue_requests_max: 4_096,
            block_events_max: crate::ledger::BLOCK_EVENTS_DEFAULT,
            // As `traild` sets it for the default commit interval (500 ms): twice the
            // interval plus 500 ms. Events wait up to one interval to be indexed, and an
            // indexer that keeps up showed up to ~0.9 s of lag; pacing starts at 60%.
            index_hold_lag_ms: 1_500,
        }
    }
}

/// Why a shard did not record a request's events.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The shard's queue is full: retry after the hint, with the same event ids.
    #[error("shard {shard} is at capacity; retry in {retry_after_ms} ms")]
    Busy { shard: u32, retry_after_ms: u32 },
    /// The outcome is unknown or the shard is not serving: retry with the same event ids
    /// (deduplication makes the retry safe).
    #[error("shard {shard} is unavailable: {reason}")]
    Unavailable { shard: u32, reason: String },
}

/// Suggested wait when a queue is full: about one group-commit round.
const RETRY_AFTER_MS: u32 = 50;

pub type IngestReply = Result<Vec<ApplyReceipt>, IngestError>;

pub struct IngestRequest {
    pub events: Vec<EventRecord>,
    pub bytes: usize,
    pub reply: oneshot::Sender<IngestReply>,
    /// Holds the request's share of the queue budget until it is acknowledged.
    budget: OwnedSemaphorePermit,
}

/// The producer side of a shard's queue.
#[derive(Clone)]
pub struct IngestQueue {
    shard: u32,
    sender: mpsc::Sender<IngestRequest>,
    budget: Arc<Semaphore>,
    queue_bytes_max: usize,
}

impl IngestQueue {
    /// Queues events for the shard; fails fast with `Busy` instead of waiting, so that
    /// memory stays bounded and the producer backs off.
    pub fn submit(
        &self,
        events: Vec<EventRecord>,
    ) -> Result<oneshot::Receiver<IngestReply>, IngestError> {
        let bytes: usize = events.iter().map(EventRecord::size_bytes).sum();
        // One request larger than the whole budget would never fit: let it through
        // alone by capping its charge (requests are bounded by BATCH_EVENTS_MAX anyway).
        let charge = bytes.min(self.queue_bytes_max).max(1);
        let busy = IngestError::Busy {
            shard: self.shard,
            retry_after_ms: RETRY_AFTER_MS,
        };
        let permit = self
            .budget
            .clone()
            .try_acquire_many_owned(charge as u32)
            .map_err(|_| busy.clone())?;
        let (reply, receiver) = oneshot::channel();
        let request = IngestRequest {
            events,
            bytes,
            reply,
            budget: permit,
        };
        match self.sender.try_send(request) {
            Ok(()) => Ok(receiver),
            Err(mpsc::error::TrySendError::Full(_)) => Err(busy),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(IngestError::Unavailable {
                shard: self.shard,
                reason: "shard is shutting down".into(),
            }),
        }
    }

    /// Bytes of events queued or in flight.
    pub fn depth_bytes(&self) -> usize {
        self.queue_bytes_max - self.budget.available_permits()
    }
}

pub fn queue(shard: u32, limits: BatchLimits) -> (IngestQueue, mpsc::Receiver<IngestRequest>) {
    let (sender, receiver) = mpsc::channel(limits.queue_requests_max);
    let queue = IngestQueue {
        shard,
        sender,
        budget: Arc::new(Semaphore::new(limits.queue_bytes_max)),
        queue_bytes_max: limits.queue_bytes_max,
    };
    (queue, receiver)
}

/// Runs until the queue's senders are gone and every proposal has finished.
pub async fn run(
    shard: u32,
    raft: Raft,
    clock: Arc<dyn Clock>,
    limits: BatchLimits,
    index_gate: IndexGate,
    mut receiver: mpsc::Receiver<IngestRequest>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(limits.proposals_in_flight_max));
    // `ingested_at` never goes backwards within the shard, even if the wall clock does,
    // so that stream order and ingest-time order agree.
    let mut last_ingested_at_ns = i64::MIN;
    let mut carried: Option<IngestRequest> = None;
    let mut closing = false;
    loop {
        let first = match carried.take() {
            Some(request) => request,
            None => tokio::select! {
                biased;
                request = receiver.recv() => match request {
                    Some(request) => request,
                    None => break,
                },
                _ = &mut shutdown, if !closing => {
                    // Refuse new requests; what is queued is still proposed and acked.
                    receiver.close();
                    closing = true;
                    continue;
                }
            },
        };
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("slots semaphore is never closed");
        // Before the batch is cut, so that what queues meanwhile joins it; not while
        // draining for shutdown, which has a deadline.
        if !closing {
            index_gate.hold(limits.index_hold_lag_ms).await;
        }

        let mut requests = vec![first];
        let mut events_count = requests[0].events.len();
        let mut bytes = requests[0].bytes;
        while events_count < limits.batch_events_max && bytes < limits.batch_bytes_max {
            match receiver.try_recv() {
                Ok(request) => {
                    if events_count + request.events.len() > limits.batch_events_max
                        || bytes + request.bytes > limits.batch_bytes_max
                    {
                        carried = Some(request);
                        break;
                    }
                    events_count += request.events.len();
                    bytes += request.bytes;
                    requests.push(request);
                }
                Err(_) => break,
            }
        }

        let ingested_at_ns = clock.now_ns().max(last_ingested_at_ns.saturating_add(1));
        last_ingested_at_ns = ingested_at_ns;
        let mut events = Vec::with_capacity(events_count);
        let mut replies = Vec::with_capacity(requests.len());
        for request in requests {
            replies.push((request.events.len(), request.reply, request.budget));
            events.extend(request.events);
        }
        let command = LedgerCommand::Append {
            ingested_at_ns,
            block_events_max: limits.block_events_max,
            events,
        };
        // `client_write_ff` hands the entry to RaftCore before returning, so entries
        // enter the log in the order the batcher made them.
        let proposed = raft.client_write_ff(command).await;
        tokio::spawn(async move {
            let outcome = match proposed {
                Err(fatal) => Err(unavailable(shard, format!("raft stopped: {fatal}"))),
                Ok(receiver) => match tokio::time::timeout(CLIENT_WRITE_TIMEOUT, receiver).await {
                    Err(_) => Err(unavailable(
                        shard,
                        "commit timed out; outcome unknown".into(),
                    )),
                    Ok(Err(_)) => Err(unavailable(shard, "raft dropped the proposal".into())),
                    Ok(Ok(Err(error))) => Err(unavailable(shard, error.to_string())),
                    Ok(Ok(Ok(response))) => match response.data.refused {
                        // Not applied on any replica (`ledger::recheck`): ingest
                        // validated these events, so this is a bug, not bad input.
                        Some(reason) => Err(unavailable(
                            shard,
                            format!("the entry was refused at apply: {reason}"),
                        )),
                        None => Ok(response.data.receipts),
                    },
                },
            };
            deliver(outcome, replies);
            drop(slot);
        });
    }
    // Wait for the proposals still in flight before reporting the queue drained.
    let _all = slots
        .acquire_many(limits.proposals_in_flight_max as u32)
        .await;
}

fn unavailable(shard: u32, reason: String) -> IngestError {
    IngestError::Unavailable { shard, reason }
}

type Reply = (usize, oneshot::Sender<IngestReply>, OwnedSemaphorePermit);

fn deliver(outcome: Result<Vec<ApplyReceipt>, IngestError>, replies: Vec<Reply>) {
    match outcome {
        Err(error) => {
            for (_, reply, _budget) in replies {
                let _ = reply.send(Err(error.clone()));
            }
        }
        Ok(receipts) => {
            let expected: usize = replies.iter().map(|(count, _, _)| count).sum();
            assert_eq!(receipts.len(), expected, "one receipt per proposed event");
            let mut receipts = receipts.into_iter();
            for (count, reply, _budget) in replies {
                let mine: Vec<ApplyReceipt> = receipts.by_ref().take(count).collect();
                // The requester may have gone (client cancelled): the events are
                // recorded all the same, and a retry will get them deduplicated.
                let _ = reply.send(Ok(mine));
            }
        }
    }
}

/// How long shutdown waits for queued work before giving up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

#[cfg(test)]
mod tests {
    use super::*;

    const LAG_MAX: u64 = 1_000;

    fn progress(lag_ms: u64) -> Arc<IndexProgress> {
        let progress = Arc::new(IndexProgress::default());
        progress.lag_ms.store(lag_ms, Ordering::Relaxed);
        progress
    }

    #[test]
    fn the_gate_holds_only_for_a_running_indexer_that_fell_behind() {
        let gate = IndexGate::default();
        assert!(!gate.holds(LAG_MAX), "unattached");
        let behind = progress(LAG_MAX + 1);
        gate.attach(behind.clone());
        assert!(gate.holds(LAG_MAX));
        assert!(!gate.holds(0), "0 turns the hold off");
        behind.rebuild_remaining.store(5, Ordering::Relaxed);
        assert!(!gate.holds(LAG_MAX), "a rebuild does not hold ingest");
        behind.rebuild_remaining.store(0, Ordering::Relaxed);
        behind.indexer_stopped.store(true, Ordering::Relaxed);
        assert!(
            !gate.holds(LAG_MAX),
            "a stopped indexer does not hold ingest"
        );
        let keeping_up = IndexGate::default();
        keeping_up.attach(progress(LAG_MAX));
        assert!(!keeping_up.holds(LAG_MAX));
    }

    #[test]
    fn the_pace_grows_from_60_percent_of_the_bound() {
        let ms = |lag| pace(lag, LAG_MAX).as_millis();
        assert_eq!(ms(0), 0);
        assert_eq!(ms(600), 0);
        assert_eq!(ms(800), 125);
        assert_eq!(ms(1_000), 250);
        assert_eq!(ms(5_000), 250, "over the bound the hold takes over");
        assert_eq!(pace(5_000, 0), Duration::ZERO, "0 turns it off");
        let gate = IndexGate::default();
        gate.attach(progress(800));
        assert_eq!(gate.pace(LAG_MAX).as_millis(), 125);
        assert!(!gate.holds(LAG_MAX));
    }

    #[tokio::test]
    async fn a_hold_is_bounded_and_counted() {
        let gate = IndexGate::default();
        gate.hold(LAG_MAX).await;
        assert_eq!(gate.held_us(), 0, "nothing to wait for");
        gate.attach(progress(u64::MAX));
        gate.hold(LAG_MAX).await;
        assert!(gate.held_us() >= INDEX_HOLD_MAX.as_micros() as u64);
    }
}
