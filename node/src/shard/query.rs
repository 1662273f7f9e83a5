//! Tenant-scoped queries: filters, ordering, keyset pages and a bound on the work one
//! request may do (docs/QUERY.md).
//!
//! Results are ordered by `(occurred_at, stream, seq)`, newest first by default. Below
//! the index watermark a query takes one of two access paths, chosen by [`choose_path`]
//! from tantivy's term statistics: a walk of the tenant's time index (`sN.tindex`),
//! whose summaries (`index/summary.rs`) rule most non-matching events out without
//! reading them, or tantivy's positions for the filter's terms. Above the watermark it
//! reads the tail of the stream from the store. Every event served is read from the
//! store and tested against the whole filter, whatever the path.
//!
//! One request reads at most [`EXAMINED_PER_REQUEST_MAX`] events; when it runs out
//! before filling the page it answers with what it found, `partial`, and a cursor after
//! the last position it examined, so no request does unbounded work and paging never
//! skips or repeats an event.

use tantivy::Term;

use super::reader::{canonical, tenant_state, ReadEvent};
pub use crate::index::search::Position;
use crate::index::search::{
    attrs_test, count_admitted, has_index_terms, term_query, top_positions, Bounds, IndexView,
    RangeStats,
};
use crate::index::summary::SummaryFilter;
use crate::index::time_blocks::Walk;
use crate::index::{stream_value, NodeIndex, Terms};
use crate::ledger::StoredEvent;
use crate::ledger::{leaf_hash, stream_name};
use crate::query::{ActionMatch, Filters, Order, ReadError};
use crate::storage::event_codec::Canonical;
use crate::storage::ShardKeyspaces;

/// Events per page when the request does not say.
pub const LIMIT_DEFAULT: usize = 50;
/// Events per page at most: 1,000 events of ~550 bytes is ~0.6 MB of response.
pub const LIMIT_MAX: usize = 1_000;
/// Events one request reads and tests at most. An examined event costs ~1.2 µs (one
/// iterator step and one canonical decode: a release node scanned a 30,000-event tenant
/// in 36 ms), so this bounds a request to ~0.12 s of one core and its memory to
/// `LIMIT_MAX` events, whatever the filter and however large the tenant.
pub const EXAMINED_PER_REQUEST_MAX: u64 = 100_000;
/// Time-index entries a summary rules out that count as one read against
/// [`EXAMINED_PER_REQUEST_MAX`] (an entry passed over is one iterator step).
const SKIPS_PER_READ: u64 = 16;

/// A query of one tenant, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub tenant_id: String,
    pub filters: Filters,
    /// 1 to [`LIMIT_MAX`].
    pub limit: usize,
    pub order: Order,
    /// From the cursor: every position up to this one in `order` has been considered.
    pub after: Option<Position>,
    /// [`EXAMINED_PER_REQUEST_MAX`] except in tests.
    pub examined_max: u64,
    /// The access path; `None` lets the planner choose (tests force each).
    pub path: Option<AccessPath>,
}

impl Query {
    pub fn new(tenant_id: &str, filters: Filters, limit: usize, order: Order) -> Query {
        Query {
            tenant_id: tenant_id.to_string(),
            filters,
            limit,
            order,
            after: None,
            examined_max: EXAMINED_PER_REQUEST_MAX,
            path: None,
        }
    }
}

/// How a query finds its events below the index watermark (above it, the tail of the
/// stream is always read from the store).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessPath {
    /// Walk the time index in order, read each event and test the filter: cheap when
    /// the filter matches many events (or there is none).
    TimeIndex,
    /// Ask tantivy for the first positions matching the filter's terms: cheap when the
    /// filter is selective.
    Terms,
}

impl AccessPath {
    pub fn name(self) -> &'static str {
        match self {
            AccessPath::TimeIndex => "time_index",
            AccessPath::Terms => "terms",
        }
    }
}

