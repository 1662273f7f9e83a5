//! Tenant-scoped queries: filters, ordering, keyset pages and a bound on the work one
//! request may do (docs/QUERY.md).
//!
//! Today's only access path is a scan of the tenant's own stream, which is one
//! contiguous range of `sN.events` (keys `stream_no, seq`), newest first or oldest
//! first, testing each event against the filter and stopping at `limit` matches. One
//! request examines at most [`EXAMINED_PER_REQUEST_MAX`] events; when it runs out before
//! filling the page it answers with what it found, `partial`, and a cursor after the
//! last event it examined, so no request does unbounded work and paging never skips or
//! repeats an event. The secondary indexes of issue 5 add cheaper access paths for
//! selective filters; the results stay the same.
//!
//! Results are ordered by stream position (seq), which is ingest order, not by
//! `occurred_at`: the producer's clock is not monotonic in seq, and ordering by it needs
//! an index. The time filters apply to `occurred_at`.
//!
//! The planning and filtering ([`Filters`], [`ScanPlan`], [`Scan`]) are pure and unit
//! tested here; [`run`] is the thin fjall loop around them.

use sha2::{Digest, Sha256};

use super::cursor::{truncate, Digest16};
use super::reader::{tenant_state, ReadError, ReadEvent};
use crate::ledger::validate::{ACTION_BYTES_MAX, ID_BYTES_MAX, RESOURCE_TYPE_BYTES_MAX};
use crate::ledger::{leaf_hash, stream_name, ActorKind, EventRecord, FieldError, Outcome};
use crate::ledger::{StoredEvent, TenantState};
use crate::storage::{event_key, ShardKeyspaces};

/// Events per page when the request does not say.
pub const LIMIT_DEFAULT: usize = 50;
/// Events per page at most: 1,000 events of ~550 bytes is ~0.6 MB of response.
pub const LIMIT_MAX: usize = 1_000;
/// Events one request reads and tests at most. An examined event costs ~1.2 µs (one
/// iterator step and one canonical decode: a release node scanned a 30,000-event tenant
/// in 36 ms), so this bounds a request to ~0.12 s of one core and its memory to
/// `LIMIT_MAX` events, whatever the filter and however large the tenant.
pub const EXAMINED_PER_REQUEST_MAX: u64 = 100_000;

/// The order of results. Both are stream order (seq), which is ingest order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Descending seq: the newest events first (the default).
    #[default]
    NewestFirst,
    /// Ascending seq.
    OldestFirst,
}

/// An action filter: exact, or every action under a dotted prefix (`auth.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionMatch {
    Exact(String),
    /// The prefix with its trailing dot (`"auth."` for `auth.*`): matches `auth.login`
    /// and `auth.mfa.verify`, not `auth` nor `authz.check`.
    Prefix(String),
}

/// What a query selects. `None` matches anything; every `Some` must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    pub actor_id: Option<String>,
    pub actor_kind: Option<ActorKind>,
    pub action: Option<ActionMatch>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub outcome: Option<Outcome>,
    pub request_id: Option<String>,
    /// Inclusive, on `occurred_at`.
    pub start_time_ns: Option<i64>,
    /// Exclusive, on `occurred_at`.
    pub end_time_ns: Option<i64>,
}

impl Filters {
    pub fn matches(&self, event: &EventRecord) -> bool {
        fn equal(wanted: &Option<String>, value: &str) -> bool {
            wanted.as_deref().is_none_or(|wanted| wanted == value)
        }
        if !equal(&self.actor_id, &event.actor_id)
            || !equal(&self.resource_type, &event.resource_type)
            || !equal(&self.resource_id, &event.resource_id)
            || !equal(&self.request_id, &event.request_id)
        {
            return false;
        }
        if self.actor_kind.is_some_and(|kind| kind != event.actor_kind) {
            return false;
        }
        if self.outcome.is_some_and(|outcome| outcome != event.outcome) {
            return false;
        }
        match &self.action {
            None => {}
            Some(ActionMatch::Exact(action)) if action != &event.action => return false,
            Some(ActionMatch::Prefix(prefix)) if !event.action.starts_with(prefix.as_str()) => {
                return false
            }
            Some(_) => {}
        }
        if self
            .start_time_ns
            .is_some_and(|start| event.occurred_at_ns < start)
        {
            return false;
        }
        if self
            .end_time_ns
            .is_some_and(|end| event.occurred_at_ns >= end)
        {
            return false;
        }
        true
    }

