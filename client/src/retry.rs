//! When and how long to retry, and how a batch's outcomes are assembled over several
//! attempts. Pure logic with no I/O, so the merge rules are unit-tested directly.

use std::time::Duration;

use tonic::{Code, Status};
use trail_proto::v1::{record_outcome::Outcome, EventError, RecordBatchResponse, RecordOutcome};

use crate::error::{code_name, Error};

/// How many times a call is tried and how long to wait between tries.
///
/// The wait before retry `n` (0-based) is drawn from
/// `[d/2, d]` with `d = min(backoff_cap_ms, backoff_base_ms * 2^n)` ("equal jitter"):
/// the exponential growth backs off from a loaded node, and the jitter keeps many
/// clients that failed together from retrying together. A `retry_after_ms` hint from
/// the server raises the wait to at least the hint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries of one call, the first included; 1 means no retries.
    pub attempts_max: u32,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
}

impl Default for RetryPolicy {
    /// 16 tries with waits of 20 ms, 40 ms, ... capped at 2 s (each jittered to half to
    /// all of it): 9-18 s of waiting in all, long enough to ride out a shard's leader
    /// election in a cluster (openraft 0.9: a 3 s leader lease plus a 1.5-3 s election
    /// timeout, ~5-6 s measured, plus reconnecting), short enough that a dead node is
    /// reported while the operator still watches.
    fn default() -> Self {
        RetryPolicy {
            attempts_max: 16,
            backoff_base_ms: 20,
            backoff_cap_ms: 2_000,
        }
    }
}

impl RetryPolicy {
    /// The wait after failed try `attempt` (0-based). `jitter` is uniform in `[0, 1)`;
    /// it is a parameter so tests are deterministic.
    pub fn backoff_delay(&self, attempt: u32, retry_after_ms: u32, jitter: f64) -> Duration {
        // 2^attempt overflows past 63; the cap is reached long before that.
        let exponent = attempt.min(32);
        let ceiling_ms = self
            .backoff_base_ms
            .saturating_mul(1u64 << exponent)
            .min(self.backoff_cap_ms);
        let jitter_clamped = jitter.clamp(0.0, 1.0);
        let delay_ms =
            ceiling_ms / 2 + ((ceiling_ms - ceiling_ms / 2) as f64 * jitter_clamped) as u64;
        Duration::from_millis(delay_ms.max(u64::from(retry_after_ms)))
    }
}

/// Whether a request-level failure may be retried. Retrying is safe for every case here
/// because each event carries its idempotency key: at worst the server deduplicates.
pub(crate) fn is_retryable_status(status: &Status) -> bool {
    match status.code() {
        Code::Unavailable | Code::ResourceExhausted | Code::DeadlineExceeded => true,
        _ => is_client_timeout(status) || is_transport_failure(status),
    }
}

/// A status made on this side of the wire from a transport error, e.g. UNKNOWN
/// "transport error" or CANCELLED when a connection drops mid-call. tonic keeps the
/// underlying error as the status's source; a status the server sent has none.
pub(crate) fn is_transport_failure(status: &Status) -> bool {
    std::error::Error::source(status).is_some()
}

/// tonic reports its own client-side deadline as CANCELLED "Timeout expired".
pub(crate) fn is_client_timeout(status: &Status) -> bool {
    status.code() == Code::Cancelled && status.message() == "Timeout expired"
}

/// Whether one event's refusal is transient (load or leadership), so resending it may
/// succeed. INVALID_ARGUMENT and everything else is final.
pub(crate) fn is_retryable_event_code(code: &str) -> bool {
    code == "RESOURCE_EXHAUSTED" || code == "UNAVAILABLE"
}

/// The outcomes of one batch, assembled over several attempts.
///
/// The first attempt sends every event; each later attempt sends only the events whose
/// outcome was a transient error. Outcomes are stored at the event's position in the
/// caller's batch, and error indexes are rewritten to that position, so the caller sees
/// one response as if the batch had been sent once.
#[derive(Debug)]
pub(crate) struct BatchProgress {
    /// One slot per event of the caller's batch. A transiently failed event keeps its
    /// latest error here (replaced on success) so that, if retries run out, the caller
    /// sees why.
    outcomes: Vec<Option<RecordOutcome>>,
    /// Positions (in the caller's batch) of the events the next attempt sends, ascending.
    pending: Vec<usize>,
    retry_after_ms: u32,
}

