//! The nodes a [`crate::Client`] talks to: the endpoints it was given, in order, with
//! the one calls currently go to, the shard leaders the nodes named, per tenant, and
//! connections to the nodes of the cluster's shard map.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tonic::metadata::MetadataMap;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use trail_proto::v1::trail_client::TrailClient;

use crate::client::{ClientOptions, RESPONSE_BYTES_MAX};
use crate::error::{root_cause, ConnectFailure, Error, Result};
use crate::leader_cache::{LeaderCache, TENANTS_MAX};
use crate::shard_map::NODES_MAX;
use crate::token::{Authorization, Token};

/// Response metadata naming the gRPC endpoint of the node that leads the request's
/// tenant's shard: set by a node that forwarded the request there, or that refuses to
/// serve it and would not forward.
pub(crate) const LEADER_HEADER: &str = "trail-leader";

/// Endpoints one list may hold. A cluster has 3 or 5 nodes; 32 leaves room for a
/// list of every node of a larger deployment while refusing a runaway string.
const ENDPOINTS_MAX: usize = 32;

/// Connections opened to leaders named by the nodes but not in the list. Each is one
/// HTTP/2 connection (a socket and a few hundred KiB of buffers at most); a cluster
/// names at most its own nodes, so 16 is reached only when nodes are replaced often.
const LEARNED_ENDPOINTS_MAX: usize = 16;

/// A connection whose every request carries the client's token.
pub(crate) type AuthChannel = InterceptedService<Channel, Authorization>;

/// One node: its URI (scheme and authority, no trailing slash) and its connection.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) uri: Arc<str>,
    pub(crate) channel: AuthChannel,
    pub(crate) trail: TrailClient<AuthChannel>,
}

impl Node {
    fn new(uri: Arc<str>, channel: Channel, token: Option<&Token>) -> Node {
        let channel = InterceptedService::new(channel, Authorization::new(token));
        let trail = TrailClient::new(channel.clone()).max_decoding_message_size(RESPONSE_BYTES_MAX);
        Node {
            uri,
            channel,
            trail,
        }
    }
}

/// Where one attempt of a call goes, and why: what to update if it fails.
#[derive(Clone, Debug)]
pub(crate) struct Route {
    pub(crate) node: Arc<Node>,
    /// The node's position in the list, if it is listed.
    listed_index: Option<usize>,
    /// Chosen because a node named it the tenant's leader.
    via_leader: bool,
}

/// The listed endpoints, the current one, and the leaders learned per tenant.
#[derive(Debug)]
pub(crate) struct EndpointSet {
    listed: Vec<Arc<Node>>,
    /// Index in `listed` of the endpoint calls go to when no leader is known. Moves to
    /// the next on a failure there, round robin, and stays: the next call does not try
    /// a dead node again first.
    current: AtomicUsize,
    options: ClientOptions,
    routes: Mutex<Routes>,
}

#[derive(Debug)]
struct Routes {
    leaders: LeaderCache,
    /// Connections to named leaders that are not listed, by URI.
    learned: HashMap<Arc<str>, Arc<Node>>,
    /// The nodes of the latest shard map (at most `shard_map::NODES_MAX`): their
    /// connections are kept like those of the leaders some tenant is routed to.
    map_endpoints: Vec<Arc<str>>,
}

/// One entry of the list, ready to dial.
#[derive(Debug)]
struct Dial {
    uri: String,
    endpoint: Endpoint,
}

impl EndpointSet {
    /// Connects to a comma-separated list of endpoints. All are dialled at once; the
    /// first in list order that answers becomes the current one, without waiting for
    /// the ones after it. Endpoints that failed or were still connecting get a
    /// connection that is made on first use, so a node that comes back later is used.
    pub(crate) async fn connect(list: &str, options: ClientOptions) -> Result<EndpointSet> {
        let dials = parse_list(list, &options)?;
        if dials.len() == 1 {
            // One endpoint: exactly the single-node behaviour and error.
            let dial = &dials[0];
            let channel = dial
                .endpoint
                .connect()
                .await
                .map_err(|transport| Error::Connect {
                    endpoint: dial.uri.clone(),
                    reason: root_cause(&transport),
                    transport,
                })?;
            return Ok(EndpointSet::new(&dials, vec![Some(channel)], 0, options));
        }

        let mut connecting: FuturesUnordered<_> = dials
            .iter()
            .enumerate()
            .map(|(index, dial)| {
                let endpoint = dial.endpoint.clone();
                async move { (index, endpoint.connect().await) }
            })
            .collect();
        let mut outcomes: Vec<Option<Result<Channel, tonic::transport::Error>>> =
            (0..dials.len()).map(|_| None).collect();
        let mut chosen = None;
        while chosen.is_none() {
            let Some((index, outcome)) = connecting.next().await else {
                break;
            };
            outcomes[index] = Some(outcome);
            chosen = first_connected(&outcomes);
        }
        // Dropping the connects still under way cancels them.
        drop(connecting);

        let Some(chosen) = chosen else {
            let mut failures = Vec::with_capacity(dials.len());
            for (dial, outcome) in dials.iter().zip(outcomes) {
                if let Some(Err(transport)) = outcome {
                    failures.push(ConnectFailure {
                        endpoint: dial.uri.clone(),
                        reason: root_cause(&transport),
                        transport,
                    });
                }
            }
            assert_eq!(failures.len(), dials.len(), "every connect failed");
            return Err(Error::ConnectAll { failures });
        };
        let channels = outcomes
            .into_iter()
            .map(|outcome| outcome.and_then(|connected| connected.ok()))
            .collect();
        Ok(EndpointSet::new(&dials, channels, chosen, options))
    }

