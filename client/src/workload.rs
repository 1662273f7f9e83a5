//! The benchmark workload, generated in-process.
//!
//! Same distribution as `shared/workload/gen_events.py`, not byte-identical:
//! 1,000 tenants, `ten_0001` a whale with 30% of the events and the rest Zipf(1.0);
//! actors and resources Zipf(0.8) within a tenant; 50 actions Zipf(0.9) with
//! `auth.login` most common (~19%); results 90% SUCCESS, 7% FAILURE, 3% DENIED; events
//! of ~500 bytes with email, IP address, user agent and metadata.
//!
//! One difference on purpose: `occurred_at` ends at the generator's end time ("now" by
//! default) instead of starting in 2025, because the server refuses events more than
//! 5 minutes in the future and a fixed start would drift into that as the calendar
//! moves. The stream spans ~90 days and is strictly increasing.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use trail_proto::v1::{Actor, ActorType, Event, Resource, Result as EventResult};
use trail_proto::Timestamp;

pub const TENANTS_COUNT: usize = 1_000;
const WHALE_SHARE: f64 = 0.30;
/// Mean span of `occurred_at` over the whole stream.
pub const SPAN_DAYS: u64 = 90;
const MICROS_PER_DAY: u64 = 86_400 * 1_000_000;

/// Pool sizes scale with a tenant's expected volume, bounded so that memory for the
/// pools stays small (the whale of a 1 M stream has 2,000 actors, 7,500 resources).
const ACTORS_PER_TENANT_MIN: usize = 3;
const ACTORS_PER_TENANT_MAX: usize = 5_000;
const EVENTS_PER_ACTOR: f64 = 150.0;
const RESOURCES_PER_TENANT_MIN: usize = 4;
const RESOURCES_PER_TENANT_MAX: usize = 20_000;
const EVENTS_PER_RESOURCE: f64 = 40.0;
const IPS_PER_TENANT_MIN: usize = 4;
const IPS_PER_TENANT_MAX: usize = 2_000;

/// (action, resource type) in popularity order.
const ACTIONS: [(&str, &str); 50] = [
    ("auth.login", "session"),
    ("record.read", "record"),
    ("document.view", "document"),
    ("auth.token.refresh", "session"),
    ("record.update", "record"),
    ("auth.logout", "session"),
    ("record.create", "record"),
    ("document.download", "document"),
    ("auth.sso.login", "session"),
    ("auth.mfa.challenge", "session"),
    ("project.update", "project"),
    ("user.update", "user"),
    ("document.share", "document"),
    ("settings.update", "settings"),
    ("record.export", "record"),
    ("team.member.add", "team"),
    ("role.assign", "role"),
    ("user.invite", "user"),
    ("record.delete", "record"),
    ("apikey.rotate", "apikey"),
    ("user.create", "user"),
    ("project.create", "project"),
    ("role.revoke", "role"),
    ("invoice.create", "invoice"),
    ("billing.update", "subscription"),
    ("auth.password.change", "user"),
    ("apikey.create", "apikey"),
    ("document.delete", "document"),
    ("team.member.remove", "team"),
    ("invoice.pay", "invoice"),
    ("webhook.create", "webhook"),
    ("auth.mfa.enroll", "user"),
    ("project.archive", "project"),
    ("auth.password.reset", "user"),
    ("team.create", "team"),
    ("user.suspend", "user"),
    ("role.create", "role"),
    ("role.update", "role"),
    ("policy.update", "policy"),
    ("billing.plan.change", "subscription"),
    ("billing.payment_method.add", "subscription"),
    ("apikey.revoke", "apikey"),
    ("webhook.delete", "webhook"),
    ("project.delete", "project"),
    ("user.reactivate", "user"),
    ("invoice.void", "invoice"),
    ("sso.config.update", "settings"),
    ("billing.payment_method.remove", "subscription"),
    ("role.delete", "role"),
    ("user.delete", "user"),
];

/// (resource type, id prefix).
const RESOURCE_TYPES: [(&str, &str); 13] = [
    ("session", "ses"),
    ("record", "rec"),
    ("document", "doc"),
    ("project", "prj"),
    ("user", "usr"),
    ("settings", "set"),
    ("team", "team"),
    ("role", "role"),
    ("apikey", "key"),
    ("invoice", "inv"),
    ("subscription", "sub"),
    ("webhook", "whk"),
    ("policy", "pol"),
];