impl BatchProgress {
    pub(crate) fn new(events_count: usize) -> Self {
        BatchProgress {
            outcomes: vec![None; events_count],
            pending: (0..events_count).collect(),
            retry_after_ms: 0,
        }
    }

    /// Positions of the events to send next, in the order to send them.
    pub(crate) fn pending(&self) -> &[usize] {
        &self.pending
    }

    pub(crate) fn is_done(&self) -> bool {
        self.pending.is_empty()
    }

    /// The server's hint from the latest response.
    pub(crate) fn retry_after_ms(&self) -> u32 {
        self.retry_after_ms
    }

    /// Whether any attempt has produced an outcome yet.
    pub(crate) fn has_outcomes(&self) -> bool {
        self.outcomes.iter().any(Option::is_some)
    }

    /// Folds in the response to an attempt that sent exactly `self.pending()`.
    pub(crate) fn merge(&mut self, response: RecordBatchResponse) -> Result<(), Error> {
        if response.outcomes.len() != self.pending.len() {
            return Err(Error::Protocol(format!(
                "RecordBatch answered {} outcomes for {} events",
                response.outcomes.len(),
                self.pending.len()
            )));
        }
        let mut still_pending = Vec::new();
        for (request_index, outcome) in response.outcomes.into_iter().enumerate() {
            let batch_index = self.pending[request_index];
            match outcome.outcome {
                Some(Outcome::Receipt(receipt)) => {
                    self.outcomes[batch_index] = Some(RecordOutcome {
                        outcome: Some(Outcome::Receipt(receipt)),
                    });
                }
                Some(Outcome::Error(mut error)) => {
                    if is_retryable_event_code(&error.code) {
                        still_pending.push(batch_index);
                    }
                    error.index = index_u32(batch_index);
                    self.outcomes[batch_index] = Some(RecordOutcome {
                        outcome: Some(Outcome::Error(error)),
                    });
                }
                None => {
                    return Err(Error::Protocol(format!(
                        "RecordBatch outcome {request_index} has neither receipt nor error"
                    )));
                }
            }
        }
        self.pending = still_pending;
        self.retry_after_ms = response.retry_after_ms;
        Ok(())
    }

    /// Gives up on the pending events after a request-level failure: each gets an
    /// error carrying the status. `event_id_at` names the event at a batch position.
    pub(crate) fn fail_pending<F>(&mut self, status: &Status, event_id_at: F)
    where
        F: Fn(usize) -> String,
    {
        for &batch_index in &self.pending {
            self.outcomes[batch_index] = Some(RecordOutcome {
                outcome: Some(Outcome::Error(EventError {
                    index: index_u32(batch_index),
                    event_id: event_id_at(batch_index),
                    code: code_name(status.code()).to_string(),
                    field: String::new(),
                    message: status.message().to_string(),
                })),
            });
        }
    }

    /// The caller's response: one outcome per event in the caller's order, with counts
    /// recomputed over the final outcomes. Events still pending keep their last error.
    pub(crate) fn finish(self) -> RecordBatchResponse {
        let mut response = RecordBatchResponse {
            outcomes: Vec::with_capacity(self.outcomes.len()),
            accepted: 0,
            deduplicated: 0,
            rejected: 0,
            retry_after_ms: if self.pending.is_empty() {
                0
            } else {
                self.retry_after_ms
            },
        };
        for (batch_index, slot) in self.outcomes.into_iter().enumerate() {
            // Every slot is filled: a slot is only pending until an attempt answers it,
            // and `fail_pending` fills the ones no attempt answered.
            let outcome =
                slot.unwrap_or_else(|| panic!("batch outcome {batch_index} was never filled"));
            match &outcome.outcome {
                Some(Outcome::Receipt(receipt)) if receipt.deduplicated => {
                    response.deduplicated += 1
                }
                Some(Outcome::Receipt(_)) => response.accepted += 1,
                Some(Outcome::Error(_)) | None => response.rejected += 1,
            }
            response.outcomes.push(outcome);
        }
        response
    }
}

