//! A node as one of a cluster (`--peers`): the cluster map, where it is kept, how data
//! shards are placed on nodes, and the clients a node forwards requests with.
//!
//! The map lives in the metadata group (shard 0, a replica on every node) as the
//! latest event of the reserved tenant [`CLUSTER_TENANT`]: the cluster's own layout is
//! kept in a hash-chained, checkpointed log like everything else, and a node reads it
//! from its local replica. A tenant id cannot start with `_`, so no producer can write
//! there, and tenants are never routed to shard 0.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};
use trail_proto::v1::{self, trail_client::TrailClient};

use crate::consensus::NodeId;
use crate::ledger::routing::ShardId;
use crate::ledger::{ActorKind, EventRecord, Outcome};
use crate::shard::reader;
use crate::storage::ShardKeyspaces;

pub use crate::ledger::routing::CLUSTER_TENANT;
/// The metadata group.
pub const META_SHARD: ShardId = 0;
/// The event id of the first map: a second `cluster init` is deduplicated onto it.
const INIT_EVENT_ID: &str = "cluster-map-1";

pub const CLUSTER_SHARDS_MAX: u32 = 1_024;

/// Request metadata naming the node that forwarded a request; a forwarded request is
/// never forwarded again (no loops while leadership moves).
pub const FORWARDED_HEADER: &str = "trail-forwarded";
/// Response metadata: the gRPC endpoint of the tenant's shard leader, so the SDK can
/// go there directly next time.
pub const LEADER_HEADER: &str = "trail-leader";

/// The cluster's layout.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMap {
    pub cluster_id: String,
    /// Node id -> gRPC `host:port` (clients).
    pub nodes: BTreeMap<NodeId, String>,
    /// Node id -> peer listener `host:port` (Raft). Empty in a map recorded before
    /// peer listeners existed; such a map's nodes use the default (gRPC port + 2).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub raft_nodes: BTreeMap<NodeId, String>,
    pub shards: u32,
    pub replicas: u32,
    /// Replicas of data shard `s` at index `s - 1`; the first is the preferred leader.
    pub placement: Vec<Vec<NodeId>>,
    /// The checkpoint key every node signs with (C2SP verifier key).
    pub verifier_key: String,
    /// The map's incarnation: 1 when the cluster is initialized, one more with every
    /// change of placement. A data shard's replicas stamp their snapshots with it, and
    /// refuse a snapshot of an earlier epoch (`storage::snapshot_name`).
    #[serde(default = "first_epoch")]
    pub epoch: u64,
}

/// The epoch of the map `cluster init` records.
pub const FIRST_EPOCH: u64 = 1;

fn first_epoch() -> u64 {
    FIRST_EPOCH
}

impl ClusterMap {
    /// Places `shards` data shards of `replicas` replicas each on `nodes`: shard `s`
    /// on the `replicas` nodes after position `s - 1` of the sorted node ids, so the
    /// replicas and the preferred leaders (the first of each) are spread evenly.
    pub fn place(
        cluster_id: &str,
        nodes: &BTreeMap<NodeId, String>,
        raft_nodes: &BTreeMap<NodeId, String>,
        shards: u32,
        replicas: u32,
        verifier_key: &str,
    ) -> Result<ClusterMap, String> {
        if !(1..=CLUSTER_SHARDS_MAX).contains(&shards) {
            return Err(format!(
                "shards: {shards} is out of range; use 1 to {CLUSTER_SHARDS_MAX}"
            ));
        }
        if replicas == 0 || replicas.is_multiple_of(2) {
            return Err(format!(
                "replicas: {replicas} is not an odd number (1, 3 or 5): a Raft group of \
                 an even size tolerates no more failures than one replica fewer"
            ));
        }
        if replicas as usize > nodes.len() {
            return Err(format!(
                "replicas: {replicas} is more than the cluster's {} nodes",
                nodes.len()
            ));
        }
        let ids: Vec<NodeId> = nodes.keys().copied().collect();
        let placement = (0..shards as usize)
            .map(|index| {
                (0..replicas as usize)
                    .map(|k| ids[(index + k) % ids.len()])
                    .collect()
            })
            .collect();
        Ok(ClusterMap {
            cluster_id: cluster_id.to_string(),
            nodes: nodes.clone(),
            raft_nodes: raft_nodes.clone(),
            shards,
            replicas,
            placement,
            verifier_key: verifier_key.to_string(),
            epoch: FIRST_EPOCH,
        })
    }

