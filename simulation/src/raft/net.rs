//! The in-memory network between replicas, with seeded, composable faults.
//!
//! Every RPC draws its fate from the run's network RNG, in the order the RPCs are sent:
//! a request delay and a response delay (so messages overtake each other: reordering),
//! loss of the request or of the response (the sender sees a timeout; a lost response
//! means the receiver did act), and duplication (a copy of the request is delivered
//! again later, its answer thrown away). Partitions block directed links; a crashed
//! replica, or one across a partition, is `Unreachable` (never `NetworkError`, which
//! makes openraft retry at once).
//!
//! A delivered request runs as a task of the receiving replica's incarnation, so a crash
//! of the receiver loses it, and its reply, as a real crash would.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetwork, RaftNetworkFactory};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::check::Checker;
use super::rt::{spawn_in, NodeKey};
use super::{Raft, SimConfig};

/// Copies of requests in flight at once, at most (every queue is bounded).
const DUPLICATES_IN_FLIGHT_MAX: usize = 32;

/// One composable network fault. Every message passes through the router's filters in
/// order; each may cut the link or shape the message's fate, drawing from the
/// network's RNG.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Loses each request, and separately each response, with this probability.
    Drop(f64),
    /// Delays each request and each response by a uniform draw (messages overtake
    /// each other: reordering). Delays of several filters add up.
    Delay { min_us: u64, max_us: u64 },
    /// Delivers a copy of a request again, later, with this probability.
    Duplicate(f64),
    /// Cuts every link between `side` and the other replicas, both ways.
    Partition(BTreeSet<u64>),
    /// Cuts one replica off from every other.
    Isolate(u64),
}

impl Filter {
    fn cuts(&self, from: u64, to: u64) -> bool {
        match self {
            Filter::Partition(side) => side.contains(&from) != side.contains(&to),
            Filter::Isolate(node) => (from == *node) != (to == *node),
            _ => false,
        }
    }

    fn shape(&self, fate: &mut Fate, rng: &mut StdRng) {
        match self {
            Filter::Drop(rate) => {
                fate.drop_request |= rng.gen_bool(*rate);
                fate.drop_response |= rng.gen_bool(*rate);
            }
            Filter::Delay { min_us, max_us } => {
                fate.request_delay += Duration::from_micros(rng.gen_range(*min_us..=*max_us));
                fate.response_delay += Duration::from_micros(rng.gen_range(*min_us..=*max_us));
            }
            Filter::Duplicate(rate) => {
                if rng.gen_bool(*rate) {
                    let after = Duration::from_micros(rng.gen_range(0..=10_000));
                    fate.duplicate_after =
                        Some(fate.duplicate_after.unwrap_or_default().max(after));
                }
            }
            Filter::Partition(_) | Filter::Isolate(_) => {}
        }
    }

    pub fn is_cut(&self) -> bool {
        matches!(self, Filter::Partition(_) | Filter::Isolate(_))
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub unreachable: u64,
}

struct NetState {
    /// The running incarnation of each replica, `None` while it is down.
    nodes: BTreeMap<u64, Option<(NodeKey, Raft)>>,
    filters: Vec<Filter>,
    rng: StdRng,
    duplicates_in_flight: usize,
    stats: NetStats,
    backoff: Duration,
}

impl NetState {
    /// The receiver, if it runs and no filter cuts the link.
    fn linked(&self, from: u64, to: u64) -> Option<(NodeKey, Raft)> {
        if self.filters.iter().any(|filter| filter.cuts(from, to)) {
            return None;
        }
        self.nodes.get(&to).cloned().flatten()
    }
}

#[derive(Clone)]
pub struct Router {
    inner: Arc<Mutex<NetState>>,
    checker: Checker,
}

#[derive(Default)]
struct Fate {
    request_delay: Duration,
    response_delay: Duration,
    drop_request: bool,
    drop_response: bool,
    duplicate_after: Option<Duration>,
}

impl Router {
    pub fn new(seed: u64, filters: Vec<Filter>, backoff: Duration, checker: Checker) -> Router {
        Router {
            inner: Arc::new(Mutex::new(NetState {
                nodes: BTreeMap::new(),
                filters,
                rng: StdRng::seed_from_u64(seed),
                duplicates_in_flight: 0,
                stats: NetStats::default(),
                backoff,
            })),
            checker,
        }
    }

