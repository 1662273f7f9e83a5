//! The turmoil harness's workload: a client host that records batches over
//! `trail.v1.Trail/RecordBatch` and reads over `Tail`, through tonic channels on
//! turmoil's TCP, with the same ids after an unknown outcome (as the SDK retries).
//!
//! A client remembers, per group, the node it believes leads, and follows the
//! `x-trail-leader` hint of a node that does not. Its oracle is the group's checker
//! (`raft/check.rs`): every receipt and every read goes there.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use trail_proto::v1;
use trail_proto::v1::trail_client::TrailClient;

use super::api::{group_of, LEADER_KEY};
use super::transport::probe_misroute;
use super::{io, Plan, EPOCH_NS, NODES};
use crate::raft::check::Checker;

/// Batches awaiting an acknowledgement, per client, at most.
const PENDING_BATCHES_MAX: usize = 4;

pub struct Client {
    pub id: usize,
    pub seed: u64,
    pub plan: Plan,
    pub checkers: BTreeMap<u64, Checker>,
    /// Set when the liveness phase starts: no new work, only the pending retries.
    pub draining: Arc<AtomicBool>,
    /// What the client saw; read by the driver at the end.
    pub stats: Arc<std::sync::Mutex<ClientStats>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct ClientStats {
    pub appends_acked: u64,
    pub unknown_outcomes: u64,
    pub redirects: u64,
    pub reads: u64,
    /// Raft messages sent to the wrong node or group, and refused by the receiver.
    pub misroutes_refused: u64,
}

enum Sent {
    Acked(Vec<v1::Receipt>),
    Unknown,
}

impl Client {
    fn record(&self, group: u64, line: &str) {
        self.checkers[&group].record(&format!("client {} {line}", self.id));
    }

    pub async fn run(self) -> ::turmoil::Result {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let channels: BTreeMap<u64, Channel> = (1..=NODES)
            .map(|node| {
                (
                    node,
                    io::channel(&format!("n{node}"), self.plan.client_timeout),
                )
            })
            .collect();
        let mut leaders: BTreeMap<u64, u64> = BTreeMap::new();
        let mut pending: Vec<Vec<v1::Event>> = Vec::new();
        let mut next_event = 0u64;
        if self.id == 0 {
            self.probe_misroutes(&channels).await;
        }
        loop {
            let draining = self.draining.load(Ordering::SeqCst);
            if draining && pending.is_empty() {
                return Ok(());
            }
            let think = rng.gen_range(self.plan.think_ms.0..=self.plan.think_ms.1);
            tokio::time::sleep(Duration::from_millis(think)).await;
            let retry = !pending.is_empty()
                && (draining || pending.len() >= PENDING_BATCHES_MAX || rng.gen_bool(0.4));
            if retry {
                let index = rng.gen_range(0..pending.len());
                let events = pending[index].clone();
                if self
                    .append(&events, &channels, &mut leaders, &mut rng)
                    .await
                {
                    pending.swap_remove(index);
                }
                continue;
            }
            let tenant = format!("ten_{}", rng.gen_range(0..self.plan.tenants));
            if rng.gen_bool(self.plan.read_rate) {
                self.read(&tenant, &channels, &mut leaders, &mut rng).await;
                continue;
            }
            let count = rng.gen_range(1..=self.plan.batch_events_max);
            let mut events = Vec::with_capacity(count);
            for _ in 0..count {
                let id = format!("c{}-{next_event}", self.id);
                next_event += 1;
                self.checkers[&group_of(&tenant)].on_sent(&tenant, &id);
                events.push(event(&tenant, &id, &mut rng));
            }
            if !self
                .append(&events, &channels, &mut leaders, &mut rng)
                .await
            {
                pending.push(events);
            }
        }
    }

    fn target(&self, group: u64, leaders: &BTreeMap<u64, u64>, rng: &mut StdRng) -> u64 {
        leaders
            .get(&group)
            .copied()
            .unwrap_or_else(|| rng.gen_range(1..=NODES))
    }

    /// Follows a non-leader's hint, or forgets the leader after a failure.
    fn redirect(&self, group: u64, status: &tonic::Status, leaders: &mut BTreeMap<u64, u64>) {
        let hint = status
            .metadata()
            .get(LEADER_KEY)
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<u64>().ok());
        match hint {
            Some(leader) => {
                leaders.insert(group, leader);
                self.stats.lock().expect("stats").redirects += 1;
            }
            None => {
                leaders.remove(&group);
            }
        }
    }