    pub fn replicas_of(&self, shard: ShardId) -> &[NodeId] {
        shard
            .checked_sub(1)
            .and_then(|index| self.placement.get(index as usize))
            .map_or(&[], Vec::as_slice)
    }

    /// The data shards with a replica on `node`.
    pub fn shards_on(&self, node: NodeId) -> Vec<ShardId> {
        (1..=self.shards)
            .filter(|&shard| self.replicas_of(shard).contains(&node))
            .collect()
    }

    pub fn to_proto(&self) -> v1::ClusterMap {
        v1::ClusterMap {
            cluster_id: self.cluster_id.clone(),
            nodes: self
                .nodes
                .iter()
                .map(|(&node_id, addr)| v1::ClusterNode {
                    node_id,
                    grpc_addr: addr.clone(),
                    peer_addr: self.raft_nodes.get(&node_id).cloned().unwrap_or_default(),
                })
                .collect(),
            shards: self.shards,
            replicas: self.replicas,
            placement: self
                .placement
                .iter()
                .enumerate()
                .map(|(index, replicas)| v1::ShardPlacement {
                    shard_id: index as u32 + 1,
                    replicas: replicas.clone(),
                })
                .collect(),
            verifier_key: self.verifier_key.clone(),
            epoch: self.epoch,
        }
    }

    /// The event that records this map in shard 0.
    pub fn to_record(&self, occurred_at_ns: i64, requested_by: &str) -> EventRecord {
        EventRecord {
            event_id: INIT_EVENT_ID.to_string(),
            tenant_id: CLUSTER_TENANT.to_string(),
            actor_kind: ActorKind::Service,
            actor_id: requested_by.to_string(),
            actor_email: String::new(),
            actor_name: String::new(),
            action: "cluster.init".to_string(),
            resource_type: "cluster".to_string(),
            resource_id: self.cluster_id.clone(),
            outcome: Outcome::Success,
            occurred_at_ns,
            request_id: String::new(),
            session_id: String::new(),
            ip_address: String::new(),
            user_agent: String::new(),
            metadata_json: serde_json::to_string(self).expect("a cluster map serializes"),
            subject_id: String::new(),
        }
    }
}

/// The latest cluster map in a replica of shard 0, if the cluster was initialized.
pub fn read_map(meta: &ShardKeyspaces) -> anyhow::Result<Option<ClusterMap>> {
    let Some(state) = reader::tenant_state(meta, CLUSTER_TENANT)? else {
        return Ok(None);
    };
    let last_seq = state.next_seq.saturating_sub(1);
    if last_seq == 0 {
        return Ok(None);
    }
    let (events, _) = reader::tail(meta, CLUSTER_TENANT, last_seq - 1, 1)?;
    let Some(event) = events.into_iter().next() else {
        return Ok(None);
    };
    let map = serde_json::from_str(&event.stored.event.metadata_json).map_err(|error| {
        anyhow::anyhow!("the cluster map (shard 0, seq {last_seq}) does not decode: {error}")
    })?;
    Ok(Some(map))
}

/// Clients of the other nodes, for forwarding requests to shard leaders: gRPC (one
/// lazily connected channel per peer, shared by all requests) and REST (an HTTP/1.1
/// connection pool; a peer's HTTP address is asked from its `Status` once).
#[derive(Clone)]
pub struct Forwarder {
    node: NodeId,
    addrs: Arc<BTreeMap<NodeId, String>>,
    clients: Arc<Mutex<BTreeMap<NodeId, TrailClient<Channel>>>>,
    /// Peer -> `http://host:port` of its REST API.
    http_bases: Arc<Mutex<BTreeMap<NodeId, String>>>,
    http: HttpClient,
    /// What was forwarded (exported in `/metrics`).
    pub counters: Arc<ForwardCounters>,
    /// `Bearer <the nodes' own credential>`, for the calls a node makes of its own
    /// (`access::key::Token::node_credential`).
    node_authorization: String,
}

