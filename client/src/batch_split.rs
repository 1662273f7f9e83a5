//! How a batch of several tenants is split by the leader of each event's shard, and how
//! the parts' answers are merged back into one response in the caller's order. Pure
//! logic with no I/O, so the split and merge rules are unit-tested directly.

use std::sync::Arc;

use tonic::Status;
use trail_proto::v1::{record_outcome::Outcome, EventError, RecordBatchResponse, RecordOutcome};

use crate::error::{code_name, Error};
use crate::shard_map::{shard_of_key, ShardMap};

/// One part of a split batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Part {
    /// The endpoint of the node leading the part's shards; `None` for the events
    /// whose shard has no known (or no reachable) leader, which go to the current
    /// endpoint and are forwarded by it.
    pub(crate) leader: Option<Arc<str>>,
    /// The part's events: their positions in the caller's batch, ascending.
    pub(crate) positions: Vec<usize>,
}

/// What became of one part.
#[derive(Debug)]
pub(crate) enum PartAnswer {
    /// The part's response, one outcome per event of the part, in the part's order
    /// (as the retry loop assembles it: error indexes are positions in the part).
    Answered(RecordBatchResponse),
    /// No attempt of the part got an answer, or it failed with a request-level error
    /// that is not transient. `event_ids` names the part's events, in the part's order.
    Failed {
        status: Status,
        event_ids: Vec<String>,
    },
}

/// A batch's events grouped by where they go. At most one part per node of the shard
/// map and one for the unrouted events, so at most `NODES_MAX + 1` parts.
#[derive(Debug)]
pub(crate) struct BatchSplit {
    parts: Vec<Part>,
    events_count: usize,
}

impl BatchSplit {
    /// Groups events by the leader of their shard. `tenant_keys` yields each event's
    /// [`crate::shard_map::tenant_key`], in batch order; `reachable` says whether the
    /// client can send to a leader's endpoint. Parts are in the order of their first
    /// event.
    pub(crate) fn plan<I, F>(map: &ShardMap, tenant_keys: I, reachable: F) -> BatchSplit
    where
        I: Iterator<Item = u64>,
        F: Fn(&str) -> bool,
    {
        let shards = map.shards();
        // Part index of each shard, resolved when the shard's first event is met: at
        // most SHARDS_MAX entries.
        let mut shard_parts: Vec<Option<usize>> = vec![None; shards as usize];
        let mut parts: Vec<Part> = Vec::new();
        let mut events_count = 0;
        for (position, key) in tenant_keys.enumerate() {
            let shard = shard_of_key(key, shards);
            let shard_index = (shard - 1) as usize;
            let part_index = match shard_parts[shard_index] {
                Some(part_index) => part_index,
                None => {
                    let leader = map
                        .leader_of_shard(shard)
                        .filter(|endpoint| reachable(endpoint))
                        .cloned();
                    let found = parts.iter().position(|part| part.leader == leader);
                    let part_index = match found {
                        Some(part_index) => part_index,
                        None => {
                            parts.push(Part {
                                leader,
                                positions: Vec::new(),
                            });
                            parts.len() - 1
                        }
                    };
                    shard_parts[shard_index] = Some(part_index);
                    part_index
                }
            };
            parts[part_index].positions.push(position);
            events_count += 1;
        }
        BatchSplit {
            parts,
            events_count,
        }
    }

    pub(crate) fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// Whether any part goes to a leader: otherwise the batch goes whole to the
    /// current endpoint, as without a map.
    pub(crate) fn reaches_a_leader(&self) -> bool {
        self.parts.iter().any(|part| part.leader.is_some())
    }

    /// Whether some events have no leader to go to: the map is worth refreshing.
    pub(crate) fn has_unrouted_events(&self) -> bool {
        self.parts.iter().any(|part| part.leader.is_none())
    }

    /// The index of the part of each event, in batch order.
    pub(crate) fn part_of_events(&self) -> Vec<usize> {
        let mut part_of = vec![usize::MAX; self.events_count];
        for (part_index, part) in self.parts.iter().enumerate() {
            for &position in &part.positions {
                part_of[position] = part_index;
            }
        }
        assert!(
            part_of
                .iter()
                .all(|&part_index| part_index < self.parts.len()),
            "every event is in a part"
        );
        part_of
    }