const USER_AGENTS: [&str; 10] = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_4) AppleWebKit/605.1.15 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) Mobile/15E148",
    "trail-sdk-rust/0.4.1 (linux; x86_64)",
    "trail-sdk-go/1.7.3",
    "python-requests/2.31.0",
    "curl/8.5.0",
    "Terraform/1.8.2 terraform-provider-acme/3.2.0",
    "okhttp/4.12.0",
];
const FIRST_NAMES: [&str; 20] = [
    "ada", "alan", "grace", "linus", "barbara", "ken", "margaret", "dennis", "radia", "edsger",
    "frances", "donald", "leslie", "john", "shafi", "tim", "sophie", "vint", "anita", "niklaus",
];
const LAST_NAMES: [&str; 20] = [
    "lovelace",
    "turing",
    "hopper",
    "torvalds",
    "liskov",
    "thompson",
    "hamilton",
    "ritchie",
    "perlman",
    "dijkstra",
    "allen",
    "knuth",
    "lamport",
    "mccarthy",
    "goldwasser",
    "berners-lee",
    "wilson",
    "cerf",
    "borg",
    "wirth",
];
const ROLES: [&str; 8] = [
    "viewer",
    "editor",
    "admin",
    "owner",
    "billing-admin",
    "auditor",
    "support",
    "developer",
];
const COUNTRIES: [&str; 12] = [
    "US", "DE", "FR", "GB", "IN", "BR", "JP", "CA", "AU", "NL", "SE", "SG",
];
const ERRORS: [&str; 8] = [
    "permission_denied",
    "invalid_credentials",
    "mfa_required",
    "rate_limited",
    "validation_failed",
    "not_found",
    "conflict",
    "quota_exceeded",
];
const PLANS: [&str; 4] = ["free", "team", "business", "enterprise"];
const TABLES: [&str; 7] = [
    "customers",
    "orders",
    "contracts",
    "tickets",
    "assets",
    "patients",
    "payments",
];

struct TenantActor {
    actor_type: ActorType,
    id: String,
    email: String,
}

struct Tenant {
    tenant_id: String,
    actors: Vec<TenantActor>,
    actor_cumulative: Vec<f64>,
    /// Per entry of `RESOURCE_TYPES`: ids and their cumulative weights.
    resources: Vec<(Vec<String>, Vec<f64>)>,
    ip_addresses: Vec<String>,
}

/// A seeded, endless generator of workload events; take as many as needed.
///
/// `events_count` sizes the pools and the time spacing, as in `gen_events.py`: the
/// stream has the intended shape when about that many events are taken.
pub struct Workload {
    rng: StdRng,
    tenants: Vec<Tenant>,
    tenant_cumulative: Vec<f64>,
    action_cumulative: Vec<f64>,
    user_agent_cumulative: Vec<f64>,
    time_us: u64,
    end_us: u64,
    mean_gap_us: f64,
}

impl Workload {
    /// A workload whose times end about now.
    pub fn new(seed: u64, events_count: u64) -> Workload {
        let now_us = u64::try_from(chrono::Utc::now().timestamp_micros()).unwrap_or(0);
        Workload::with_end_time_us(seed, events_count, now_us)
    }

    /// A workload whose `occurred_at` spans [`SPAN_DAYS`] up to `end_us` (Unix
    /// microseconds). Times never pass `end_us` except by the 1 µs steps that keep them
    /// strictly increasing.
    pub fn with_end_time_us(seed: u64, events_count: u64, end_us: u64) -> Workload {
        let mut rng = StdRng::seed_from_u64(seed);
        let tenant_cumulative = zipf_cumulative(TENANTS_COUNT, 1.0, Some(WHALE_SHARE));
        let mut tenants = Vec::with_capacity(TENANTS_COUNT);
        let mut previous_cumulative = 0.0;
        for (index, &cumulative) in tenant_cumulative.iter().enumerate() {
            let share = cumulative - previous_cumulative;
            previous_cumulative = cumulative;
            let expected_events = share * events_count as f64;
            tenants.push(build_tenant(&mut rng, index + 1, expected_events));
        }
        let span_us = SPAN_DAYS * MICROS_PER_DAY;
        Workload {
            rng,
            tenants,
            tenant_cumulative,
            action_cumulative: zipf_cumulative(ACTIONS.len(), 0.9, None),
            user_agent_cumulative: zipf_cumulative(USER_AGENTS.len(), 0.7, None),
            time_us: end_us.saturating_sub(span_us),
            end_us,
            mean_gap_us: span_us as f64 / events_count.max(1) as f64,
        }
    }

