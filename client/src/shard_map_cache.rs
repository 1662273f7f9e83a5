//! The shard map a [`crate::Client`] splits batches of several tenants by: fetched from
//! the nodes' `Status` when first needed, refreshed when it looks stale, at most once a
//! second and one fetch at a time. The map is a hint: a batch sent by a stale one is
//! forwarded by the node it reaches, so nothing here affects correctness.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::watch;
use tonic::{Request, Status};
use trail_proto::v1::{StatusRequest, StatusResponse};

use crate::endpoint_set::{EndpointSet, Node};
use crate::shard_map::ShardMap;

/// A map older than this is fetched again. Leadership moves on elections only (a node
/// lost, a restart); a batch that meets a moved leader is forwarded meanwhile, so 30 s
/// of extra hops at worst.
pub(crate) const MAP_AGE_MAX: Duration = Duration::from_secs(30);

/// Fetches start at most this often. One fetch is one `Status` per node (3-5 small
/// calls), so even a cluster in constant churn costs its nodes a few calls a second.
pub(crate) const REFRESH_INTERVAL_MIN: Duration = Duration::from_secs(1);

/// How long the first batch of several tenants waits for the first fetch (at most the
/// RPC timeout too). A `Status` is answered from memory in about a millisecond; a node
/// that takes longer is overloaded, and the batch goes to the current endpoint as it
/// did before the map, while the fetch goes on in the background.
pub(crate) const FIRST_MAP_WAIT_MAX: Duration = Duration::from_secs(1);

/// What the client knows about the cluster's shards.
#[derive(Clone, Debug)]
pub(crate) enum Known {
    /// No `Status` answered yet.
    Unknown,
    /// A single node (its `Status` has no cluster map), or a map the client does not
    /// split by: batches are not split.
    Unsplit,
    Cluster(Arc<ShardMap>),
}

/// A look at the cache at one instant.
#[derive(Debug)]
pub(crate) struct MapView {
    pub(crate) known: Known,
    /// Worth fetching again: never fetched, or older than [`MAP_AGE_MAX`].
    pub(crate) stale: bool,
    /// Nothing known yet and the first fetch has not ended: a batch may wait for it.
    pub(crate) first_fetch_pending: bool,
}

#[derive(Debug)]
pub(crate) struct ShardMapCache {
    state: Mutex<CacheState>,
    /// Bumped whenever a map is published or a fetch ends, to wake the batches waiting
    /// for the first map.
    changed: watch::Sender<u64>,
}

#[derive(Debug)]
struct CacheState {
    known: Known,
    /// When `known` was last published (`None`: never).
    fetched_at: Option<Instant>,
    /// When the latest fetch started.
    fetch_started_at: Option<Instant>,
    fetching: bool,
    fetches_ended: u64,
}

impl ShardMapCache {
    pub(crate) fn new() -> ShardMapCache {
        let (changed, _) = watch::channel(0);
        ShardMapCache {
            state: Mutex::new(CacheState {
                known: Known::Unknown,
                fetched_at: None,
                fetch_started_at: None,
                fetching: false,
                fetches_ended: 0,
            }),
            changed,
        }
    }

    pub(crate) fn view(&self, now: Instant) -> MapView {
        let state = self.lock();
        let stale = match state.fetched_at {
            None => true,
            Some(fetched_at) => now.saturating_duration_since(fetched_at) >= MAP_AGE_MAX,
        };
        let first_fetch_pending = matches!(state.known, Known::Unknown) && state.fetches_ended == 0;
        MapView {
            known: state.known.clone(),
            stale,
            first_fetch_pending,
        }
    }

    /// Claims the next fetch: true when none is under way and the last one started at
    /// least [`REFRESH_INTERVAL_MIN`] ago. The caller must then fetch and call
    /// [`ShardMapCache::end_fetch`].
    pub(crate) fn begin_fetch(&self, now: Instant) -> bool {
        let mut state = self.lock();
        if state.fetching {
            return false;
        }
        if let Some(started_at) = state.fetch_started_at {
            if now.saturating_duration_since(started_at) < REFRESH_INTERVAL_MIN {
                return false;
            }
        }
        state.fetching = true;
        state.fetch_started_at = Some(now);
        true
    }

    /// Replaces what is known, as of `now`.
    pub(crate) fn publish(&self, now: Instant, known: Known) {
        {
            let mut state = self.lock();
            assert!(state.fetching, "a map is published by the fetch under way");
            state.known = known;
            state.fetched_at = Some(now);
        }
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Ends the fetch [`ShardMapCache::begin_fetch`] claimed, whether or not it
    /// published anything.
    pub(crate) fn end_fetch(&self) {
        {
            let mut state = self.lock();
            assert!(state.fetching, "a fetch ends once");
            state.fetching = false;
            state.fetches_ended += 1;
        }
        self.changed.send_modify(|generation| *generation += 1);
    }

    /// Changes after this call wake the receiver.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, CacheState> {
        // Every update leaves the state consistent, so a panic elsewhere while the
        // lock was held does not make it unusable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Ends the fetch when dropped, so a fetch that panics or whose task is dropped with
/// its runtime does not block every later one.
struct FetchEnding<'a> {
    cache: &'a ShardMapCache,
}

impl Drop for FetchEnding<'_> {
    fn drop(&mut self) {
        self.cache.end_fetch();
    }
}