    /// One response for the caller's batch: each part's outcomes at their events'
    /// positions, error indexes rewritten to those positions, a failed part's events
    /// given its status, and counts recomputed. Fails when no part got an answer (the
    /// first part's status), or when a part answered a different number of outcomes
    /// than it has events.
    pub(crate) fn merge(&self, answers: Vec<PartAnswer>) -> Result<RecordBatchResponse, Error> {
        assert_eq!(answers.len(), self.parts.len(), "one answer per part");
        let mut outcomes: Vec<Option<RecordOutcome>> = vec![None; self.events_count];
        let mut retry_after_ms = 0;
        let mut first_failure: Option<Status> = None;
        let mut answered_any = false;
        for (part, answer) in self.parts.iter().zip(answers) {
            match answer {
                PartAnswer::Answered(response) => {
                    if response.outcomes.len() != part.positions.len() {
                        return Err(Error::Protocol(format!(
                            "RecordBatch answered {} outcomes for {} events",
                            response.outcomes.len(),
                            part.positions.len()
                        )));
                    }
                    answered_any = true;
                    retry_after_ms = retry_after_ms.max(response.retry_after_ms);
                    for (outcome, &position) in response.outcomes.into_iter().zip(&part.positions) {
                        outcomes[position] = Some(at_position(outcome, position));
                    }
                }
                PartAnswer::Failed { status, event_ids } => {
                    assert_eq!(event_ids.len(), part.positions.len(), "one id per event");
                    for (event_id, &position) in event_ids.into_iter().zip(&part.positions) {
                        outcomes[position] = Some(failed(&status, event_id, position));
                    }
                    first_failure.get_or_insert(status);
                }
            }
        }
        if !answered_any {
            let status = first_failure.expect("a batch split has at least one part");
            return Err(Error::Rpc(status));
        }

        let mut response = RecordBatchResponse {
            outcomes: Vec::with_capacity(self.events_count),
            retry_after_ms,
            ..RecordBatchResponse::default()
        };
        for (position, slot) in outcomes.into_iter().enumerate() {
            let outcome = slot.unwrap_or_else(|| panic!("event {position} is in no part"));
            match &outcome.outcome {
                Some(Outcome::Receipt(receipt)) if receipt.deduplicated => {
                    response.deduplicated += 1
                }
                Some(Outcome::Receipt(_)) => response.accepted += 1,
                Some(Outcome::Error(_)) | None => response.rejected += 1,
            }
            response.outcomes.push(outcome);
        }
        Ok(response)
    }
}

/// A part's outcome with its error index rewritten to the event's batch position.
fn at_position(mut outcome: RecordOutcome, position: usize) -> RecordOutcome {
    if let Some(Outcome::Error(error)) = &mut outcome.outcome {
        error.index = index_u32(position);
    }
    outcome
}

fn failed(status: &Status, event_id: String, position: usize) -> RecordOutcome {
    RecordOutcome {
        outcome: Some(Outcome::Error(EventError {
            index: index_u32(position),
            event_id,
            code: code_name(status.code()).to_string(),
            field: String::new(),
            message: status.message().to_string(),
        })),
    }
}