    /// The next event. Its `event_id` is a UUID v4 drawn from the seeded generator, so
    /// the same seed gives the same ids.
    pub fn next_event(&mut self) -> Event {
        // Exponential gaps as in the Python generator; clamped so the stream cannot run
        // past `end_us` (a sum of exponential gaps overshoots its mean about half the time).
        let gap_us = 1 + (-(1.0 - self.rng.gen::<f64>()).ln() * self.mean_gap_us) as u64;
        self.time_us = (self.time_us + gap_us)
            .min(self.end_us)
            .max(self.time_us + 1);
        let occurred_at = Timestamp {
            seconds: i64::try_from(self.time_us / 1_000_000).expect("time fits in i64"),
            nanos: i32::try_from((self.time_us % 1_000_000) * 1_000).expect("nanos fit in i32"),
        };

        let tenant = &self.tenants[pick(&mut self.rng, &self.tenant_cumulative)];
        let actor = &tenant.actors[pick(&mut self.rng, &tenant.actor_cumulative)];
        let (action, resource_type) = ACTIONS[pick(&mut self.rng, &self.action_cumulative)];
        let resource_type_index = RESOURCE_TYPES
            .iter()
            .position(|(name, _)| *name == resource_type)
            .expect("every action's resource type is listed");
        let (resource_ids, resource_cumulative) = &tenant.resources[resource_type_index];
        let resource_id = resource_ids[pick(&mut self.rng, resource_cumulative)].clone();
        let draw = self.rng.gen::<f64>();
        let result = if draw < 0.90 {
            EventResult::Success
        } else if draw < 0.97 {
            EventResult::Failure
        } else {
            EventResult::Denied
        };
        let event_id = uuid::Builder::from_random_bytes(self.rng.gen()).into_uuid();
        let ip_address =
            tenant.ip_addresses[self.rng.gen_range(0..tenant.ip_addresses.len())].clone();
        let user_agent = USER_AGENTS[pick(&mut self.rng, &self.user_agent_cumulative)];
        let request_id = format!("req_{}", hex_id(&mut self.rng, 24));
        let metadata = metadata(&mut self.rng, action, result);

        Event {
            event_id: event_id.to_string(),
            tenant_id: tenant.tenant_id.clone(),
            actor: Some(Actor {
                r#type: actor.actor_type as i32,
                id: actor.id.clone(),
                email: actor.email.clone(),
                name: String::new(),
            }),
            action: action.to_string(),
            resource: Some(Resource {
                r#type: resource_type.to_string(),
                id: resource_id,
            }),
            result: result as i32,
            occurred_at: Some(occurred_at),
            request_id,
            session_id: String::new(),
            ip_address,
            user_agent: user_agent.to_string(),
            metadata_json: serde_json::to_string(&metadata).expect("metadata serializes"),
            subject_id: String::new(),
        }
    }
}

impl Iterator for Workload {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        Some(self.next_event())
    }
}