    fn new(
        dials: &[Dial],
        channels: Vec<Option<Channel>>,
        current: usize,
        options: ClientOptions,
    ) -> EndpointSet {
        assert_eq!(dials.len(), channels.len());
        assert!(current < dials.len());
        let mut listed = Vec::with_capacity(dials.len());
        for (dial, channel) in dials.iter().zip(channels) {
            let channel = channel.unwrap_or_else(|| dial.endpoint.connect_lazy());
            listed.push(Arc::new(Node::new(
                Arc::from(dial.uri.as_str()),
                channel,
                options.token.as_ref(),
            )));
        }
        EndpointSet {
            listed,
            current: AtomicUsize::new(current),
            options,
            routes: Mutex::new(Routes {
                leaders: LeaderCache::new(TENANTS_MAX),
                learned: HashMap::new(),
                map_endpoints: Vec::new(),
            }),
        }
    }

    /// Where the next attempt of a call goes: the tenant's known leader, else the
    /// current listed endpoint.
    pub(crate) fn route(&self, tenant_id: Option<&str>) -> Route {
        if let Some(tenant_id) = tenant_id {
            let routes = self.lock_routes();
            if let Some(uri) = routes.leaders.get(tenant_id) {
                let listed_index = self.listed_index(uri);
                let node = match listed_index {
                    Some(index) => Some(self.listed[index].clone()),
                    None => routes.learned.get(uri).cloned(),
                };
                // A learned connection is only dropped when no tenant names it, so
                // `node` is always found; the list is the fallback regardless.
                if let Some(node) = node {
                    return Route {
                        node,
                        listed_index,
                        via_leader: true,
                    };
                }
            }
        }
        let index = self.current.load(Ordering::Relaxed);
        Route {
            node: self.listed[index].clone(),
            listed_index: Some(index),
            via_leader: false,
        }
    }

    /// A route straight to the node at `uri`, a shard's leader by the shard map: its
    /// listed connection, or one opened for it within the bound on unlisted nodes.
    /// `None` when that bound is reached or tonic cannot dial `uri`.
    pub(crate) fn route_to(&self, uri: &str) -> Option<Route> {
        if let Some(index) = self.listed_index(uri) {
            return Some(Route {
                node: self.listed[index].clone(),
                listed_index: Some(index),
                via_leader: true,
            });
        }
        let mut routes = self.lock_routes();
        let node = self.learned_node(&mut routes, uri)?;
        Some(Route {
            node,
            listed_index: None,
            via_leader: true,
        })
    }

    /// Keeps the connections to `endpoints`, the nodes of the latest shard map, when
    /// unlisted connections are pruned.
    pub(crate) fn keep_connected(&self, endpoints: Vec<Arc<str>>) {
        assert!(
            endpoints.len() <= NODES_MAX,
            "a shard map names at most NODES_MAX nodes"
        );
        self.lock_routes().map_endpoints = endpoints;
    }

    /// After a transient failure on `route`: a leader that failed is forgotten (the
    /// tenant's next attempt goes to the list), and a listed endpoint that failed
    /// hands over to the next one in the list.
    pub(crate) fn report_failure(&self, tenant_id: Option<&str>, route: &Route) {
        if route.via_leader {
            if let Some(tenant_id) = tenant_id {
                let forgotten = self
                    .lock_routes()
                    .leaders
                    .forget(tenant_id, &route.node.uri);
                if forgotten {
                    tracing::debug!(tenant = tenant_id, endpoint = %route.node.uri, "leader failed, back to the endpoint list");
                }
            }
        }
        if let Some(index) = route.listed_index {
            let next = (index + 1) % self.listed.len();
            // Only from the endpoint that failed: concurrent calls failing on the same
            // node move the current endpoint once, not once each.
            let moved = self
                .current
                .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
            if moved && next != index {
                tracing::debug!(failed = %route.node.uri, endpoint = %self.listed[next].uri, "failing over");
            }
        }
    }