/// Events of the unindexed tail one query reads at most. The tail is what the indexer
/// has not made visible yet: under sustained ingest at most ~1 s of a stream's events.
/// A longer one means the index is being rebuilt; queries are then refused as
/// unavailable (with the rebuild's progress in `status`) rather than scanning millions.
pub const TAIL_EVENTS_MAX: u64 = 200_000;

/// One page of results.
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// The tenant's stream (`"{tenant}/0"`).
    pub stream: String,
    pub events: Vec<ReadEvent>,
    /// Where the next page continues (after this position, in order); `None` when
    /// there is nothing more.
    pub next_after: Option<Position>,
    /// The page stopped at the examined-events bound before it was full.
    pub partial: bool,
    /// The last position examined, if any.
    pub scanned_to: Option<Position>,
    pub examined: u64,
    /// The access path the planner chose (`None` for an unknown tenant).
    pub path: Option<AccessPath>,
    /// Events of the stream the indexes did not cover yet (read from the store).
    pub tail_events: u64,
}

/// Whether `a` comes before `b` in `order`.
fn before(order: Order, a: Position, b: Position) -> bool {
    match order {
        Order::NewestFirst => a > b,
        Order::OldestFirst => a < b,
    }
}

/// The position of an event in keyset order.
pub fn position_of(event: &StoredEvent) -> Position {
    (event.event.occurred_at_ns, event.seq)
}

/// Runs a query against a shard's committed state and the node's indexes. Blocking:
/// call it on the blocking pool.
///
/// The stream is read in two parts: below the index watermark (the first seq the
/// visible indexes do not hold) through the chosen [`AccessPath`], and from the
/// watermark to the stream's last seq (the tail) straight from the store. Events and
/// tenant state commit in one batch, so every seq up to the last one read is present;
/// so no acknowledged event is ever missing from a result.
pub fn run(
    keyspaces: &ShardKeyspaces,
    index: &NodeIndex,
    query: &Query,
) -> Result<Page, ReadError> {
    assert!((1..=LIMIT_MAX).contains(&query.limit), "limit is validated");
    let stream = stream_name(&query.tenant_id, 0);
    let Some(tenant) = tenant_state(keyspaces, &query.tenant_id)? else {
        return Ok(Page {
            stream,
            ..Page::default()
        });
    };
    let visible = index.visible();
    let last_seq = tenant.next_seq - 1;
    let tail_from = visible
        .tail_from(keyspaces.shard, tenant.stream_no)
        .min(last_seq + 1);
    let bounds = Bounds {
        stream: stream_value(keyspaces.shard, tenant.stream_no),
        start_ns: query.filters.start_time_ns,
        end_ns: query.filters.end_time_ns,
        after: query.after,
        order: query.order,
        seq_below: tail_from,
        attrs: attrs_test(&query.filters),
    };
    let reader = StreamReader {
        keyspaces,
        query,
        stream: &stream,
        stream_no: tenant.stream_no,
        summary: SummaryFilter::new(index.terms(), &query.tenant_id, &query.filters),
    };
    let tail = reader.tail(tail_from, last_seq, &bounds)?;
    let path = query
        .path
        .unwrap_or_else(|| choose_path(index, &visible.view, &bounds, query));
    let mut page = match path {
        AccessPath::Terms => match reader.by_terms(index, &visible.view, &bounds, tail)? {
            Some(page) => page,
            // Two identifiers shared a 64-bit term (index/schema.rs): this query walks
            // the time index instead.
            None => reader.by_time(&bounds, reader.tail(tail_from, last_seq, &bounds)?)?,
        },
        AccessPath::TimeIndex => reader.by_time(&bounds, tail)?,
    };
    page.path = Some(path);
    page.tail_events = last_seq + 1 - tail_from;
    Ok(page)
}