    fn lock(&self) -> MutexGuard<'_, NetState> {
        self.inner.lock().expect("router lock")
    }

    pub fn set_node(&self, node: u64, running: Option<(NodeKey, Raft)>) {
        self.lock().nodes.insert(node, running);
    }

    pub fn node(&self, node: u64) -> Option<(NodeKey, Raft)> {
        self.lock().nodes.get(&node).cloned().flatten()
    }

    pub fn add_filter(&self, filter: Filter) {
        self.checker.record(&format!("network + {filter:?}"));
        self.lock().filters.push(filter);
    }

    /// Removes the filters `which` selects.
    pub fn remove_filters(&self, which: impl Fn(&Filter) -> bool) {
        let mut state = self.lock();
        let before = state.filters.len();
        state.filters.retain(|filter| !which(filter));
        let removed = before - state.filters.len();
        drop(state);
        if removed > 0 {
            self.checker.record(&format!("network - {removed} filters"));
        }
    }

    pub fn set_filters(&self, filters: Vec<Filter>) {
        self.checker.record(&format!("network = {filters:?}"));
        self.lock().filters = filters;
    }

    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    /// Decides what happens to one RPC, when it is sent.
    fn fate(&self, from: u64, to: u64) -> Option<Fate> {
        let mut state = self.lock();
        state.stats.sent += 1;
        if state.linked(from, to).is_none() {
            state.stats.unreachable += 1;
            return None;
        }
        let mut fate = Fate::default();
        let NetState { filters, rng, .. } = &mut *state;
        for filter in filters.iter() {
            filter.shape(&mut fate, rng);
        }
        if fate.duplicate_after.is_some() {
            if state.duplicates_in_flight < DUPLICATES_IN_FLIGHT_MAX {
                state.duplicates_in_flight += 1;
                state.stats.duplicated += 1;
            } else {
                fate.duplicate_after = None;
            }
        }
        if fate.drop_request || fate.drop_response {
            state.stats.dropped += 1;
        }
        Some(fate)
    }