fn build_tenant(rng: &mut StdRng, number: usize, expected_events: f64) -> Tenant {
    let domain = format!("{}-{}.example", choose(rng, &LAST_NAMES), hex_id(rng, 4));
    let actors_count = ((expected_events / EVENTS_PER_ACTOR) as usize)
        .clamp(ACTORS_PER_TENANT_MIN, ACTORS_PER_TENANT_MAX);
    let mut actors = Vec::with_capacity(actors_count);
    for _ in 0..actors_count {
        let draw = rng.gen::<f64>();
        let actor = if draw < 0.80 {
            let first = choose(rng, &FIRST_NAMES);
            let last = choose(rng, &LAST_NAMES);
            TenantActor {
                actor_type: ActorType::User,
                id: format!("usr_{}", hex_id(rng, 12)),
                email: format!("{first}.{last}@{domain}"),
            }
        } else if draw < 0.95 {
            let name = format!("svc-{}", hex_id(rng, 6));
            TenantActor {
                actor_type: ActorType::Service,
                id: format!("svc_{}", hex_id(rng, 12)),
                email: format!("{name}@serviceaccounts.{domain}"),
            }
        } else {
            TenantActor {
                actor_type: ActorType::System,
                id: format!("sys_{}", hex_id(rng, 12)),
                email: format!("system@{domain}"),
            }
        };
        actors.push(actor);
    }
    let resources_count = ((expected_events / EVENTS_PER_RESOURCE) as usize)
        .clamp(RESOURCES_PER_TENANT_MIN, RESOURCES_PER_TENANT_MAX);
    let mut resources = Vec::with_capacity(RESOURCE_TYPES.len());
    for (resource_type, prefix) in RESOURCE_TYPES {
        // A tenant has one settings object; other types share the pool evenly.
        let ids_count = if resource_type == "settings" {
            1
        } else {
            (resources_count / RESOURCE_TYPES.len()).max(2)
        };
        let ids = (0..ids_count)
            .map(|_| format!("{prefix}_{}", hex_id(rng, 16)))
            .collect();
        resources.push((ids, zipf_cumulative(ids_count, 0.8, None)));
    }
    let ips_count = (actors_count / 2).clamp(IPS_PER_TENANT_MIN, IPS_PER_TENANT_MAX);
    let mut ip_addresses = Vec::with_capacity(ips_count);
    for _ in 0..ips_count {
        let address = if rng.gen::<f64>() < 0.1 {
            format!(
                "2001:db8:{:x}:{:x}::{:x}",
                rng.gen::<u16>(),
                rng.gen::<u16>(),
                rng.gen::<u16>()
            )
        } else {
            format!(
                "{}.{}.{}.{}",
                rng.gen_range(11..=223),
                rng.gen_range(0..=255),
                rng.gen_range(0..=255),
                rng.gen_range(1..=254)
            )
        };
        ip_addresses.push(address);
    }
    Tenant {
        tenant_id: format!("ten_{number:04}"),
        actor_cumulative: zipf_cumulative(actors.len(), 0.8, None),
        actors,
        resources,
        ip_addresses,
    }
}

fn metadata(rng: &mut StdRng, action: &str, result: EventResult) -> Value {
    let domain = action.split('.').next().unwrap_or(action);
    let mut metadata = match domain {
        "auth" => json!({
            "method": choose(rng, &["password", "sso", "webauthn", "oauth"]),
            "mfa": rng.gen::<f64>() < 0.7,
            "geo": choose(rng, &COUNTRIES),
            "session_ttl_s": choose(rng, &[3600, 28800, 86400]),
        }),
        "role" => json!({
            "role": choose(rng, &ROLES),
            "scope": choose(rng, &["org", "project", "team"]),
            "previous_role": choose(rng, &ROLES),
        }),
        "billing" | "invoice" => json!({
            "plan": choose(rng, &PLANS),
            "amount_cents": rng.gen_range(900..=990_000),
            "currency": choose(rng, &["USD", "EUR", "GBP"]),
        }),
        "record" => json!({
            "table": choose(rng, &TABLES),
            "fields_changed": rng.gen_range(1..=12),
            "row_count": rng.gen_range(1..=500),
        }),
        "apikey" => json!({
            "key_prefix": format!("ak_{}", hex_id(rng, 6)),
            "expires_in_days": choose(rng, &[30, 90, 365]),
            "scopes": rng.gen_range(1..=9),
        }),
        "document" => json!({
            "mime": choose(rng, &["application/pdf", "text/csv", "image/png"]),
            "size_bytes": rng.gen_range(1_000..=50_000_000),
            "shared_with": rng.gen_range(0..=20),
        }),
        _ => json!({
            "source": choose(rng, &["console", "api", "terraform", "scim"]),
            "changes": rng.gen_range(1..=8),
        }),
    };
    if result != EventResult::Success {
        metadata["error"] = Value::from(choose(rng, &ERRORS));
    }
    metadata
}

/// Cumulative Zipf(s) weights over `n` ranks, ending at exactly 1.0. With
/// `first_share`, rank 1 gets that share and the others split the rest by Zipf weight.
fn zipf_cumulative(n: usize, s: f64, first_share: Option<f64>) -> Vec<f64> {
    let mut weights: Vec<f64> = (1..=n).map(|rank| 1.0 / (rank as f64).powf(s)).collect();
    if let Some(share) = first_share {
        let rest: f64 = weights[1..].iter().sum();
        weights[0] = share;
        for weight in weights[1..].iter_mut() {
            *weight = (1.0 - share) * *weight / rest;
        }
    }
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(n);
    let mut running = 0.0;
    for weight in weights {
        running += weight / total;
        cumulative.push(running);
    }
    if let Some(last) = cumulative.last_mut() {
        *last = 1.0;
    }
    cumulative
}