/// Counts a tenant's events matching a filter, from the indexes and the tail, without
/// reading indexed events.
pub fn count(
    keyspaces: &ShardKeyspaces,
    index: &NodeIndex,
    tenant_id: &str,
    filters: &Filters,
) -> Result<u64, ReadError> {
    let Some(tenant) = tenant_state(keyspaces, tenant_id)? else {
        return Ok(0);
    };
    let visible = index.visible();
    let last_seq = tenant.next_seq - 1;
    let tail_from = visible
        .tail_from(keyspaces.shard, tenant.stream_no)
        .min(last_seq + 1);
    let bounds = Bounds {
        stream: stream_value(keyspaces.shard, tenant.stream_no),
        start_ns: filters.start_time_ns,
        end_ns: filters.end_time_ns,
        after: None,
        order: Order::NewestFirst,
        seq_below: tail_from,
        attrs: attrs_test(filters),
    };
    let query = Query::new(tenant_id, filters.clone(), 1, Order::NewestFirst);
    let stream = stream_name(tenant_id, 0);
    let reader = StreamReader {
        keyspaces,
        query: &query,
        stream: &stream,
        stream_no: tenant.stream_no,
        // Counts read only the tail (the indexed events are counted by tantivy).
        summary: SummaryFilter::default(),
    };
    let tail = reader.tail(tail_from, last_seq, &bounds)?;
    let query = term_query(
        index.fields(),
        index.terms(),
        tenant_id,
        filters,
        bounds.stream,
    );
    let indexed = if filters.request_id.is_some() {
        // Request ids are indexed in buckets (`index::schema`): the few events of the
        // tenant's bucket are read and the request's counted.
        let cap = EXAMINED_PER_REQUEST_MAX as usize;
        let positions =
            top_positions(&visible.view, &*query, &bounds, cap + 1).map_err(index_error)?;
        if positions.len() > cap {
            return Err(ReadError::TooBroad {
                examined: EXAMINED_PER_REQUEST_MAX,
            });
        }
        reader.verified(&positions)?.0.len() as u64
    } else {
        count_admitted(&visible.view, &*query, &bounds).map_err(index_error)?
    };
    Ok(indexed + tail.len() as u64)
}

/// The planner: the time index when the filter matches a large share of the tenant's
/// events (a page then walks few entries), the terms when it is selective. Costs, on
/// this machine: an event read and tested on the time-index path ~1.5 µs, an entry its
/// summary rules out ~0.2 µs (one iterator step); a matching document visited by the
/// terms path (postings and fast-field reads) ~20 ns.
///
/// Term counts are taken in the segments that overlap the query's time bounds, so a
/// recent window of a frequent action weighs what the terms path would visit there.
/// The tenant's documents there are estimated from its indexed events and the share
/// of the index those segments hold (no term counts them: `index::schema`). Actor type
/// and result are columns, not terms: they do not narrow the estimate, which leaves a
/// filter of only those (each value a large share of a tenant's events) to the walk.
fn choose_path(index: &NodeIndex, view: &IndexView, bounds: &Bounds, query: &Query) -> AccessPath {
    const READ_COST_OVER_VISIT: u64 = 75;
    const SKIP_COST_OVER_VISIT: u64 = 10;
    if !has_index_terms(&query.filters) {
        return AccessPath::TimeIndex;
    }
    let fields = index.fields();
    let terms = index.terms();
    let tenant = &query.tenant_id;
    let stats = RangeStats::new(view, bounds);
    let freq = |term: Term| stats.doc_freq(&term).unwrap_or(u64::MAX);
    let indexed = bounds.seq_below.saturating_sub(1);
    let tenant_docs = (u128::from(indexed) * u128::from(stats.docs())
        / u128::from(view.docs().max(1)))
    .clamp(1, u128::from(u64::MAX)) as u64;
    let filters = &query.filters;
    let mut matching = tenant_docs;
    let mut consider = |docs: u64| matching = matching.min(docs);
    if let Some(actor_id) = &filters.actor_id {
        consider(freq(terms.actor(fields, tenant, actor_id)));
    }
    if let Some(ActionMatch::Exact(action)) = &filters.action {
        consider(freq(Terms::vocabulary(fields.action, tenant, action)));
    }
    if let Some(resource_type) = &filters.resource_type {
        consider(freq(Terms::vocabulary(
            fields.resource_type,
            tenant,
            resource_type,
        )));
    }
    if let Some(resource_id) = &filters.resource_id {
        consider(freq(terms.resource(fields, tenant, resource_id)));
    }
    if let Some(request_id) = &filters.request_id {
        consider(freq(terms.request(fields, tenant, request_id)));
    }
    // Time-index entries a page walks, if matches are spread evenly. Both paths read
    // the page's events; the walk also pays for each entry it passes over: a read when
    // the summaries cannot test the whole filter, far less when they can.
    let entries = (query.limit as u64).saturating_mul(tenant_docs) / matching.max(1);
    let entry_cost = if SummaryFilter::decides(filters) {
        SKIP_COST_OVER_VISIT
    } else {
        READ_COST_OVER_VISIT
    };
    if entries.saturating_mul(entry_cost) < matching {
        AccessPath::TimeIndex
    } else {
        AccessPath::Terms
    }
}