    /// Sends one batch; true when acknowledged (receipts go to the oracle).
    async fn append(
        &self,
        events: &[v1::Event],
        channels: &BTreeMap<u64, Channel>,
        leaders: &mut BTreeMap<u64, u64>,
        rng: &mut StdRng,
    ) -> bool {
        let group = group_of(&events[0].tenant_id);
        let target = self.target(group, leaders, rng);
        let mut client = TrailClient::new(channels[&target].clone());
        let request = v1::RecordBatchRequest {
            events: events.to_vec(),
        };
        let sent = tokio::time::timeout(self.plan.client_timeout, client.record_batch(request));
        let outcome = match sent.await {
            Ok(Ok(response)) => {
                leaders.insert(group, target);
                let receipts: Vec<v1::Receipt> = response
                    .into_inner()
                    .outcomes
                    .into_iter()
                    .filter_map(|outcome| match outcome.outcome {
                        Some(v1::record_outcome::Outcome::Receipt(receipt)) => Some(receipt),
                        _ => None,
                    })
                    .collect();
                Sent::Acked(receipts)
            }
            Ok(Err(status)) => {
                self.redirect(group, &status, leaders);
                Sent::Unknown
            }
            Err(_elapsed) => {
                leaders.remove(&group);
                Sent::Unknown
            }
        };
        let Sent::Acked(receipts) = outcome else {
            self.record(
                group,
                &format!(
                    "append {} events via n{target}: unknown outcome",
                    events.len()
                ),
            );
            self.stats.lock().expect("stats").unknown_outcomes += 1;
            return false;
        };
        self.record(
            group,
            &format!("append {} events via n{target}: acked", events.len()),
        );
        let checker = &self.checkers[&group];
        if receipts.len() != events.len() {
            checker.fail(format!(
                "{} receipts for {} events",
                receipts.len(),
                events.len()
            ));
            return true;
        }
        for (event, receipt) in events.iter().zip(&receipts) {
            let Ok(hash) = <[u8; 32]>::try_from(receipt.leaf_hash.as_slice()) else {
                checker.fail(format!("receipt for {} has no leaf hash", event.event_id));
                continue;
            };
            if receipt.event_id != event.event_id || receipt.tenant_id != event.tenant_id {
                checker.fail(format!(
                    "receipt for {} names another event",
                    event.event_id
                ));
            }
            checker.check(checker.on_ack(&event.tenant_id, &event.event_id, receipt.seq, hash));
        }
        self.stats.lock().expect("stats").appends_acked += 1;
        true
    }

    /// A linearizable read of a tenant's last seq; it must see every acknowledged write
    /// of that tenant from before it started.
    async fn read(
        &self,
        tenant: &str,
        channels: &BTreeMap<u64, Channel>,
        leaders: &mut BTreeMap<u64, u64>,
        rng: &mut StdRng,
    ) {
        let group = group_of(tenant);
        let target = self.target(group, leaders, rng);
        let checker = &self.checkers[&group];
        let floor = checker.acked_max_seq(tenant);
        let mut client = TrailClient::new(channels[&target].clone());
        let request = v1::TailRequest {
            tenant_id: tenant.to_string(),
            after_seq: 0,
            limit: 1,
            stream: String::new(),
            ..v1::TailRequest::default()
        };
        let sent = tokio::time::timeout(self.plan.client_timeout, client.tail(request));
        match sent.await {
            Ok(Ok(response)) => {
                let seen = response.into_inner().last_seq;
                self.record(
                    group,
                    &format!("read {tenant} via n{target}: seq {seen} (floor {floor})"),
                );
                checker.check(checker.on_read(target, tenant, floor, seen));
                self.stats.lock().expect("stats").reads += 1;
            }
            Ok(Err(status)) => {
                self.record(
                    group,
                    &format!("read {tenant} via n{target}: {}", status.code()),
                );
                self.redirect(group, &status, leaders);
            }
            Err(_elapsed) => {
                self.record(group, &format!("read {tenant} via n{target}: no answer"));
                leaders.remove(&group);
            }
        }
    }

    /// Raft messages sent to the wrong node, and for a group the node does not host,
    /// must be refused. Tries until node 2 answers both (it may be down or cut off).
    async fn probe_misroutes(&self, channels: &BTreeMap<u64, Channel>) {
        let cases = [
            (1, 3, tonic::Code::InvalidArgument, "a message for node 3"),
            (99, 2, tonic::Code::NotFound, "a message for group 99"),
        ];
        for (group, target, expected, what) in cases {
            loop {
                let refused = tokio::time::timeout(
                    self.plan.client_timeout,
                    probe_misroute(channels[&2].clone(), group, target, 1),
                )
                .await;
                match refused {
                    Ok(Some(code)) if code == expected => {
                        self.record(1, &format!("probe: node 2 refused {what}: {code:?}"));
                        self.stats.lock().expect("stats").misroutes_refused += 1;
                        break;
                    }
                    Ok(None) => {
                        self.checkers[&1].fail(format!("node 2 took {what}"));
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
    }
}

fn event(tenant: &str, event_id: &str, rng: &mut StdRng) -> v1::Event {
    let user = rng.gen_range(0..5u32);
    let occurred_at_ns = EPOCH_NS + i64::from(rng.gen_range(0..1_000_000u32));
    v1::Event {
        event_id: event_id.to_string(),
        tenant_id: tenant.to_string(),
        actor: Some(v1::Actor {
            r#type: v1::ActorType::User as i32,
            id: format!("usr_{user}"),
            email: String::new(),
            name: String::new(),
        }),
        action: ["auth.login", "doc.read", "doc.delete"][rng.gen_range(0..3)].to_string(),
        resource: Some(v1::Resource {
            r#type: "session".to_string(),
            id: format!("ses_{}", rng.gen_range(0..1000u32)),
        }),
        result: if rng.gen_bool(0.9) {
            v1::Result::Success as i32
        } else {
            v1::Result::Failure as i32
        },
        occurred_at: Some(prost_types::Timestamp {
            seconds: occurred_at_ns / 1_000_000_000,
            nanos: (occurred_at_ns % 1_000_000_000) as i32,
        }),
        request_id: String::new(),
        session_id: String::new(),
        ip_address: String::new(),
        user_agent: String::new(),
        metadata_json: String::new(),
        subject_id: format!("usr_{user}"),
    }
}