fn index_u32(batch_index: usize) -> u32 {
    // Batches are at most BATCH_EVENTS_MAX events; a batch this large never reaches here.
    u32::try_from(batch_index).expect("batch index fits in u32")
}

#[cfg(test)]
mod tests {
    use super::*;
    use trail_proto::v1::Receipt;

    fn receipt(event_id: &str, seq: u64, deduplicated: bool) -> RecordOutcome {
        RecordOutcome {
            outcome: Some(Outcome::Receipt(Receipt {
                event_id: event_id.to_string(),
                tenant_id: "ten_0001".to_string(),
                stream: "main".to_string(),
                seq,
                leaf_hash: vec![0xab; 32],
                deduplicated,
                ingested_at_ns: 0,
            })),
        }
    }

    fn error(index: u32, event_id: &str, code: &str, field: &str) -> RecordOutcome {
        RecordOutcome {
            outcome: Some(Outcome::Error(EventError {
                index,
                event_id: event_id.to_string(),
                code: code.to_string(),
                field: field.to_string(),
                message: "refused".to_string(),
            })),
        }
    }

    fn response(outcomes: Vec<RecordOutcome>, retry_after_ms: u32) -> RecordBatchResponse {
        RecordBatchResponse {
            outcomes,
            accepted: 0,
            deduplicated: 0,
            rejected: 0,
            retry_after_ms,
        }
    }

    fn error_of(outcome: &RecordOutcome) -> &EventError {
        match &outcome.outcome {
            Some(Outcome::Error(error)) => error,
            other => panic!("expected an error outcome, got {other:?}"),
        }
    }

    fn receipt_of(outcome: &RecordOutcome) -> &Receipt {
        match &outcome.outcome {
            Some(Outcome::Receipt(receipt)) => receipt,
            other => panic!("expected a receipt, got {other:?}"),
        }
    }

    #[test]
    fn all_accepted_in_one_attempt() {
        let mut progress = BatchProgress::new(2);
        progress
            .merge(response(
                vec![receipt("a", 1, false), receipt("b", 2, true)],
                0,
            ))
            .unwrap();
        assert!(progress.is_done());
        let merged = progress.finish();
        assert_eq!(
            (merged.accepted, merged.deduplicated, merged.rejected),
            (1, 1, 0)
        );
        assert_eq!(receipt_of(&merged.outcomes[1]).event_id, "b");
    }

    #[test]
    fn transient_errors_are_resent_and_merged_at_original_positions() {
        let mut progress = BatchProgress::new(5);
        progress
            .merge(response(
                vec![
                    receipt("e0", 1, false),
                    error(1, "e1", "RESOURCE_EXHAUSTED", ""),
                    error(2, "e2", "INVALID_ARGUMENT", "actor.id"),
                    error(3, "e3", "UNAVAILABLE", ""),
                    receipt("e4", 2, false),
                ],
                150,
            ))
            .unwrap();
        assert_eq!(progress.pending(), &[1, 3]);
        assert_eq!(progress.retry_after_ms(), 150);

        // The retry carries only e1 and e3; the server numbers them 0 and 1.
        progress
            .merge(response(
                vec![receipt("e1", 3, false), error(1, "e3", "UNAVAILABLE", "")],
                80,
            ))
            .unwrap();
        assert_eq!(progress.pending(), &[3]);

        progress
            .merge(response(vec![receipt("e3", 4, true)], 0))
            .unwrap();
        assert!(progress.is_done());

        let merged = progress.finish();
        assert_eq!(merged.outcomes.len(), 5);
        assert_eq!(
            (merged.accepted, merged.deduplicated, merged.rejected),
            (3, 1, 1)
        );
        assert_eq!(merged.retry_after_ms, 0);
        assert_eq!(receipt_of(&merged.outcomes[0]).event_id, "e0");
        assert_eq!(receipt_of(&merged.outcomes[1]).event_id, "e1");
        let invalid = error_of(&merged.outcomes[2]);
        assert_eq!((invalid.index, invalid.field.as_str()), (2, "actor.id"));
        assert_eq!(receipt_of(&merged.outcomes[3]).event_id, "e3");
        assert_eq!(receipt_of(&merged.outcomes[4]).event_id, "e4");
    }