    /// Rules across fields (each field's own rules are checked as it is parsed).
    pub fn check(&self) -> Result<(), FieldError> {
        if let (Some(start), Some(end)) = (self.start_time_ns, self.end_time_ns) {
            if end <= start {
                return Err(FieldError::new(
                    "end_time",
                    "must be after start_time (start_time is inclusive, end_time exclusive)",
                ));
            }
        }
        Ok(())
    }

    /// A digest of the filter and order, carried by cursors so that a cursor continues
    /// only the query that returned it. The limit is not part of it: pages may differ
    /// in size.
    pub fn digest(&self, order: Order) -> Digest16 {
        fn text(hasher: &mut Sha256, value: &Option<String>) {
            match value {
                None => hasher.update([0]),
                Some(value) => {
                    hasher.update([1]);
                    hasher.update((value.len() as u64).to_be_bytes());
                    hasher.update(value.as_bytes());
                }
            }
        }
        fn number(hasher: &mut Sha256, value: Option<i64>) {
            match value {
                None => hasher.update([0]),
                Some(value) => {
                    hasher.update([1]);
                    hasher.update(value.to_be_bytes());
                }
            }
        }
        let mut hasher = Sha256::new();
        hasher.update(b"trail.query.v1");
        hasher.update([match order {
            Order::NewestFirst => 1,
            Order::OldestFirst => 2,
        }]);
        text(&mut hasher, &self.actor_id);
        hasher.update([self.actor_kind.map_or(0, |kind| kind as u8)]);
        match &self.action {
            None => hasher.update([0]),
            Some(ActionMatch::Exact(action)) => {
                hasher.update([1]);
                text(&mut hasher, &Some(action.clone()));
            }
            Some(ActionMatch::Prefix(prefix)) => {
                hasher.update([2]);
                text(&mut hasher, &Some(prefix.clone()));
            }
        }
        text(&mut hasher, &self.resource_type);
        text(&mut hasher, &self.resource_id);
        hasher.update([self.outcome.map_or(0, |outcome| outcome as u8)]);
        text(&mut hasher, &self.request_id);
        number(&mut hasher, self.start_time_ns);
        number(&mut hasher, self.end_time_ns);
        truncate(hasher.finalize().into())
    }
}