    /// Sends one RPC from `from` to `to`, and returns what the sender sees.
    async fn rpc<Req, Resp, E, F, Fut>(
        &self,
        kind: String,
        from: u64,
        to: u64,
        request: Req,
        option: &RPCOption,
        call: F,
    ) -> Result<Resp, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        Req: Clone + Send + 'static,
        Resp: Send + 'static,
        E: std::error::Error + Send + 'static,
        F: Fn(Raft, Req) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<Resp, RaftError<u64, E>>> + Send + 'static,
    {
        let lost_after = option.soft_ttl();
        let Some(Fate {
            request_delay,
            response_delay,
            drop_request,
            drop_response,
            duplicate_after,
        }) = self.fate(from, to)
        else {
            self.checker
                .record(&format!("net {kind} {from}->{to} unreachable"));
            tokio::time::sleep(Duration::from_millis(1)).await;
            return Err(unreachable(from, to));
        };
        if let Some(after) = duplicate_after {
            let router = self.clone();
            let kind = kind.clone();
            let copy = request.clone();
            let call = call.clone();
            tokio::spawn(async move {
                tokio::time::sleep(request_delay + after).await;
                let target = router.lock().linked(from, to);
                if let Some((key, raft)) = target {
                    router
                        .checker
                        .record(&format!("net {kind} {from}->{to} duplicate delivered"));
                    drop(spawn_in(key, async move {
                        let _ = call(raft, copy).await;
                    }));
                }
                router.lock().duplicates_in_flight -= 1;
            });
        }
        tokio::time::sleep(request_delay).await;
        let target = self.lock().linked(from, to);
        let Some((key, raft)) = target.filter(|_| !drop_request) else {
            self.checker
                .record(&format!("net {kind} {from}->{to} lost"));
            tokio::time::sleep(lost_after.saturating_sub(request_delay)).await;
            return Err(network_error("request lost"));
        };
        self.checker
            .record(&format!("net {kind} {from}->{to} delivered"));
        let (tx, rx) = tokio::sync::oneshot::channel();
        drop(spawn_in(key, async move {
            let _ = tx.send(call(raft, request).await);
        }));
        let reply = rx.await;
        tokio::time::sleep(response_delay).await;
        let linked_back = !self
            .lock()
            .filters
            .iter()
            .any(|filter| filter.cuts(to, from));
        match reply {
            Err(_) => {
                self.checker
                    .record(&format!("net {kind} {from}->{to} receiver crashed"));
                Err(unreachable(from, to))
            }
            Ok(_) if drop_response || !linked_back => {
                self.checker
                    .record(&format!("net {kind} {from}->{to} response lost"));
                tokio::time::sleep(lost_after.saturating_sub(request_delay + response_delay)).await;
                Err(network_error("response lost"))
            }
            Ok(Err(error)) => {
                self.checker
                    .record(&format!("net {kind} {from}->{to} remote error"));
                Err(RPCError::RemoteError(RemoteError::new(to, error)))
            }
            Ok(Ok(response)) => {
                self.checker.record(&format!("net {kind} {from}->{to} ok"));
                Ok(response)
            }
        }
    }
}

#[derive(Debug)]
struct LinkError(String);

impl std::fmt::Display for LinkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LinkError {}

fn unreachable<E: std::error::Error>(from: u64, to: u64) -> RPCError<u64, BasicNode, E> {
    RPCError::Unreachable(Unreachable::new(&LinkError(format!(
        "replica {to} is down or cut off from {from}"
    ))))
}

fn network_error<E: std::error::Error>(what: &str) -> RPCError<u64, BasicNode, E> {
    RPCError::Network(NetworkError::new(&LinkError(what.to_string())))
}

/// One replica's side of the network.
pub struct NetworkFactory {
    pub from: u64,
    pub router: Router,
}

pub struct Connection {
    from: u64,
    target: u64,
    router: Router,
}

impl RaftNetworkFactory<SimConfig> for NetworkFactory {
    type Network = Connection;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Connection {
        Connection {
            from: self.from,
            target,
            router: self.router.clone(),
        }
    }
}

impl RaftNetwork<SimConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let kind = match (rpc.entries.first(), rpc.entries.last()) {
            (Some(first), Some(last)) => format!(
                "append {} prev {} [{}..={}]",
                rpc.vote,
                rpc.prev_log_id.map_or("-".to_string(), |id| id.to_string()),
                first.log_id.index,
                last.log_id.index
            ),
            _ => format!("heartbeat {}", rpc.vote),
        };
        self.router
            .rpc(
                kind,
                self.from,
                self.target,
                rpc,
                &option,
                |raft: Raft, rpc| async move { raft.append_entries(rpc).await },
            )
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<SimConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        self.router
            .rpc(
                format!("snapshot {} offset {}", rpc.meta.snapshot_id, rpc.offset),
                self.from,
                self.target,
                rpc,
                &option,
                |raft: Raft, rpc| async move { raft.install_snapshot(rpc).await },
            )
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        self.router
            .rpc(
                format!("vote {}", rpc.vote),
                self.from,
                self.target,
                rpc,
                &option,
                |raft: Raft, rpc| async move { raft.vote(rpc).await },
            )
            .await
    }

    fn backoff(&self) -> Backoff {
        let every = self.router.lock().backoff;
        Backoff::new(std::iter::repeat(every))
    }
}
