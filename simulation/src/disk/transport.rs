//! The real-disk mode's network: an in-memory [`PeerTransport`] that hands each Raft
//! message to the target node's own `RaftService::handle` (the receiving checks,
//! decoding and openraft call of `traild`), with seeded faults on the way.
//!
//! Faults: loss of a request or of its reply (the sender sees an error; a lost reply
//! means the receiver did act), a delay each way (messages overtake each other), and
//! partitions. A node that is down, or across a partition, is refused at once, as a
//! refused TCP connection is.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tonic::Status;
use trail_node::consensus::network::{PeerTransport, RaftCall, RaftService, TransportFuture};
use trail_node::consensus::NodeId;
use trail_proto::raft::RaftRequest;

/// The network's faults, as the fault schedule sets them.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Probability that a request, and separately its reply, is lost.
    pub drop: f64,
    /// Each way, a uniform delay in microseconds.
    pub delay_us: (u64, u64),
    /// Nodes cut off from the others (both ways), if any.
    pub partition: Option<BTreeSet<NodeId>>,
}

impl Faults {
    fn cuts(&self, from: NodeId, to: NodeId) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|side| side.contains(&from) != side.contains(&to))
    }
}

/// The nodes that are up, and the faults between them.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Mutex<RouterState>>,
}

struct RouterState {
    services: BTreeMap<NodeId, Arc<RaftService>>,
    faults: Faults,
    rng: StdRng,
    pub delivered: u64,
    pub lost: u64,
}

impl Router {
    pub fn new(seed: u64) -> Router {
        Router {
            inner: Arc::new(Mutex::new(RouterState {
                services: BTreeMap::new(),
                faults: Faults::default(),
                rng: StdRng::seed_from_u64(seed ^ 0x006e_6574_776f_726b),
                delivered: 0,
                lost: 0,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.inner.lock().expect("router lock")
    }

    /// Node `node` is up and receives through `service`.
    pub fn attach(&self, node: NodeId, service: Arc<RaftService>) {
        self.lock().services.insert(node, service);
    }

    /// Node `node` is down: messages to it are refused.
    pub fn detach(&self, node: NodeId) {
        self.lock().services.remove(&node);
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// `(delivered, lost)` messages so far.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.lock();
        (state.delivered, state.lost)
    }

    /// Node `from`'s transport.
    pub fn transport(&self, from: NodeId, members: BTreeSet<NodeId>) -> Arc<dyn PeerTransport> {
        Arc::new(Link {
            from,
            members,
            router: self.clone(),
        })
    }
}

/// One node's sending side.
struct Link {
    from: NodeId,
    members: BTreeSet<NodeId>,
    router: Router,
}

/// What happens to one message, drawn when it is sent.
struct Fate {
    service: Option<Arc<RaftService>>,
    drop_request: bool,
    drop_reply: bool,
    request_delay: Duration,
    reply_delay: Duration,
}

impl Link {
    fn fate(&self, target: NodeId) -> Fate {
        let mut state = self.router.lock();
        let faults = state.faults.clone();
        let service = if faults.cuts(self.from, target) {
            None
        } else {
            state.services.get(&target).cloned()
        };
        let (min_us, max_us) = faults.delay_us;
        let rng = &mut state.rng;
        let drop_request = faults.drop > 0.0 && rng.gen_bool(faults.drop);
        let drop_reply = faults.drop > 0.0 && rng.gen_bool(faults.drop);
        let request_delay = Duration::from_micros(rng.gen_range(min_us..=max_us.max(min_us)));
        let reply_delay = Duration::from_micros(rng.gen_range(min_us..=max_us.max(min_us)));
        if service.is_some() {
            state.delivered += 1;
        }
        if drop_request || drop_reply {
            state.lost += 1;
        }
        Fate {
            service,
            drop_request,
            drop_reply,
            request_delay,
            reply_delay,
        }
    }
}

impl PeerTransport for Link {
    fn knows(&self, target: NodeId) -> bool {
        target != self.from && self.members.contains(&target)
    }

    fn send(
        &self,
        target: NodeId,
        call: RaftCall,
        request: RaftRequest,
        _timeout: Duration,
    ) -> TransportFuture {
        let fate = self.fate(target);
        Box::pin(async move {
            let Some(service) = fate.service else {
                return Err(Status::unavailable(format!(
                    "node {target}: connection refused"
                )));
            };
            tokio::time::sleep(fate.request_delay).await;
            if fate.drop_request {
                return Err(Status::unavailable(format!("node {target}: request lost")));
            }
            let reply = service.handle(call, request).await;
            tokio::time::sleep(fate.reply_delay).await;
            if fate.drop_reply {
                return Err(Status::unavailable(format!("node {target}: reply lost")));
            }
            reply
        })
    }
}