/// A string filter: empty means "not set"; otherwise at most `bytes_max` bytes and no
/// control characters (such a value could never match a recorded event).
pub fn text_filter(
    field: &'static str,
    value: &str,
    bytes_max: usize,
) -> Result<Option<String>, FieldError> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > bytes_max {
        return Err(FieldError::new(
            field,
            format!("is {} bytes; at most {bytes_max} are accepted", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(FieldError::new(field, "contains control characters"));
    }
    Ok(Some(value.to_string()))
}

pub fn actor_id_filter(value: &str) -> Result<Option<String>, FieldError> {
    text_filter("actor_id", value, ID_BYTES_MAX)
}

pub fn resource_type_filter(value: &str) -> Result<Option<String>, FieldError> {
    text_filter("resource_type", value, RESOURCE_TYPE_BYTES_MAX)
}

pub fn resource_id_filter(value: &str) -> Result<Option<String>, FieldError> {
    text_filter("resource_id", value, ID_BYTES_MAX)
}

pub fn request_id_filter(value: &str) -> Result<Option<String>, FieldError> {
    text_filter("request_id", value, ID_BYTES_MAX)
}

/// `auth.login` (exact) or `auth.*` (every action under `auth.`); empty is no filter.
/// Actions follow ingest's rule (`ledger/validate.rs`): segments of `a-z 0-9 _ -` joined
/// by dots; a value that breaks it could never match, so it is refused instead.
pub fn action_filter(value: &str) -> Result<Option<ActionMatch>, FieldError> {
    const RULE: &str = "use an action such as \"auth.login\", or a prefix ending in \".*\" \
                        such as \"auth.*\"; segments are a-z 0-9 _ - joined by dots";
    if value.is_empty() {
        return Ok(None);
    }
    let (dotted, is_prefix) = match value.strip_suffix(".*") {
        Some(prefix) => (prefix, true),
        None => (value, false),
    };
    let segments_ok = dotted.split('.').all(|segment| {
        !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    });
    if value.len() > ACTION_BYTES_MAX || !segments_ok {
        let shown: String = value.chars().take(40).collect();
        return Err(FieldError::new(
            "action",
            format!("{shown:?} is not an action filter: {RULE}"),
        ));
    }
    Ok(Some(if is_prefix {
        ActionMatch::Prefix(format!("{dotted}."))
    } else {
        ActionMatch::Exact(dotted.to_string())
    }))
}

/// A query of one tenant, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub tenant_id: String,
    pub filters: Filters,
    /// 1 to [`LIMIT_MAX`].
    pub limit: usize,
    pub order: Order,
    /// From the cursor: every seq up to this one in scan order has been considered.
    pub after_seq: Option<u64>,
    /// [`EXAMINED_PER_REQUEST_MAX`] except in tests.
    pub examined_max: u64,
}

impl Query {
    pub fn new(tenant_id: &str, filters: Filters, limit: usize, order: Order) -> Query {
        Query {
            tenant_id: tenant_id.to_string(),
            filters,
            limit,
            order,
            after_seq: None,
            examined_max: EXAMINED_PER_REQUEST_MAX,
        }
    }
}

/// One page of results.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The tenant's stream (`"{tenant}/0"`).
    pub stream: String,
    pub events: Vec<ReadEvent>,
    /// Where the next page continues (after this seq, in scan order); `None` when the
    /// scan reached the end of the stream.
    pub next_after_seq: Option<u64>,
    /// The page stopped at the examined-events bound before it was full.
    pub partial: bool,
    /// The last seq examined, if any.
    pub scanned_to_seq: Option<u64>,
    pub examined: u64,
}

/// The seqs one request scans: `first_seq..=last_seq` of the tenant's stream, walked in
/// `order`. Pure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanPlan {
    pub first_seq: u64,
    pub last_seq: u64,
    pub order: Order,
}

impl ScanPlan {
    /// The range still to scan, given the stream's highest seq at the time of the read
    /// and the cursor's position; `None` when nothing is left.
    pub fn new(order: Order, after_seq: Option<u64>, stream_last_seq: u64) -> Option<ScanPlan> {
        let (first_seq, last_seq) = match order {
            Order::NewestFirst => {
                let below = match after_seq {
                    None => stream_last_seq,
                    Some(seq) => seq.checked_sub(1)?.min(stream_last_seq),
                };
                (1, below)
            }
            Order::OldestFirst => (
                after_seq.map_or(1, |seq| seq.saturating_add(1)),
                stream_last_seq,
            ),
        };
        if first_seq == 0 || first_seq > last_seq {
            return None;
        }
        Some(ScanPlan {
            first_seq,
            last_seq,
            order,
        })
    }

    /// The first seq in scan order.
    pub fn start_seq(&self) -> u64 {
        match self.order {
            Order::NewestFirst => self.last_seq,
            Order::OldestFirst => self.first_seq,
        }
    }

    /// The last seq in scan order.
    pub fn end_seq(&self) -> u64 {
        match self.order {
            Order::NewestFirst => self.first_seq,
            Order::OldestFirst => self.last_seq,
        }
    }

    fn after(&self, seq: u64) -> u64 {
        match self.order {
            Order::NewestFirst => seq - 1,
            Order::OldestFirst => seq + 1,
        }
    }
}

/// Whether a scan wants more events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    Full,
    Budget,
}

/// The state of one scan: fed the stream's events in scan order, it checks that they
/// are the expected, gap-free positions of the tenant's own stream, keeps the matches
/// and decides when to stop. Pure.
pub struct Scan<'q> {
    query: &'q Query,
    plan: ScanPlan,
    stream: String,
    next_expected_seq: u64,
    events: Vec<ReadEvent>,
    examined: u64,
    last_examined_seq: Option<u64>,
    stopped: Option<Stopped>,
}

