//! Which node leads each tenant's shard, as the nodes said. Pure bookkeeping with no
//! I/O, so the bounds are unit-tested directly.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Tenants remembered at most. One entry is the tenant id (~16 bytes), a shared
/// endpoint URI and the map's overhead: under 100 bytes, so the cache stays under
/// 1 MB however many tenants a client writes for. Beyond it, requests for the tenants
/// left out go to the endpoint list and the node there forwards them: slower by one
/// hop, never wrong.
pub(crate) const TENANTS_MAX: usize = 10_000;

/// Tenant id -> the gRPC endpoint of the node leading the tenant's shard.
#[derive(Debug)]
pub(crate) struct LeaderCache {
    leaders: HashMap<String, Arc<str>>,
    tenants_max: usize,
}

impl LeaderCache {
    pub(crate) fn new(tenants_max: usize) -> LeaderCache {
        assert!(tenants_max > 0, "a leader cache holds at least one tenant");
        LeaderCache {
            leaders: HashMap::new(),
            tenants_max,
        }
    }

    pub(crate) fn get(&self, tenant_id: &str) -> Option<&Arc<str>> {
        self.leaders.get(tenant_id)
    }

    /// Remembers `endpoint` for `tenant_id`. When the cache is full, an arbitrary
    /// other tenant is forgotten first: leaders are hints, and a forgotten one costs
    /// one forwarded request before a node names it again.
    pub(crate) fn remember(&mut self, tenant_id: &str, endpoint: Arc<str>) {
        if let Some(known) = self.leaders.get_mut(tenant_id) {
            *known = endpoint;
            return;
        }
        if self.leaders.len() >= self.tenants_max {
            let evicted = self.leaders.keys().next().cloned();
            if let Some(evicted) = evicted {
                self.leaders.remove(&evicted);
            }
        }
        self.leaders.insert(tenant_id.to_string(), endpoint);
        assert!(self.len() <= self.tenants_max, "leader cache bound");
    }

    /// Forgets `tenant_id`'s leader if it is still `endpoint`: a newer hint that
    /// arrived meanwhile from another call is kept.
    pub(crate) fn forget(&mut self, tenant_id: &str, endpoint: &str) -> bool {
        let matches = self
            .leaders
            .get(tenant_id)
            .is_some_and(|known| **known == *endpoint);
        if matches {
            self.leaders.remove(tenant_id);
        }
        matches
    }

    /// Every endpoint some tenant is routed to.
    pub(crate) fn endpoints_named(&self) -> HashSet<Arc<str>> {
        self.leaders.values().cloned().collect()
    }

    pub(crate) fn len(&self) -> usize {
        self.leaders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(text: &str) -> Arc<str> {
        Arc::from(text)
    }

    #[test]
    fn remembers_and_replaces_a_tenants_leader() {
        let mut cache = LeaderCache::new(4);
        cache.remember("ten_a", endpoint("http://n1:7400"));
        assert_eq!(cache.get("ten_a").map(|e| &**e), Some("http://n1:7400"));
        cache.remember("ten_a", endpoint("http://n2:7400"));
        assert_eq!(cache.get("ten_a").map(|e| &**e), Some("http://n2:7400"));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.get("ten_b"), None);
    }

    #[test]
    fn stays_within_its_bound() {
        let mut cache = LeaderCache::new(3);
        for tenant in 0..100 {
            cache.remember(&format!("ten_{tenant}"), endpoint("http://n1:7400"));
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.len(), 3);
        // The newest tenant is always kept.
        assert!(cache.get("ten_99").is_some());
    }

    #[test]
    fn forgets_only_the_leader_that_failed() {
        let mut cache = LeaderCache::new(4);
        cache.remember("ten_a", endpoint("http://n2:7400"));
        assert!(!cache.forget("ten_a", "http://n1:7400"));
        assert!(cache.get("ten_a").is_some());
        assert!(cache.forget("ten_a", "http://n2:7400"));
        assert_eq!(cache.get("ten_a"), None);
        assert!(!cache.forget("ten_a", "http://n2:7400"));
    }

    #[test]
    fn names_the_endpoints_in_use() {
        let mut cache = LeaderCache::new(4);
        cache.remember("ten_a", endpoint("http://n1:7400"));
        cache.remember("ten_b", endpoint("http://n2:7400"));
        cache.remember("ten_c", endpoint("http://n2:7400"));
        let named = cache.endpoints_named();
        assert_eq!(named.len(), 2);
        assert!(named.contains("http://n2:7400"));
    }
}