fn index_error(error: tantivy::TantivyError) -> ReadError {
    ReadError::Corrupt {
        location: "query index".into(),
        reason: format!("{error}; `trailctl reindex` rebuilds it from the store"),
    }
}

/// Reads one tenant's stream for one query.
struct StreamReader<'a> {
    keyspaces: &'a ShardKeyspaces,
    query: &'a Query,
    stream: &'a str,
    stream_no: u32,
    /// The filter as the time index's summaries can test it.
    summary: SummaryFilter,
}

impl StreamReader<'_> {
    /// Reads, decodes and checks the event at `seq`: its key, seq, stream and tenant.
    fn event(&self, seq: u64) -> Result<(StoredEvent, Canonical), ReadError> {
        let location = || format!("stream {} seq {seq}", self.stream);
        let value = self
            .keyspaces
            .event_value(self.stream_no, seq)?
            .ok_or_else(|| ReadError::Corrupt {
                location: location(),
                reason: "event is missing".into(),
            })?;
        let value = canonical(self.keyspaces, location, value)?;
        let stored = self.checked(seq, &value)?;
        Ok((stored, value))
    }

    fn checked(&self, seq: u64, value: &[u8]) -> Result<StoredEvent, ReadError> {
        let location = || format!("stream {} seq {seq}", self.stream);
        let stored = StoredEvent::decode_canonical(value).map_err(|error| ReadError::Corrupt {
            location: location(),
            reason: error.to_string(),
        })?;
        if stored.seq != seq {
            return Err(ReadError::Corrupt {
                location: location(),
                reason: format!("record says seq {}", stored.seq),
            });
        }
        // Tenant isolation does not rest on key arithmetic alone: a record of another
        // tenant inside this tenant's range is reported, never served.
        if stored.event.tenant_id != self.query.tenant_id || stored.stream != self.stream {
            return Err(ReadError::Corrupt {
                location: location(),
                reason: "the record belongs to another stream".into(),
            });
        }
        Ok(stored)
    }

    /// The tail's matching events after the cursor, in order.
    fn tail(&self, from: u64, last: u64, bounds: &Bounds) -> Result<Vec<ReadEvent>, ReadError> {
        if from > last {
            return Ok(Vec::new());
        }
        let length = last + 1 - from;
        if length > TAIL_EVENTS_MAX {
            return Err(ReadError::IndexBehind { events: length });
        }
        let mut matches = Vec::new();
        let mut expected = from;
        for item in self.keyspaces.event_values(self.stream_no, from..=last) {
            let (_, value) = item?;
            let value = canonical(
                self.keyspaces,
                || format!("stream {} seq {expected}", self.stream),
                value,
            )?;
            let stored = self.checked(expected, &value)?;
            expected += 1;
            let (occurred_at_ns, seq) = position_of(&stored);
            let tail_bounds = Bounds {
                seq_below: u64::MAX,
                ..*bounds
            };
            if tail_bounds.admits(bounds.stream, occurred_at_ns, seq)
                && self.query.filters.matches(&stored.event)
            {
                matches.push(ReadEvent {
                    leaf_hash: leaf_hash(&value),
                    stored,
                });
            }
        }
        if expected != last + 1 {
            return Err(ReadError::Corrupt {
                location: format!("stream {} seq {expected}", self.stream),
                reason: "event is missing".into(),
            });
        }
        let order = self.query.order;
        matches.sort_unstable_by(|a, b| {
            let (a, b) = (position_of(&a.stored), position_of(&b.stored));
            if before(order, a, b) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
        Ok(matches)
    }

    /// The terms path: tantivy's first `limit + 1` positions below the watermark whose
    /// events are the filter's (a position found through a shared term is read and
    /// passed over), merged with the tail. `None` when it would read more than
    /// `examined_max` events: the caller then takes the time index, which pages.
    fn by_terms(
        &self,
        index: &NodeIndex,
        view: &IndexView,
        bounds: &Bounds,
        tail: Vec<ReadEvent>,
    ) -> Result<Option<Page>, ReadError> {
        let limit = self.query.limit;
        let query = term_query(
            index.fields(),
            index.terms(),
            &self.query.tenant_id,
            &self.query.filters,
            bounds.stream,
        );
        let mut indexed = Vec::with_capacity(limit + 1);
        let mut want = limit + 1;
        // What a request may read: `examined_max`, or a page and one more.
        let cap = (self.query.examined_max as usize).max(limit + 1);
        let mut examined = 0;
        loop {
            let positions = top_positions(view, &*query, bounds, want).map_err(index_error)?;
            // The first `examined` are those of the round before (the order is total).
            let (matched, read) = self.verified(&positions[examined as usize..])?;
            indexed.extend(matched);
            examined += read;
            if indexed.len() > limit || positions.len() < want {
                break;
            }
            // Some positions were another event's (request ids share bucket terms,
            // identifiers may share a 64-bit term): read on, within the cap.
            if want >= cap {
                return Ok(None);
            }
            want = (want * 2).min(cap);
        }
        let mut merged = merge(self.query.order, indexed, tail);
        let more = merged.len() > limit;
        merged.truncate(limit);
        let next_after = if more {
            merged.last().map(|event| position_of(&event.stored))
        } else {
            None
        };
        Ok(Some(Page {
            stream: self.stream.to_string(),
            scanned_to: merged.last().map(|event| position_of(&event.stored)),
            events: merged,
            next_after,
            partial: false,
            examined,
            path: None,
            tail_events: 0,
        }))
    }

    /// An index entry whose event is not the one it describes.
    fn index_mismatch(&self, index: &str, seq: u64) -> ReadError {
        ReadError::Corrupt {
            location: format!("stream {} seq {seq}", self.stream),
            reason: format!(
                "the {index} does not describe this event; `trailctl reindex` rebuilds it \
                 from the store"
            ),
        }
    }

    /// The events at index positions that are the filter's; the others were found
    /// through a term they share with it. Returns them and how many it read.
    fn verified(&self, positions: &[Position]) -> Result<(Vec<ReadEvent>, u64), ReadError> {
        let mut matched = Vec::new();
        for &(occurred_at_ns, seq) in positions {
            let (stored, value) = self.event(seq)?;
            if stored.event.occurred_at_ns != occurred_at_ns {
                return Err(self.index_mismatch("query index", seq));
            }
            if self.query.filters.matches(&stored.event) {
                matched.push(ReadEvent {
                    leaf_hash: leaf_hash(&value),
                    stored,
                });
            }
        }
        Ok((matched, positions.len() as u64))
    }

    /// The time-index path: walk the stream's time index in order from the cursor,
    /// read each event, test the filter, and merge in the tail's matches as the walk
    /// passes them; at most `examined_max` events read.
    fn by_time(&self, bounds: &Bounds, tail: Vec<ReadEvent>) -> Result<Page, ReadError> {
        let order = self.query.order;
        let limit = self.query.limit;
        let (low, high) = position_range(bounds);
        let walk = Walk::new(
            self.keyspaces,
            self.stream_no,
            low,
            high,
            order == Order::NewestFirst,
        );
        let mut tail = tail.into_iter().peekable();
        let mut events = Vec::with_capacity(limit.min(64));
        let mut examined = 0u64;
        let mut skipped = 0u64;
        let mut last_examined = None;
        let mut full = false;
        let mut out_of_budget = false;
        for entry in walk {
            let entry = entry?;
            let (occurred_at_ns, seq) = entry.position();
            let summary = entry.summary;
            if !bounds.admits(bounds.stream, occurred_at_ns, seq) {
                // Above the watermark (the tail has it) or outside the window.
                continue;
            }
            let here = (occurred_at_ns, seq);
            while let Some(next) =
                tail.next_if(|event| before(order, position_of(&event.stored), here))
            {
                events.push(next);
                if events.len() == limit {
                    full = true;
                    break;
                }
            }
            if full {
                break;
            }
            if !self.summary.may_match(&summary) {
                // The summary rules the event out: not read.
                skipped += 1;
                last_examined = Some(here);
                if examined + skipped / SKIPS_PER_READ >= self.query.examined_max {
                    out_of_budget = true;
                    break;
                }
                continue;
            }
            let (stored, value) = self.event(seq)?;
            if stored.event.occurred_at_ns != occurred_at_ns {
                return Err(self.index_mismatch("time index", seq));
            }
            examined += 1;
            last_examined = Some(here);
            if self.query.filters.matches(&stored.event) {
                events.push(ReadEvent {
                    leaf_hash: leaf_hash(&value),
                    stored,
                });
                if events.len() == limit {
                    full = true;
                    break;
                }
            }
            if examined + skipped / SKIPS_PER_READ >= self.query.examined_max {
                out_of_budget = true;
                break;
            }
        }
        if !full && !out_of_budget {
            // The walk ran out: the rest of the tail follows.
            for event in tail.by_ref() {
                events.push(event);
                if events.len() == limit {
                    full = true;
                    break;
                }
            }
        }
        let last_returned = events.last().map(|event| position_of(&event.stored));
        // A full page continues after its last event (the next page may be empty).
        let (next_after, partial) = if full {
            (last_returned, false)
        } else if out_of_budget {
            (last_examined, true)
        } else {
            (None, false)
        };
        let scanned_to = match (last_examined, last_returned) {
            (Some(a), Some(b)) => Some(if before(order, a, b) { b } else { a }),
            (a, b) => a.or(b),
        };
        Ok(Page {
            stream: self.stream.to_string(),
            events,
            next_after,
            partial,
            scanned_to,
            examined,
            path: None,
            tail_events: 0,
        })
    }
}

/// The positions the bounds can admit, `[low, high)`.
fn position_range(bounds: &Bounds) -> (Position, Position) {
    let mut low = (bounds.start_ns.unwrap_or(i64::MIN), 0);
    let mut high = match bounds.end_ns {
        Some(end) => (end, 0),
        None => (i64::MAX, u64::MAX),
    };
    if let Some((occurred_at_ns, seq)) = bounds.after {
        match bounds.order {
            // Strictly below the cursor: the range's end is exclusive.
            Order::NewestFirst => high = high.min((occurred_at_ns, seq)),
            // Strictly above it.
            Order::OldestFirst => {
                let after = match seq.checked_add(1) {
                    Some(next) => (occurred_at_ns, next),
                    None => (occurred_at_ns.saturating_add(1), 0),
                };
                low = low.max(after);
            }
        }
    }
    (low, high)
}

/// Two lists, each in `order`, merged in `order`.
fn merge(order: Order, a: Vec<ReadEvent>, b: Vec<ReadEvent>) -> Vec<ReadEvent> {
    let mut merged = Vec::with_capacity(a.len() + b.len());
    let mut a = a.into_iter().peekable();
    let mut b = b.into_iter().peekable();
    loop {
        let take_a = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => before(order, position_of(&x.stored), position_of(&y.stored)),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        merged.push(if take_a { a.next() } else { b.next() }.expect("peeked"));
    }
    merged
}