/// Requests and events this node sent on to other nodes' leaders.
#[derive(Debug, Default)]
pub struct ForwardCounters {
    /// gRPC calls forwarded whole (reads, single records).
    pub grpc_requests: std::sync::atomic::AtomicU64,
    /// Events of batches forwarded (a batch is split per leader node).
    pub batch_events: std::sync::atomic::AtomicU64,
    pub rest_requests: std::sync::atomic::AtomicU64,
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Empty<bytes::Bytes>,
>;

/// A REST response from a peer, as it is passed back to the caller.
pub struct PeerResponse {
    pub status: u16,
    pub content_type: Option<String>,
    pub body: bytes::Bytes,
    /// The peer's REST base URI (`http://host:port`).
    pub base: String,
}

/// Longest REST response taken from a peer (a page of 1,000 events is ~1 MB of JSON).
const FORWARD_HTTP_BYTES_MAX: usize = 64 * 1024 * 1024;
/// How long a forwarded REST request may take.
const FORWARD_HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long asking a peer for its HTTP address may take.
const PEER_STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Responses a forwarded request may carry (a full `Tail` or batch response).
const FORWARD_BYTES_MAX: usize = 64 * 1024 * 1024;

impl Forwarder {
    pub fn new(
        node: NodeId,
        addrs: &BTreeMap<NodeId, String>,
        credential: &crate::access::Token,
    ) -> Forwarder {
        let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let http =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector);
        Forwarder {
            node,
            addrs: Arc::new(addrs.clone()),
            clients: Arc::default(),
            http_bases: Arc::default(),
            http,
            counters: Arc::default(),
            node_authorization: format!("Bearer {}", credential.reveal()),
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    /// `Bearer <the nodes' own credential>`: what a call the node makes of its own (not
    /// on a caller's behalf) authenticates with at another node.
    pub fn node_authorization(&self) -> &str {
        &self.node_authorization
    }

    /// Whether `ip` is the address of a node of the cluster (only they may tell the
    /// address of a client whose request they forwarded).
    pub fn is_peer_ip(&self, ip: std::net::IpAddr) -> bool {
        self.addrs.values().any(|addr| {
            addr.parse::<std::net::SocketAddr>()
                .is_ok_and(|peer| peer.ip() == ip)
        })
    }

    /// The gRPC endpoint URI of `node`.
    pub fn endpoint(&self, node: NodeId) -> Option<String> {
        self.addrs.get(&node).map(|addr| format!("http://{addr}"))
    }

    pub fn client(&self, node: NodeId) -> Option<TrailClient<Channel>> {
        let mut clients = self.clients.lock().expect("forwarder lock");
        if let Some(client) = clients.get(&node) {
            return Some(client.clone());
        }
        let endpoint = Endpoint::from_shared(self.endpoint(node)?)
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            // A leader cut off by a partition keeps its TCP connection open: pings
            // notice it within ~5 s, so a forwarded call fails (and is retried at the
            // new leader) instead of hanging until the caller's deadline.
            .http2_keep_alive_interval(Duration::from_secs(2))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        let client = TrailClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(FORWARD_BYTES_MAX)
            .max_encoding_message_size(FORWARD_BYTES_MAX);
        clients.insert(node, client.clone());
        Some(client)
    }

    /// The REST base URI of `node`, asked from its `Status` the first time: its HTTP
    /// listener's address, with the host it is reached at when it listens on all
    /// interfaces.
    async fn http_base(&self, node: NodeId) -> Result<String, String> {
        if let Some(base) = self.http_bases.lock().expect("forwarder lock").get(&node) {
            return Ok(base.clone());
        }
        let mut client = self
            .client(node)
            .ok_or_else(|| format!("node {node} is not a peer"))?;
        let mut request = tonic::Request::new(v1::StatusRequest {});
        request.set_timeout(PEER_STATUS_TIMEOUT);
        if let Ok(value) = self.node_authorization.parse() {
            request.metadata_mut().insert("authorization", value);
        }
        let status = client
            .status(request)
            .await
            .map_err(|status| {
                format!(
                    "asking node {node} for its HTTP address: {}",
                    status.message()
                )
            })?
            .into_inner();
        let http: std::net::SocketAddr = status.http_addr.parse().map_err(|_| {
            format!(
                "node {node} reports the HTTP address {:?}",
                status.http_addr
            )
        })?;
        let host = if http.ip().is_unspecified() {
            let grpc: std::net::SocketAddr = self.addrs[&node]
                .parse()
                .map_err(|_| format!("node {node}'s address {:?}", self.addrs[&node]))?;
            grpc.ip()
        } else {
            http.ip()
        };
        let base = format!("http://{}", std::net::SocketAddr::new(host, http.port()));
        self.http_bases
            .lock()
            .expect("forwarder lock")
            .insert(node, base.clone());
        Ok(base)
    }

    /// `GET path_and_query` on `node`'s REST API with `headers`. A failure forgets the
    /// node's HTTP address (it may have restarted elsewhere) and says what failed.
    pub async fn http_get(
        &self,
        node: NodeId,
        path_and_query: &str,
        headers: &[(&str, String)],
    ) -> Result<PeerResponse, String> {
        use http_body_util::BodyExt;
        let base = self.http_base(node).await?;
        self.counters
            .rest_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut request = tonic::codegen::http::Request::get(format!("{base}{path_and_query}"));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(http_body_util::Empty::new())
            .map_err(|error| format!("forwarding to {base}: {error}"))?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|error| error.to_string())?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get("content-type")
                .and_then(|value| value.to_str().ok())
                .map(str::to_string);
            let body = http_body_util::Limited::new(response.into_body(), FORWARD_HTTP_BYTES_MAX)
                .collect()
                .await
                .map_err(|error| error.to_string())?
                .to_bytes();
            Ok::<_, String>(PeerResponse {
                status,
                content_type,
                body,
                base: base.clone(),
            })
        };
        let result = match tokio::time::timeout(FORWARD_HTTP_TIMEOUT, exchange).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer in {} s", FORWARD_HTTP_TIMEOUT.as_secs())),
        };
        result.map_err(|error| {
            self.http_bases
                .lock()
                .expect("forwarder lock")
                .remove(&node);
            format!("forwarding to node {node} at {base}: {error}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(count: u64) -> BTreeMap<NodeId, String> {
        (1..=count)
            .map(|id| (id, format!("127.0.0.1:{}", 7400 + id)))
            .collect()
    }

    fn raft_nodes(count: u64) -> BTreeMap<NodeId, String> {
        (1..=count)
            .map(|id| (id, format!("127.0.0.1:{}", 7500 + id)))
            .collect()
    }

    #[test]
    fn placement_spreads_replicas_and_leaders_evenly() {
        let map =
            ClusterMap::place("trail", &nodes(3), &raft_nodes(3), 16, 3, "key").expect("valid");
        assert_eq!(map.placement.len(), 16);
        let mut preferred = BTreeMap::new();
        for replicas in &map.placement {
            let mut sorted = replicas.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 3, "three distinct replicas: {replicas:?}");
            *preferred.entry(replicas[0]).or_insert(0) += 1;
        }
        assert_eq!(preferred.values().copied().collect::<Vec<_>>(), [6, 5, 5]);
        assert_eq!(map.shards_on(2).len(), 16);

        let map =
            ClusterMap::place("trail", &nodes(5), &raft_nodes(5), 10, 3, "key").expect("valid");
        for node in 1..=5 {
            assert_eq!(map.shards_on(node).len(), 6, "node {node}");
        }
        assert_eq!(map.replicas_of(1), [1, 2, 3]);
        assert_eq!(map.replicas_of(5), [5, 1, 2]);
        assert!(map.replicas_of(0).is_empty() && map.replicas_of(11).is_empty());
    }

    #[test]
    fn placement_refuses_bad_sizes_naming_the_field() {
        let error = ClusterMap::place("trail", &nodes(3), &raft_nodes(3), 0, 3, "k")
            .expect_err("no shards");
        assert!(error.starts_with("shards:"), "{error}");
        let error =
            ClusterMap::place("trail", &nodes(3), &raft_nodes(3), 4, 2, "k").expect_err("even");
        assert!(error.starts_with("replicas:"), "{error}");
        let error =
            ClusterMap::place("trail", &nodes(3), &raft_nodes(3), 4, 5, "k").expect_err("too many");
        assert!(error.contains("3 nodes"), "{error}");
    }

    #[test]
    fn the_map_round_trips_through_its_record() {
        let map =
            ClusterMap::place("trail", &nodes(3), &raft_nodes(3), 4, 3, "key").expect("valid");
        let record = map.to_record(1, "trailctl");
        assert_eq!(record.tenant_id, CLUSTER_TENANT);
        let back: ClusterMap = serde_json::from_str(&record.metadata_json).expect("decodes");
        assert_eq!(back, map);
    }

    #[test]
    fn a_map_recorded_before_peer_listeners_still_decodes() {
        let map =
            ClusterMap::place("trail", &nodes(3), &BTreeMap::new(), 4, 3, "key").expect("valid");
        let json = serde_json::to_string(&map).expect("serializes");
        assert!(!json.contains("raft_nodes"), "{json}");
        let back: ClusterMap = serde_json::from_str(&json).expect("decodes");
        assert!(back.raft_nodes.is_empty());
    }
}