    /// Reads the leader hint of a response (or error) to a request for `tenant_id`
    /// that went to `route`, and remembers it. Endpoints in `failed` (those that failed
    /// during this call) are not taken from hints: a node whose forward to a dead
    /// leader failed names that leader, and going there again would waste an attempt.
    ///
    /// Returns true when the tenant's requests now go to another node than `route`'s:
    /// an error that names another leader is then worth retrying there.
    pub(crate) fn learn_leader(
        &self,
        tenant_id: Option<&str>,
        route: &Route,
        metadata: &MetadataMap,
        failed: &[Arc<str>],
    ) -> bool {
        let Some(tenant_id) = tenant_id else {
            return false;
        };
        let Some(value) = metadata.get(LEADER_HEADER) else {
            return false;
        };
        let Some(uri) = value.to_str().ok().and_then(hint_uri) else {
            tracing::debug!(tenant = tenant_id, hint = ?value, "ignoring a leader hint that is not an http(s) URI");
            return false;
        };
        if failed.iter().any(|endpoint| **endpoint == *uri) {
            return false;
        }
        let mut routes = self.lock_routes();
        let node_uri = match self.listed_index(&uri) {
            Some(index) => self.listed[index].uri.clone(),
            None => match self.learned_node(&mut routes, &uri) {
                Some(node) => node.uri.clone(),
                None => return false,
            },
        };
        let known = routes
            .leaders
            .get(tenant_id)
            .is_some_and(|endpoint| *endpoint == node_uri);
        if !known {
            tracing::debug!(tenant = tenant_id, endpoint = %node_uri, "learned the tenant's leader");
            routes.leaders.remember(tenant_id, node_uri.clone());
        }
        node_uri != route.node.uri
    }

    /// The connection to a named leader that is not listed, opened (lazily) on first
    /// use. `None` when the bound is reached by leaders some tenant still uses.
    fn learned_node(&self, routes: &mut Routes, uri: &str) -> Option<Arc<Node>> {
        if let Some(node) = routes.learned.get(uri) {
            return Some(node.clone());
        }
        if routes.learned.len() >= LEARNED_ENDPOINTS_MAX {
            // Rare (nodes replaced many times over the client's life): one pass over
            // at most TENANTS_MAX entries, ~0.1 ms.
            let named = routes.leaders.endpoints_named();
            let map_endpoints = &routes.map_endpoints;
            routes
                .learned
                .retain(|known, _| named.contains(known) || map_endpoints.contains(known));
            if routes.learned.len() >= LEARNED_ENDPOINTS_MAX {
                tracing::debug!(
                    endpoint = uri,
                    "too many leader endpoints, not following the hint"
                );
                return None;
            }
        }
        let endpoint = match configure(uri, uri, &self.options) {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::debug!(endpoint = uri, %error, "ignoring a leader hint tonic cannot dial");
                return None;
            }
        };
        let uri_shared: Arc<str> = Arc::from(uri);
        let node = Arc::new(Node::new(
            uri_shared.clone(),
            endpoint.connect_lazy(),
            self.options.token.as_ref(),
        ));
        routes.learned.insert(uri_shared, node.clone());
        assert!(routes.learned.len() <= LEARNED_ENDPOINTS_MAX);
        Some(node)
    }

    fn listed_index(&self, uri: &str) -> Option<usize> {
        self.listed.iter().position(|node| *node.uri == *uri)
    }

    fn lock_routes(&self) -> MutexGuard<'_, Routes> {
        // Every update leaves the maps consistent, so a panic elsewhere while the lock
        // was held does not make them unusable.
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The index of the first endpoint, in list order, known to be connected while every
/// one before it is known to have failed.
fn first_connected(outcomes: &[Option<Result<Channel, tonic::transport::Error>>]) -> Option<usize> {
    for (index, outcome) in outcomes.iter().enumerate() {
        match outcome {
            None => return None,
            Some(Err(_)) => continue,
            Some(Ok(_)) => return Some(index),
        }
    }
    None
}

/// Splits and checks a comma-separated endpoint list. A bare `host:port` is taken as
/// `http://host:port`; an endpoint listed twice is kept once.
fn parse_list(list: &str, options: &ClientOptions) -> Result<Vec<Dial>> {
    let mut dials: Vec<Dial> = Vec::new();
    for (position, entry_raw) in list.split(',').enumerate() {
        let entry = entry_raw.trim();
        if entry.is_empty() {
            return Err(Error::InvalidEndpoint {
                endpoint: list.to_string(),
                reason: format!("entry {} of the list is empty", position + 1),
            });
        }
        let uri = entry_uri(entry);
        let endpoint = configure(&uri, entry, options)?;
        if dials.iter().any(|dial| dial.uri == uri) {
            continue;
        }
        if dials.len() == ENDPOINTS_MAX {
            return Err(Error::InvalidEndpoint {
                endpoint: entry.to_string(),
                reason: format!("a list holds at most {ENDPOINTS_MAX} endpoints"),
            });
        }
        dials.push(Dial { uri, endpoint });
    }
    assert!(!dials.is_empty(), "split yields at least one entry");
    Ok(dials)
}