    #[test]
    fn retries_running_out_leave_last_error_with_original_index() {
        let mut progress = BatchProgress::new(3);
        progress
            .merge(response(
                vec![
                    receipt("e0", 1, false),
                    receipt("e1", 2, false),
                    error(2, "e2", "RESOURCE_EXHAUSTED", ""),
                ],
                0,
            ))
            .unwrap();
        progress
            .merge(response(
                vec![error(0, "e2", "RESOURCE_EXHAUSTED", "")],
                500,
            ))
            .unwrap();
        let merged = progress.finish();
        assert_eq!(
            (merged.accepted, merged.deduplicated, merged.rejected),
            (2, 0, 1)
        );
        assert_eq!(merged.retry_after_ms, 500);
        let last = error_of(&merged.outcomes[2]);
        assert_eq!((last.index, last.code.as_str()), (2, "RESOURCE_EXHAUSTED"));
    }

    #[test]
    fn request_failure_fills_pending_events() {
        let mut progress = BatchProgress::new(2);
        progress
            .merge(response(
                vec![receipt("e0", 1, false), error(1, "e1", "UNAVAILABLE", "")],
                0,
            ))
            .unwrap();
        let status = Status::unavailable("connection refused");
        progress.fail_pending(&status, |batch_index| format!("e{batch_index}"));
        let merged = progress.finish();
        let failed = error_of(&merged.outcomes[1]);
        assert_eq!(failed.index, 1);
        assert_eq!(failed.event_id, "e1");
        assert_eq!(failed.code, "UNAVAILABLE");
        assert_eq!(failed.message, "connection refused");
    }

    #[test]
    fn outcome_count_mismatch_is_a_protocol_error() {
        let mut progress = BatchProgress::new(2);
        let result = progress.merge(response(vec![receipt("e0", 1, false)], 0));
        assert!(matches!(result, Err(Error::Protocol(_))));
        let mut empty_outcome = BatchProgress::new(1);
        let result = empty_outcome.merge(response(vec![RecordOutcome { outcome: None }], 0));
        assert!(matches!(result, Err(Error::Protocol(_))));
    }

    #[test]
    fn backoff_grows_exponentially_to_the_cap_with_jitter() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff_delay(0, 0, 0.0), Duration::from_millis(10));
        assert_eq!(policy.backoff_delay(0, 0, 1.0), Duration::from_millis(20));
        assert_eq!(policy.backoff_delay(3, 0, 1.0), Duration::from_millis(160));
        assert_eq!(
            policy.backoff_delay(10, 0, 1.0),
            Duration::from_millis(2_000)
        );
        assert_eq!(
            policy.backoff_delay(200, 0, 0.5),
            Duration::from_millis(1_500)
        );
        for attempt in 0..20 {
            let delay = policy.backoff_delay(attempt, 0, 0.999);
            assert!(delay <= Duration::from_millis(policy.backoff_cap_ms));
        }
    }

    #[test]
    fn retry_after_hint_is_the_minimum_wait() {
        let policy = RetryPolicy::default();
        assert_eq!(
            policy.backoff_delay(0, 750, 0.3),
            Duration::from_millis(750)
        );
        assert_eq!(
            policy.backoff_delay(10, 5, 1.0),
            Duration::from_millis(2_000)
        );
    }

    #[test]
    fn retryable_classification() {
        assert!(is_retryable_status(&Status::unavailable("down")));
        assert!(is_retryable_status(&Status::resource_exhausted("busy")));
        assert!(is_retryable_status(&Status::cancelled("Timeout expired")));
        assert!(!is_retryable_status(&Status::cancelled("user hung up")));
        assert!(!is_retryable_status(&Status::invalid_argument("bad")));
        let dropped = Status::from_error(Box::new(std::io::Error::other("connection reset")));
        assert_eq!(dropped.code(), Code::Unknown);
        assert!(is_retryable_status(&dropped));
        assert!(!is_retryable_status(&Status::unknown("server bug")));
        assert!(is_retryable_event_code("RESOURCE_EXHAUSTED"));
        assert!(is_retryable_event_code("UNAVAILABLE"));
        assert!(!is_retryable_event_code("INVALID_ARGUMENT"));
    }
}