fn index_u32(position: usize) -> u32 {
    // Batches are at most BATCH_EVENTS_MAX events; a batch this large never reaches here.
    u32::try_from(position).expect("batch position fits in u32")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard_map::tenant_key;
    use trail_proto::v1::{ClusterMap, ClusterNode, Receipt, ShardStatus, StatusResponse};

    const N1: &str = "http://10.0.0.1:7400";
    const N2: &str = "http://10.0.0.2:7400";

    /// 4 shards: node 1 leads 1 and 2, node 2 leads 3, shard 4's leader is unknown.
    fn map() -> ShardMap {
        let cluster = ClusterMap {
            cluster_id: "trail".to_string(),
            nodes: (1..=3)
                .map(|node_id| ClusterNode {
                    node_id,
                    grpc_addr: format!("10.0.0.{node_id}:7400"),
                    peer_addr: String::new(),
                })
                .collect(),
            shards: 4,
            replicas: 3,
            ..ClusterMap::default()
        };
        let mut map = ShardMap::new(&cluster).unwrap();
        let shards = [(1, 1), (2, 1), (3, 2)]
            .into_iter()
            .map(|(shard_id, leader_node_id)| ShardStatus {
                shard_id,
                leader_node_id,
                role: "follower".to_string(),
                term: 1,
                ..ShardStatus::default()
            })
            .collect();
        map.merge_status(&StatusResponse {
            node_id: 3,
            shards,
            cluster: Some(cluster),
            ..StatusResponse::default()
        });
        map
    }

    // Shards with 4 shards (pinned in shard_map's tests): ten_0006 and acme -> 1,
    // ten_0001 and ten_0002 -> 2, ten_0005 -> 3; ten_0003 -> 2, "" -> 1.
    fn keys(tenants: &[&str]) -> Vec<u64> {
        tenants
            .iter()
            .map(|tenant_id| tenant_key(tenant_id))
            .collect()
    }

    fn leaders(split: &BatchSplit) -> Vec<Option<&str>> {
        split
            .parts()
            .iter()
            .map(|part| part.leader.as_deref())
            .collect()
    }

    #[test]
    fn events_are_grouped_by_their_shards_leader_in_first_seen_order() {
        let tenants = ["ten_0005", "ten_0001", "acme", "ten_0005", "ten_0002"];
        let split = BatchSplit::plan(&map(), keys(&tenants).into_iter(), |_| true);
        assert_eq!(leaders(&split), vec![Some(N2), Some(N1)]);
        assert_eq!(split.parts()[0].positions, vec![0, 3]);
        assert_eq!(split.parts()[1].positions, vec![1, 2, 4]);
        assert_eq!(split.part_of_events(), vec![0, 1, 1, 0, 1]);
        assert!(split.reaches_a_leader());
        assert!(!split.has_unrouted_events());
    }

    #[test]
    fn unknown_and_unreachable_leaders_share_the_unrouted_part() {
        // None of the pinned tenants is in shard 4 of 4: find one.
        let shard_four = (0..100)
            .map(|index| format!("ten_x{index}"))
            .find(|tenant_id| shard_of_key(tenant_key(tenant_id), 4) == 4)
            .unwrap();
        let tenants = [shard_four.as_str(), "ten_0005", "acme"];
        let split = BatchSplit::plan(&map(), keys(&tenants).into_iter(), |endpoint| {
            endpoint != N2
        });
        assert_eq!(leaders(&split), vec![None, Some(N1)]);
        assert_eq!(split.parts()[0].positions, vec![0, 1]);
        assert!(split.has_unrouted_events());

        let nowhere = BatchSplit::plan(&map(), keys(&tenants).into_iter(), |_| false);
        assert!(!nowhere.reaches_a_leader());
        assert_eq!(nowhere.parts().len(), 1);
    }

    fn receipt(event_id: &str) -> RecordOutcome {
        RecordOutcome {
            outcome: Some(Outcome::Receipt(Receipt {
                event_id: event_id.to_string(),
                deduplicated: event_id.ends_with("dup"),
                ..Receipt::default()
            })),
        }
    }

    fn refused(index: u32, event_id: &str) -> RecordOutcome {
        RecordOutcome {
            outcome: Some(Outcome::Error(EventError {
                index,
                event_id: event_id.to_string(),
                code: "INVALID_ARGUMENT".to_string(),
                field: "action".to_string(),
                message: "bad".to_string(),
            })),
        }
    }

    fn answered(outcomes: Vec<RecordOutcome>, retry_after_ms: u32) -> PartAnswer {
        PartAnswer::Answered(RecordBatchResponse {
            outcomes,
            retry_after_ms,
            ..RecordBatchResponse::default()
        })
    }

    fn event_id_at(response: &RecordBatchResponse, position: usize) -> (&str, Option<u32>) {
        match &response.outcomes[position].outcome {
            Some(Outcome::Receipt(receipt)) => (&receipt.event_id, None),
            Some(Outcome::Error(error)) => (&error.event_id, Some(error.index)),
            None => panic!("no outcome at {position}"),
        }
    }

    #[test]
    fn answers_are_merged_in_the_callers_order() {
        let tenants = ["ten_0005", "ten_0001", "acme", "ten_0005", "ten_0002"];
        let split = BatchSplit::plan(&map(), keys(&tenants).into_iter(), |_| true);
        let merged = split
            .merge(vec![
                answered(vec![receipt("e0"), refused(1, "e3")], 0),
                answered(vec![receipt("e1"), receipt("e2dup"), receipt("e4")], 40),
            ])
            .unwrap();
        let order: Vec<(&str, Option<u32>)> = (0..5)
            .map(|position| event_id_at(&merged, position))
            .collect();
        assert_eq!(
            order,
            vec![
                ("e0", None),
                ("e1", None),
                ("e2dup", None),
                ("e3", Some(3)),
                ("e4", None)
            ]
        );
        assert_eq!(
            (merged.accepted, merged.deduplicated, merged.rejected),
            (3, 1, 1)
        );
        assert_eq!(merged.retry_after_ms, 40);
    }

    #[test]
    fn a_failed_part_leaves_its_status_on_its_events() {
        let tenants = ["ten_0005", "acme", "ten_0005"];
        let split = BatchSplit::plan(&map(), keys(&tenants).into_iter(), |_| true);
        let merged = split
            .merge(vec![
                PartAnswer::Failed {
                    status: Status::unavailable("leader gone"),
                    event_ids: vec!["e0".to_string(), "e2".to_string()],
                },
                answered(vec![receipt("e1")], 0),
            ])
            .unwrap();
        assert_eq!((merged.accepted, merged.rejected), (1, 2));
        let Some(Outcome::Error(error)) = &merged.outcomes[2].outcome else {
            panic!("expected an error at 2");
        };
        assert_eq!(
            (error.index, error.event_id.as_str(), error.code.as_str()),
            (2, "e2", "UNAVAILABLE")
        );
        assert_eq!(error.message, "leader gone");

        // Nothing answered at all: the call fails, as an unsplit batch would.
        let failure = split
            .merge(vec![
                PartAnswer::Failed {
                    status: Status::unavailable("first"),
                    event_ids: vec!["e0".to_string(), "e2".to_string()],
                },
                PartAnswer::Failed {
                    status: Status::unavailable("second"),
                    event_ids: vec!["e1".to_string()],
                },
            ])
            .unwrap_err();
        assert!(
            matches!(&failure, Error::Rpc(status) if status.message() == "first"),
            "{failure:?}"
        );
    }

    #[test]
    fn a_wrong_outcome_count_is_a_protocol_error() {
        let tenants = ["ten_0005", "acme"];
        let split = BatchSplit::plan(&map(), keys(&tenants).into_iter(), |_| true);
        let error = split
            .merge(vec![answered(vec![], 0), answered(vec![receipt("e1")], 0)])
            .unwrap_err();
        assert!(matches!(error, Error::Protocol(_)), "{error:?}");
    }
}