/// The URI of a list entry: `http://` added to a bare `host:port`, no trailing slash.
fn entry_uri(entry: &str) -> String {
    let uri = if entry.contains("://") {
        entry.to_string()
    } else {
        format!("http://{entry}")
    };
    uri.trim_end_matches('/').to_string()
}

/// Whether `metadata` names a leader (`trail-leader`) other than `route`'s node: the
/// node that answered is not the leader the request was sent to as.
pub(crate) fn names_another_leader(metadata: &MetadataMap, route: &Route) -> bool {
    let Some(value) = metadata.get(LEADER_HEADER) else {
        return false;
    };
    match value.to_str().ok().and_then(hint_uri) {
        Some(uri) => *uri != *route.node.uri,
        None => false,
    }
}

/// The URI of a leader hint, which must be an http(s) URI.
fn hint_uri(hint: &str) -> Option<String> {
    let trimmed = hint.trim();
    if !(trimmed.starts_with("http://") || trimmed.starts_with("https://")) {
        return None;
    }
    Some(trimmed.trim_end_matches('/').to_string())
}

/// The tonic endpoint for `uri`; errors name `entry`, as the user wrote it.
fn configure(uri: &str, entry: &str, options: &ClientOptions) -> Result<Endpoint> {
    let endpoint =
        Endpoint::from_shared(uri.to_string()).map_err(|transport| Error::InvalidEndpoint {
            endpoint: entry.to_string(),
            reason: root_cause(&transport),
        })?;
    Ok(endpoint
        .connect_timeout(options.connect_timeout)
        // Pings keep idle connections through NATs and load balancers and detect a
        // dead peer within interval + timeout instead of at the next RPC deadline.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uris(list: &str) -> Result<Vec<String>> {
        let dials = parse_list(list, &ClientOptions::default())?;
        Ok(dials.into_iter().map(|dial| dial.uri).collect())
    }

    #[test]
    fn a_list_is_split_trimmed_and_completed() {
        assert_eq!(
            uris("http://127.0.0.1:7400, 127.0.0.1:7402 ,https://n3:7400/").unwrap(),
            vec![
                "http://127.0.0.1:7400",
                "http://127.0.0.1:7402",
                "https://n3:7400"
            ]
        );
        assert_eq!(
            uris("localhost:7400").unwrap(),
            vec!["http://localhost:7400"]
        );
    }

    #[test]
    fn an_endpoint_listed_twice_is_kept_once() {
        assert_eq!(
            uris("127.0.0.1:7400,http://127.0.0.1:7400/").unwrap(),
            vec!["http://127.0.0.1:7400"]
        );
    }

    #[test]
    fn a_bad_entry_is_named() {
        match uris("http://127.0.0.1:7400,http://bad host:1") {
            Err(Error::InvalidEndpoint { endpoint, .. }) => {
                assert_eq!(endpoint, "http://bad host:1")
            }
            other => panic!("expected InvalidEndpoint, got {other:?}"),
        }
        match uris("http://127.0.0.1:7400,,127.0.0.1:7402") {
            Err(Error::InvalidEndpoint { reason, .. }) => {
                assert!(reason.contains("entry 2"), "{reason}")
            }
            other => panic!("expected InvalidEndpoint, got {other:?}"),
        }
        assert!(matches!(uris(""), Err(Error::InvalidEndpoint { .. })));
    }

    #[test]
    fn a_list_is_bounded() {
        let list: Vec<String> = (0..=ENDPOINTS_MAX)
            .map(|port| format!("127.0.0.1:{}", 7000 + port))
            .collect();
        assert!(matches!(
            uris(&list.join(",")),
            Err(Error::InvalidEndpoint { .. })
        ));
        assert_eq!(
            uris(&list[..ENDPOINTS_MAX].join(",")).unwrap().len(),
            ENDPOINTS_MAX
        );
    }

    #[test]
    fn hints_must_be_http_uris() {
        assert_eq!(
            hint_uri("http://127.0.0.1:7402/").as_deref(),
            Some("http://127.0.0.1:7402")
        );
        assert_eq!(hint_uri("127.0.0.1:7402"), None);
        assert_eq!(hint_uri("file:///etc/passwd"), None);
    }
}