/// One fetch, claimed with [`ShardMapCache::begin_fetch`]: asks the current endpoint
/// for its `Status`, publishes the map it has (with the leaders it reports), then asks
/// every other node of the map at once and publishes the merged map. Each call is
/// bounded by `rpc_timeout`; a failure leaves the previous map in place.
pub(crate) async fn fetch(endpoints: &EndpointSet, cache: &ShardMapCache, rpc_timeout: Duration) {
    let _ending = FetchEnding { cache };
    let first = endpoints.route(None).node;
    let first_status = match node_status(&first, rpc_timeout).await {
        Ok(status) => status,
        Err(status) => {
            tracing::debug!(endpoint = %first.uri, code = ?status.code(), message = status.message(), "shard map fetch failed");
            return;
        }
    };
    let Some(cluster) = first_status.cluster.as_ref() else {
        cache.publish(Instant::now(), Known::Unsplit);
        return;
    };
    let Some(mut map) = ShardMap::new(cluster) else {
        cache.publish(Instant::now(), Known::Unsplit);
        return;
    };
    map.merge_status(&first_status);
    endpoints.keep_connected(map.node_endpoints().cloned().collect());
    cache.publish(Instant::now(), Known::Cluster(Arc::new(map.clone())));

    let answered_endpoint = map.endpoint_of(first_status.node_id).cloned();
    let mut asking = FuturesUnordered::new();
    for endpoint in map.node_endpoints() {
        let answered = answered_endpoint.as_ref() == Some(endpoint) || *endpoint == first.uri;
        if answered {
            continue;
        }
        let Some(route) = endpoints.route_to(endpoint) else {
            continue;
        };
        asking.push(async move { node_status(&route.node, rpc_timeout).await });
    }
    if asking.is_empty() {
        return;
    }
    while let Some(answer) = asking.next().await {
        match answer {
            Ok(status) => map.merge_status(&status),
            Err(status) => {
                tracing::debug!(code = ?status.code(), message = status.message(), "a node did not answer the shard map fetch")
            }
        }
    }
    cache.publish(Instant::now(), Known::Cluster(Arc::new(map)));
}

/// One `Status` call, bounded by `rpc_timeout` whether or not the node answers.
async fn node_status(node: &Node, rpc_timeout: Duration) -> Result<StatusResponse, Status> {
    let mut trail = node.trail.clone();
    let mut request = Request::new(StatusRequest {});
    request.set_timeout(rpc_timeout);
    match tokio::time::timeout(rpc_timeout, trail.status(request)).await {
        Ok(answer) => answer.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!(
            "Status did not answer within {} ms",
            rpc_timeout.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_fetch_is_awaited_once() {
        let cache = ShardMapCache::new();
        let start = Instant::now();
        let view = cache.view(start);
        assert!(view.stale && view.first_fetch_pending);
        assert!(cache.begin_fetch(start));
        cache.end_fetch();
        // The first fetch failed: nothing known, but no batch waits for a fetch again.
        let view = cache.view(start);
        assert!(view.stale && !view.first_fetch_pending);
        assert!(matches!(view.known, Known::Unknown));
    }

    #[test]
    fn fetches_are_one_at_a_time_and_at_most_once_a_second() {
        let cache = ShardMapCache::new();
        let start = Instant::now();
        assert!(cache.begin_fetch(start));
        assert!(
            !cache.begin_fetch(start + Duration::from_secs(5)),
            "one in flight"
        );
        cache.publish(start, Known::Unsplit);
        cache.end_fetch();
        assert!(!cache.begin_fetch(start + Duration::from_millis(999)));
        assert!(cache.begin_fetch(start + REFRESH_INTERVAL_MIN));
        cache.end_fetch();
    }

    #[test]
    fn a_map_goes_stale_with_age() {
        let cache = ShardMapCache::new();
        let start = Instant::now();
        assert!(cache.begin_fetch(start));
        cache.publish(start, Known::Unsplit);
        cache.end_fetch();
        let fresh = cache.view(start + MAP_AGE_MAX - Duration::from_millis(1));
        assert!(!fresh.stale && !fresh.first_fetch_pending);
        assert!(matches!(fresh.known, Known::Unsplit));
        assert!(cache.view(start + MAP_AGE_MAX).stale);
    }

    #[test]
    fn publishing_and_ending_wake_subscribers() {
        let cache = ShardMapCache::new();
        let mut changed = cache.subscribe();
        assert!(!changed.has_changed().unwrap());
        assert!(cache.begin_fetch(Instant::now()));
        cache.publish(Instant::now(), Known::Unsplit);
        assert!(changed.has_changed().unwrap());
        changed.mark_unchanged();
        cache.end_fetch();
        assert!(changed.has_changed().unwrap());
    }
}
