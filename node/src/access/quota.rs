//! Per-tenant ingest quotas: events per second and bytes per second, each a token
//! bucket that holds [`BURST_SECONDS`] of its rate, so a bursty producer is not
//! refused for a burst its average covers.
//!
//! A tenant's events are charged where they are submitted to their shard (the node
//! that leads it), so a tenant has one bucket in the cluster however many nodes its
//! producers call. Over quota, the tenant's events of the batch are refused with
//! RESOURCE_EXHAUSTED and a retry hint: the wait until the bucket holds them.
//!
//! Memory: one bucket per tenant that wrote recently; buckets idle for longer than
//! [`IDLE_NS`] are dropped once the map holds [`BUCKETS_MAX`].

use std::collections::HashMap;
use std::sync::Mutex;

/// Seconds of its rate a bucket holds when full.
pub const BURST_SECONDS: f64 = 2.0;
const BUCKETS_MAX: usize = 100_000;
const IDLE_NS: i64 = 10_000_000_000;

/// A tenant's ingest rate; 0 means no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub events_per_sec: u64,
    pub bytes_per_sec: u64,
}

impl Quota {
    pub const UNLIMITED: Quota = Quota {
        events_per_sec: 0,
        bytes_per_sec: 0,
    };
}

/// Why a tenant's events were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tenant {tenant} is over its ingest quota ({}); retry in {retry_after_ms} ms", describe(.quota))]
pub struct OverQuota {
    pub tenant: String,
    pub quota: Quota,
    pub retry_after_ms: u32,
}

fn describe(quota: &Quota) -> String {
    let mut parts = Vec::new();
    if quota.events_per_sec > 0 {
        parts.push(format!("{} events/s", quota.events_per_sec));
    }
    if quota.bytes_per_sec > 0 {
        parts.push(format!("{} bytes/s", quota.bytes_per_sec));
    }
    parts.join(", ")
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    events: f64,
    bytes: f64,
    at_ns: i64,
}

/// Every tenant's buckets on this node, under one default quota.
pub struct Quotas {
    default: Quota,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Quotas {
    pub fn new(default: Quota) -> Quotas {
        Quotas {
            default,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn default_quota(&self) -> Quota {
        self.default
    }

    /// Takes `events` and `bytes` from `tenant`'s buckets at `now_ns`, or refuses them
    /// all (nothing is taken) with the wait until they would fit.
    pub fn charge(
        &self,
        tenant: &str,
        events: u64,
        bytes: u64,
        now_ns: i64,
    ) -> Result<(), OverQuota> {
        let quota = self.default;
        if quota == Quota::UNLIMITED {
            return Ok(());
        }
        let capacity = |rate: u64| rate as f64 * BURST_SECONDS;
        let mut buckets = self.buckets.lock().expect("quota lock");
        if buckets.len() >= BUCKETS_MAX && !buckets.contains_key(tenant) {
            buckets.retain(|_, bucket| now_ns - bucket.at_ns < IDLE_NS);
        }
        // Looked up before inserted: the tenant's id is copied once, not per charge.
        if !buckets.contains_key(tenant) {
            buckets.insert(
                tenant.to_string(),
                Bucket {
                    events: capacity(quota.events_per_sec),
                    bytes: capacity(quota.bytes_per_sec),
                    at_ns: now_ns,
                },
            );
        }
        let bucket = buckets.get_mut(tenant).expect("inserted above");
        let elapsed = (now_ns - bucket.at_ns).max(0) as f64 / 1e9;
        bucket.at_ns = now_ns.max(bucket.at_ns);
        let refill = |level: f64, rate: u64| (level + rate as f64 * elapsed).min(capacity(rate));
        let events_level = refill(bucket.events, quota.events_per_sec);
        let bytes_level = refill(bucket.bytes, quota.bytes_per_sec);
        // Seconds until `level` covers `need` at `rate` (0 when unlimited or covered).
        let wait = |level: f64, need: u64, rate: u64| {
            if rate == 0 || level >= need as f64 {
                0.0
            } else {
                (need as f64 - level) / rate as f64
            }
        };
        let wait_s = wait(events_level, events, quota.events_per_sec).max(wait(
            bytes_level,
            bytes,
            quota.bytes_per_sec,
        ));
        if wait_s > 0.0 {
            bucket.events = events_level;
            bucket.bytes = bytes_level;
            return Err(OverQuota {
                tenant: tenant.to_string(),
                quota,
                retry_after_ms: ((wait_s * 1000.0).ceil() as u64).clamp(1, 60_000) as u32,
            });
        }
        bucket.events = if quota.events_per_sec > 0 {
            events_level - events as f64
        } else {
            0.0
        };
        bucket.bytes = if quota.bytes_per_sec > 0 {
            bytes_level - bytes as f64
        } else {
            0.0
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: i64 = 1_000_000_000;

    #[test]
    fn a_burst_of_two_seconds_passes_then_the_rate_holds() {
        let quotas = Quotas::new(Quota {
            events_per_sec: 100,
            bytes_per_sec: 0,
        });
        assert!(quotas.charge("acme", 200, 0, 0).is_ok(), "a full bucket");
        let refused = quotas.charge("acme", 50, 0, 0).unwrap_err();
        assert_eq!(refused.retry_after_ms, 500);
        assert_eq!(
            refused.to_string(),
            "tenant acme is over its ingest quota (100 events/s); retry in 500 ms"
        );
        assert!(quotas.charge("acme", 50, 0, SECOND / 2).is_ok(), "refilled");
        assert!(
            quotas.charge("globex", 200, 0, SECOND / 2).is_ok(),
            "its own bucket"
        );
    }

    #[test]
    fn bytes_are_limited_on_their_own_and_unlimited_charges_nothing() {
        let quotas = Quotas::new(Quota {
            events_per_sec: 0,
            bytes_per_sec: 1_000,
        });
        assert!(quotas.charge("acme", 1_000_000, 2_000, 0).is_ok());
        assert_eq!(
            quotas
                .charge("acme", 1, 1_000, 0)
                .unwrap_err()
                .retry_after_ms,
            1_000
        );
        let unlimited = Quotas::new(Quota::UNLIMITED);
        assert!(unlimited.charge("acme", u64::MAX, u64::MAX, 0).is_ok());
    }

    #[test]
    fn a_refused_charge_takes_nothing() {
        let quotas = Quotas::new(Quota {
            events_per_sec: 10,
            bytes_per_sec: 0,
        });
        assert!(quotas.charge("acme", 15, 0, 0).is_ok());
        assert!(quotas.charge("acme", 10, 0, 0).is_err());
        assert!(
            quotas.charge("acme", 5, 0, 0).is_ok(),
            "the refusal took nothing"
        );
    }
}