/// A rank drawn from cumulative weights (Python's `bisect_left`).
fn pick(rng: &mut StdRng, cumulative: &[f64]) -> usize {
    let draw = rng.gen::<f64>();
    cumulative.partition_point(|&bound| bound < draw)
}

fn choose<T: Copy>(rng: &mut StdRng, options: &[T]) -> T {
    options[rng.gen_range(0..options.len())]
}

/// `digits` random lower-case hex digits (at most 32).
fn hex_id(rng: &mut StdRng, digits: usize) -> String {
    assert!(digits <= 32, "hex id of {digits} digits is over 32");
    let bits = 4 * digits as u32;
    let value = rng.gen::<u128>() & (u128::MAX >> (128 - bits));
    format!("{value:0digits$x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const END_US: u64 = 1_760_000_000_000_000;

    #[test]
    fn same_seed_same_events() {
        let first: Vec<Event> = Workload::with_end_time_us(7, 1_000, END_US)
            .take(50)
            .collect();
        let second: Vec<Event> = Workload::with_end_time_us(7, 1_000, END_US)
            .take(50)
            .collect();
        assert_eq!(first, second);
        let other: Vec<Event> = Workload::with_end_time_us(8, 1_000, END_US)
            .take(50)
            .collect();
        assert_ne!(first, other);
    }

    #[test]
    fn distribution_has_the_intended_shape() {
        let count = 20_000;
        let events: Vec<Event> = Workload::with_end_time_us(42, count, END_US)
            .take(count as usize)
            .collect();
        let mut per_tenant: HashMap<&str, usize> = HashMap::new();
        let mut per_action: HashMap<&str, usize> = HashMap::new();
        let mut successes = 0;
        let mut bytes_total = 0;
        let mut previous_us = 0u64;
        for event in &events {
            *per_tenant.entry(&event.tenant_id).or_default() += 1;
            *per_action.entry(&event.action).or_default() += 1;
            if event.result == EventResult::Success as i32 {
                successes += 1;
            }
            bytes_total += crate::json::event_to_json(event).to_string().len();
            let time = event.occurred_at.unwrap();
            let time_us = time.seconds as u64 * 1_000_000 + time.nanos as u64 / 1_000;
            assert!(time_us > previous_us, "occurred_at strictly increases");
            assert!(
                time_us <= END_US + count,
                "occurred_at stays at or before the end"
            );
            previous_us = time_us;
            assert_eq!(event.event_id.len(), 36);
            assert!(serde_json::from_str::<Value>(&event.metadata_json)
                .unwrap()
                .is_object());
        }
        let share = |n: usize| n as f64 / count as f64;
        assert!((share(per_tenant["ten_0001"]) - 0.30).abs() < 0.02);
        assert!((share(per_action["auth.login"]) - 0.19).abs() < 0.02);
        let most_common = per_action.iter().max_by_key(|(_, n)| **n).unwrap();
        assert_eq!(*most_common.0, "auth.login");
        assert!((share(successes) - 0.90).abs() < 0.01);
        // As a JSON line, like the Python generator's 438-632 bytes (median 539).
        let mean_bytes = bytes_total / events.len();
        assert!(
            (430..650).contains(&mean_bytes),
            "mean event size {mean_bytes}"
        );
        let first = events[0].occurred_at.unwrap().seconds as u64;
        let span_days = (END_US / 1_000_000 - first) / 86_400;
        assert!((89..=90).contains(&span_days), "span {span_days} days");
    }

    #[test]
    fn zipf_cumulative_is_monotone_and_whale_share_holds() {
        let cumulative = zipf_cumulative(1_000, 1.0, Some(0.3));
        assert!((cumulative[0] - 0.3).abs() < 1e-12);
        assert_eq!(*cumulative.last().unwrap(), 1.0);
        assert!(cumulative.windows(2).all(|pair| pair[0] <= pair[1]));
    }

    #[test]
    fn hex_ids_have_the_requested_width() {
        let mut rng = StdRng::seed_from_u64(1);
        for digits in [4, 12, 16, 24, 32] {
            let id = hex_id(&mut rng, digits);
            assert_eq!(id.len(), digits);
            assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
        }
    }
}