impl<'q> Scan<'q> {
    pub fn new(query: &'q Query, plan: ScanPlan) -> Scan<'q> {
        assert!((1..=LIMIT_MAX).contains(&query.limit), "limit is validated");
        assert!(query.examined_max > 0, "a scan may examine events");
        Scan {
            query,
            plan,
            stream: stream_name(&query.tenant_id, 0),
            next_expected_seq: plan.start_seq(),
            events: Vec::with_capacity(query.limit.min(64)),
            examined: 0,
            last_examined_seq: None,
            stopped: None,
        }
    }

    /// One stored event, with its canonical bytes (hashed only if it matches).
    pub fn offer(&mut self, stored: StoredEvent, canonical: &[u8]) -> Result<Flow, ReadError> {
        assert!(self.stopped.is_none(), "no events after a stop");
        // A hole or a stray record means lost or misplaced data: reported, never skipped.
        if stored.seq != self.next_expected_seq {
            return Err(ReadError::Corrupt {
                location: format!("stream {} seq {}", self.stream, self.next_expected_seq),
                reason: format!(
                    "expected seq {} in scan order, found {}",
                    self.next_expected_seq, stored.seq
                ),
            });
        }
        // Tenant isolation does not rest on key arithmetic alone: a record of another
        // tenant inside this tenant's range is reported, never served.
        if stored.event.tenant_id != self.query.tenant_id || stored.stream != self.stream {
            return Err(ReadError::Corrupt {
                location: format!("stream {} seq {}", self.stream, stored.seq),
                reason: "the record belongs to another stream".into(),
            });
        }
        self.examined += 1;
        self.last_examined_seq = Some(stored.seq);
        if stored.seq != self.plan.end_seq() {
            self.next_expected_seq = self.plan.after(stored.seq);
        }
        if self.query.filters.matches(&stored.event) {
            self.events.push(ReadEvent {
                leaf_hash: leaf_hash(canonical),
                stored,
            });
            if self.events.len() == self.query.limit {
                self.stopped = Some(Stopped::Full);
                return Ok(Flow::Stop);
            }
        }
        if self.examined >= self.query.examined_max {
            self.stopped = Some(Stopped::Budget);
            return Ok(Flow::Stop);
        }
        Ok(Flow::Continue)
    }

    /// The page, once the scan stopped or its range ran out.
    pub fn finish(self) -> Result<Page, ReadError> {
        let at_end = self.last_examined_seq == Some(self.plan.end_seq());
        if self.stopped.is_none() && !at_end {
            // The range is the committed stream up to its last seq: every key must be there.
            return Err(ReadError::Corrupt {
                location: format!("stream {} seq {}", self.stream, self.next_expected_seq),
                reason: "event is missing".into(),
            });
        }
        let next_after_seq = if at_end { None } else { self.last_examined_seq };
        Ok(Page {
            stream: self.stream,
            events: self.events,
            next_after_seq,
            partial: self.stopped == Some(Stopped::Budget) && next_after_seq.is_some(),
            scanned_to_seq: self.last_examined_seq,
            examined: self.examined,
        })
    }
}

/// Runs a query against a shard's committed state. Blocking: call it on the blocking
/// pool. Reads the tenant's state, then one range of its stream up to the stream's last
/// seq at that moment (events and tenant state commit in one batch, so every seq up to
/// it is present).
pub fn run(keyspaces: &ShardKeyspaces, query: &Query) -> Result<Page, ReadError> {
    let stream = stream_name(&query.tenant_id, 0);
    let empty = || Page {
        stream: stream.clone(),
        ..Page::default()
    };
    let Some(tenant) = tenant_state(keyspaces, &query.tenant_id)? else {
        return Ok(empty());
    };
    let Some(plan) = ScanPlan::new(query.order, query.after_seq, tenant.next_seq - 1) else {
        return Ok(empty());
    };
    let mut scan = Scan::new(query, plan);
    let range = keyspaces.events.range(range_keys(&tenant, &plan));
    match plan.order {
        Order::NewestFirst => feed(&mut scan, range.rev())?,
        Order::OldestFirst => feed(&mut scan, range)?,
    }
    scan.finish()
}

fn range_keys(tenant: &TenantState, plan: &ScanPlan) -> std::ops::RangeInclusive<[u8; 12]> {
    event_key(tenant.stream_no, plan.first_seq)..=event_key(tenant.stream_no, plan.last_seq)
}

fn feed<I>(scan: &mut Scan<'_>, guards: I) -> Result<(), ReadError>
where
    I: Iterator<Item = fjall::Guard>,
{
    for guard in guards {
        let (key, value) = guard.into_inner()?;
        let stored = StoredEvent::decode_canonical(&value).map_err(|error| ReadError::Corrupt {
            location: format!("event key {:02x?}", key.as_ref()),
            reason: error.to_string(),
        })?;
        let seq_in_key = u64::from_be_bytes(
            key.get(4..12)
                .and_then(|bytes| bytes.try_into().ok())
                .ok_or_else(|| ReadError::Corrupt {
                    location: format!("event key {:02x?}", key.as_ref()),
                    reason: "event keys are 12 bytes".into(),
                })?,
        );
        if stored.seq != seq_in_key {
            return Err(ReadError::Corrupt {
                location: format!("event key {:02x?}", key.as_ref()),
                reason: format!("record says seq {}", stored.seq),
            });
        }
        if scan.offer(stored, &value)? == Flow::Stop {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::event::tests::sample_event;

    fn stored(tenant: &str, seq: u64, configure: impl FnOnce(&mut EventRecord)) -> StoredEvent {
        let mut event = sample_event(tenant, &format!("e{seq}"));
        configure(&mut event);
        StoredEvent {
            stream: stream_name(tenant, 0),
            seq,
            ingested_at_ns: 1_000 + seq as i64,
            event,
        }
    }

    /// Runs a scan over `events` (given in seq order, seqs 1..=n) as `run` would.
    fn scan(query: &Query, events: &[StoredEvent]) -> Result<Page, ReadError> {
        let last = events.len() as u64;
        let Some(plan) = ScanPlan::new(query.order, query.after_seq, last) else {
            return Ok(Page::default());
        };
        let mut scan = Scan::new(query, plan);
        let ordered: Vec<&StoredEvent> = match plan.order {
            Order::NewestFirst => events[..plan.last_seq as usize]
                .iter()
                .rev()
                .take_while(|event| event.seq >= plan.first_seq)
                .collect(),
            Order::OldestFirst => events[plan.first_seq as usize - 1..].iter().collect(),
        };
        for event in ordered {
            if scan.offer(event.clone(), &event.to_canonical())? == Flow::Stop {
                break;
            }
        }
        scan.finish()
    }

    fn seqs(page: &Page) -> Vec<u64> {
        page.events.iter().map(|event| event.stored.seq).collect()
    }

    #[test]
    fn action_filters_exact_and_prefix() {
        let prefix = action_filter("auth.*").unwrap().unwrap();
        assert_eq!(prefix, ActionMatch::Prefix("auth.".into()));
        let filters = Filters {
            action: Some(prefix),
            ..Filters::default()
        };
        let with_action = |action: &str| {
            let mut event = sample_event("t", "e");
            event.action = action.to_string();
            event
        };
        assert!(filters.matches(&with_action("auth.login")));
        assert!(filters.matches(&with_action("auth.mfa.verify")));
        assert!(!filters.matches(&with_action("auth")));
        assert!(!filters.matches(&with_action("authz.check")));
        let exact = Filters {
            action: action_filter("auth.login").unwrap(),
            ..Filters::default()
        };
        assert!(exact.matches(&with_action("auth.login")));
        assert!(!exact.matches(&with_action("auth.login.extra")));
        assert_eq!(action_filter("").unwrap(), None);
        for bad in [
            "Auth.Login",
            "auth.",
            "*",
            ".*",
            "auth.*.*",
            "auth..x",
            "auth*",
        ] {
            let error = action_filter(bad).unwrap_err();
            assert_eq!(error.field, "action", "{bad}");
        }
    }

    #[test]
    fn every_filter_field_is_applied() {
        let event = sample_event("t", "e");
        let at = event.occurred_at_ns;
        let cases: Vec<(Filters, bool)> = vec![
            (Filters::default(), true),
            (
                Filters {
                    actor_id: Some("usr_1".into()),
                    ..Filters::default()
                },
                true,
            ),
            (
                Filters {
                    actor_id: Some("usr_2".into()),
                    ..Filters::default()
                },
                false,
            ),
            (
                Filters {
                    actor_kind: Some(ActorKind::Service),
                    ..Filters::default()
                },
                false,
            ),
            (
                Filters {
                    resource_type: Some("session".into()),
                    resource_id: Some("ses_1".into()),
                    ..Filters::default()
                },
                true,
            ),
            (
                Filters {
                    resource_id: Some("ses_2".into()),
                    ..Filters::default()
                },
                false,
            ),
            (
                Filters {
                    outcome: Some(Outcome::Failure),
                    ..Filters::default()
                },
                false,
            ),
            (
                Filters {
                    request_id: Some("req_1".into()),
                    ..Filters::default()
                },
                true,
            ),
            (
                Filters {
                    start_time_ns: Some(at),
                    end_time_ns: Some(at + 1),
                    ..Filters::default()
                },
                true,
            ),
            (
                Filters {
                    start_time_ns: Some(at + 1),
                    ..Filters::default()
                },
                false,
            ),
            (
                Filters {
                    end_time_ns: Some(at),
                    ..Filters::default()
                },
                false,
            ),
        ];
        for (filters, expected) in cases {
            assert_eq!(filters.matches(&event), expected, "{filters:?}");
        }
    }

    #[test]
    fn end_before_start_names_end_time() {
        let filters = Filters {
            start_time_ns: Some(10),
            end_time_ns: Some(10),
            ..Filters::default()
        };
        assert_eq!(filters.check().unwrap_err().field, "end_time");
    }

    #[test]
    fn text_filters_are_bounded() {
        assert_eq!(actor_id_filter("").unwrap(), None);
        assert_eq!(actor_id_filter("usr_1").unwrap(), Some("usr_1".into()));
        assert_eq!(
            actor_id_filter(&"x".repeat(ID_BYTES_MAX + 1))
                .unwrap_err()
                .field,
            "actor_id"
        );
        assert_eq!(
            resource_id_filter("a\u{0}b").unwrap_err().field,
            "resource_id"
        );
    }

    #[test]
    fn digest_changes_with_every_filter_and_the_order() {
        let base = Filters::default();
        let variants = [
            Filters {
                actor_id: Some("a".into()),
                ..Filters::default()
            },
            Filters {
                actor_kind: Some(ActorKind::User),
                ..Filters::default()
            },
            Filters {
                action: Some(ActionMatch::Exact("a".into())),
                ..Filters::default()
            },
            Filters {
                action: Some(ActionMatch::Prefix("a".into())),
                ..Filters::default()
            },
            Filters {
                resource_type: Some("a".into()),
                ..Filters::default()
            },
            Filters {
                resource_id: Some("a".into()),
                ..Filters::default()
            },
            Filters {
                outcome: Some(Outcome::Denied),
                ..Filters::default()
            },
            Filters {
                request_id: Some("a".into()),
                ..Filters::default()
            },
            Filters {
                start_time_ns: Some(0),
                ..Filters::default()
            },
            Filters {
                end_time_ns: Some(0),
                ..Filters::default()
            },
        ];
        let mut seen = vec![
            base.digest(Order::NewestFirst),
            base.digest(Order::OldestFirst),
        ];
        for filters in &variants {
            seen.push(filters.digest(Order::NewestFirst));
        }
        let mut unique = seen.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), seen.len());
        assert_eq!(
            variants[0].digest(Order::NewestFirst),
            variants[0].clone().digest(Order::NewestFirst)
        );
    }

    #[test]
    fn plans_cover_what_the_cursor_has_not() {
        let plan = |order, after| ScanPlan::new(order, after, 10);
        assert_eq!(
            plan(Order::NewestFirst, None).unwrap(),
            ScanPlan {
                first_seq: 1,
                last_seq: 10,
                order: Order::NewestFirst
            }
        );
        assert_eq!(plan(Order::NewestFirst, Some(4)).unwrap().last_seq, 3);
        assert_eq!(plan(Order::NewestFirst, Some(1)), None);
        assert_eq!(plan(Order::NewestFirst, Some(0)), None);
        // A cursor from before a newer event arrived still continues below itself.
        assert_eq!(plan(Order::NewestFirst, Some(50)).unwrap().last_seq, 10);
        assert_eq!(plan(Order::OldestFirst, None).unwrap().first_seq, 1);
        assert_eq!(plan(Order::OldestFirst, Some(4)).unwrap().first_seq, 5);
        assert_eq!(plan(Order::OldestFirst, Some(10)), None);
        assert_eq!(ScanPlan::new(Order::NewestFirst, None, 0), None);
        assert_eq!(ScanPlan::new(Order::OldestFirst, None, 0), None);
    }

    #[test]
    fn pages_stop_at_the_limit_and_end_without_a_cursor() {
        let events: Vec<StoredEvent> = (1..=7)
            .map(|seq| {
                stored("t", seq, |event| {
                    if seq % 2 == 0 {
                        event.outcome = Outcome::Failure;
                    }
                })
            })
            .collect();
        let failures = Filters {
            outcome: Some(Outcome::Failure),
            ..Filters::default()
        };
        let mut query = Query::new("t", failures, 2, Order::NewestFirst);
        let first = scan(&query, &events).unwrap();
        assert_eq!(seqs(&first), vec![6, 4]);
        assert_eq!(first.next_after_seq, Some(4));
        assert!(!first.partial);
        query.after_seq = first.next_after_seq;
        let second = scan(&query, &events).unwrap();
        assert_eq!(seqs(&second), vec![2]);
        assert_eq!(second.next_after_seq, None);
        assert_eq!(second.scanned_to_seq, Some(1));

        // A page that fills exactly at the stream's end needs no further request.
        let mut oldest = Query::new("t", Filters::default(), 7, Order::OldestFirst);
        let all = scan(&oldest, &events).unwrap();
        assert_eq!(seqs(&all), (1..=7).collect::<Vec<_>>());
        assert_eq!(all.next_after_seq, None);
        oldest.after_seq = Some(7);
        assert!(scan(&oldest, &events).unwrap().events.is_empty());
    }

    #[test]
    fn the_examined_bound_ends_a_page_early_with_a_cursor() {
        let events: Vec<StoredEvent> = (1..=10).map(|seq| stored("t", seq, |_| {})).collect();
        let nothing = Filters {
            actor_id: Some("nobody".into()),
            ..Filters::default()
        };
        let mut query = Query::new("t", nothing, 50, Order::OldestFirst);
        query.examined_max = 4;
        let page = scan(&query, &events).unwrap();
        assert!(page.events.is_empty());
        assert!(page.partial);
        assert_eq!(page.next_after_seq, Some(4));
        assert_eq!(page.examined, 4);
        query.after_seq = Some(8);
        let last = scan(&query, &events).unwrap();
        // The bound was not reached before the end: not partial, no cursor.
        assert!(!last.partial);
        assert_eq!(last.next_after_seq, None);
        assert_eq!(last.examined, 2);
    }

    #[test]
    fn a_gap_or_a_foreign_record_is_reported() {
        let query = Query::new("t", Filters::default(), 50, Order::OldestFirst);
        let with_gap = [stored("t", 1, |_| {}), stored("t", 3, |_| {})];
        let plan = ScanPlan::new(Order::OldestFirst, None, 3).unwrap();
        let mut gap = Scan::new(&query, plan);
        assert_eq!(gap.offer(with_gap[0].clone(), &[]).unwrap(), Flow::Continue);
        assert!(matches!(
            gap.offer(with_gap[1].clone(), &[]),
            Err(ReadError::Corrupt { .. })
        ));

        let mut foreign = stored("u", 1, |_| {});
        foreign.stream = stream_name("t", 0);
        let mut other = Scan::new(&query, plan);
        assert!(matches!(
            other.offer(foreign, &[]),
            Err(ReadError::Corrupt { .. })
        ));

        // A range that ends early is missing its last events.
        let mut short = Scan::new(&query, plan);
        short.offer(stored("t", 1, |_| {}), &[]).unwrap();
        assert!(matches!(short.finish(), Err(ReadError::Corrupt { .. })));
    }
}
