//! Reading the secondary index: the tantivy query of a filter, and two collectors that
//! read only fast fields: the top `k` positions in keyset order, and a count.
//!
//! Positions are `(occurred_at, seq)` of one stream. The collectors take the bounds
//! that the term query cannot express (the time range, the cursor, the stream, and the
//! index watermark) and apply them per document from the columns.

use std::collections::BinaryHeap;
use std::ops::Bound;

use tantivy::collector::{Collector, SegmentCollector};
use tantivy::columnar::Column;
use tantivy::query::{BooleanQuery, EnableScoring, Occur, Query, RangeQuery, TermQuery};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, Score, Searcher, SegmentOrdinal, SegmentReader, Term};

use super::schema::{actor_kind_text, outcome_text, Fields, Terms};
use crate::shard::query::{ActionMatch, Filters, Order};

/// Where a document sits in a stream's keyset order.
pub type Position = (i64, u64);

/// The bounds on positions that one search applies from the columns.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The tenant's stream (`schema::stream_value`).
    pub stream: u64,
    /// `occurred_at` from (inclusive) and to (exclusive).
    pub start_ns: Option<i64>,
    pub end_ns: Option<i64>,
    /// Only positions strictly after this one in `order` (the cursor).
    pub after: Option<Position>,
    pub order: Order,
    /// Only seqs below this: the rest of the stream is not in this searcher.
    pub seq_below: u64,
}

impl Bounds {
    pub fn admits(&self, stream: u64, occurred_at_ns: i64, seq: u64) -> bool {
        if stream != self.stream || seq >= self.seq_below {
            return false;
        }
        if self.start_ns.is_some_and(|start| occurred_at_ns < start)
            || self.end_ns.is_some_and(|end| occurred_at_ns >= end)
        {
            return false;
        }
        match (self.after, self.order) {
            (None, _) => true,
            (Some(after), Order::NewestFirst) => (occurred_at_ns, seq) < after,
            (Some(after), Order::OldestFirst) => (occurred_at_ns, seq) > after,
        }
    }
}

/// Whether the filter has a term the index can look up (otherwise only the tenant
/// clause and the bounds select).
pub fn has_terms(filters: &Filters) -> bool {
    filters.actor_id.is_some()
        || filters.actor_kind.is_some()
        || filters.action.is_some()
        || filters.resource_type.is_some()
        || filters.resource_id.is_some()
        || filters.outcome.is_some()
        || filters.request_id.is_some()
}

/// The term query of a tenant's filter: every clause is a Must; the time bounds are
/// the collectors' business.
pub fn term_query(
    fields: &Fields,
    terms: &Terms,
    tenant_id: &str,
    filters: &Filters,
) -> Box<dyn Query> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let mut must = |term: Term| {
        clauses.push((
            Occur::Must,
            Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
        ));
    };
    // Every other term is scoped to the tenant already (schema.rs), so the tenant's own
    // term (all of its documents: millions for a whale) is only needed alone: in an
    // intersection it would only cost seeks.
    if !has_terms(filters) {
        must(terms.tenant(fields, tenant_id));
    }
    if let Some(actor_id) = &filters.actor_id {
        must(terms.actor(fields, tenant_id, actor_id));
    }
    if let Some(kind) = filters.actor_kind {
        must(Terms::vocabulary(
            fields.actor_type,
            tenant_id,
            actor_kind_text(kind),
        ));
    }
    if let Some(ActionMatch::Exact(action)) = &filters.action {
        must(Terms::vocabulary(fields.action, tenant_id, action));
    }
    if let Some(resource_type) = &filters.resource_type {
        must(Terms::vocabulary(
            fields.resource_type,
            tenant_id,
            resource_type,
        ));
    }
    if let Some(resource_id) = &filters.resource_id {
        must(terms.resource(fields, tenant_id, resource_id));
    }
    if let Some(outcome) = filters.outcome {
        must(Terms::vocabulary(
            fields.result,
            tenant_id,
            outcome_text(outcome),
        ));
    }
    if let Some(request_id) = &filters.request_id {
        must(terms.request(fields, tenant_id, request_id));
    }
    if let Some(ActionMatch::Prefix(prefix)) = &filters.action {
        // "auth." .. "auth/" holds exactly the actions under "auth." ('/' follows '.').
        let upper = format!("{}/", &prefix[..prefix.len() - 1]);
        clauses.push((
            Occur::Must,
            Box::new(RangeQuery::new(
                Bound::Included(Terms::vocabulary(fields.action, tenant_id, prefix)),
                Bound::Excluded(Terms::vocabulary(fields.action, tenant_id, &upper)),
            )),
        ));
    }
    Box::new(BooleanQuery::new(clauses))
}

/// A segment's ordinal, reader and the range of `occurred_at` in it.
struct SegmentSpan<'a> {
    ordinal: SegmentOrdinal,
    reader: &'a SegmentReader,
    occ_min: i64,
    occ_max: i64,
}

/// The segments that can hold a document inside the time bounds, with their
/// `occurred_at` ranges (column statistics, so no document is read).
fn segments_in_range<'a>(
    searcher: &'a Searcher,
    bounds: &Bounds,
) -> tantivy::Result<Vec<SegmentSpan<'a>>> {
    let mut spans = Vec::new();
    for (ordinal, reader) in searcher.segment_readers().iter().enumerate() {
        if reader.num_docs() == 0 {
            continue;
        }
        let occ = reader.fast_fields().i64("occ")?;
        let (occ_min, occ_max) = (occ.min_value(), occ.max_value());
        if bounds.start_ns.is_some_and(|start| occ_max < start)
            || bounds.end_ns.is_some_and(|end| occ_min >= end)
        {
            continue;
        }
        spans.push(SegmentSpan {
            ordinal: ordinal as SegmentOrdinal,
            reader,
            occ_min,
            occ_max,
        });
    }
    Ok(spans)
}

/// Term statistics of the segments that can hold a document inside the time bounds
/// (per-segment term dictionaries; no posting is read): the planner's estimate. The
/// segments are found once, for all the terms of a query.
pub struct RangeStats<'a> {
    spans: Vec<SegmentSpan<'a>>,
}

impl<'a> RangeStats<'a> {
    pub fn new(searcher: &'a Searcher, bounds: &Bounds) -> tantivy::Result<RangeStats<'a>> {
        Ok(RangeStats {
            spans: segments_in_range(searcher, bounds)?,
        })
    }

    /// Documents holding `term` in those segments.
    pub fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let mut docs = 0;
        for span in &self.spans {
            docs += u64::from(span.reader.inverted_index(term.field())?.doc_freq(term)?);
        }
        Ok(docs)
    }
}

/// The first `k` admitted positions of a query in keyset order. Segments are visited
/// from the one with the newest (or oldest) `occurred_at` on, and the search stops
/// when no segment left can hold a position before the `k`th found: segments are
/// written in ingest order, so the newest page of a term usually touches only the
/// newest few small segments, not the big merged ones of the past.
pub fn top_positions(
    searcher: &Searcher,
    query: &dyn Query,
    bounds: &Bounds,
    k: usize,
) -> tantivy::Result<Vec<Position>> {
    let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
    let mut spans = segments_in_range(searcher, bounds)?;
    match bounds.order {
        Order::NewestFirst => spans.sort_by_key(|span| std::cmp::Reverse(span.occ_max)),
        Order::OldestFirst => spans.sort_by_key(|span| span.occ_min),
    }
    let collector = TopPositions { bounds: *bounds, k };
    let mut best: Vec<Position> = Vec::with_capacity(2 * k);
    for span in spans {
        if best.len() >= k {
            // Ties on occurred_at are broken by seq, so a segment whose range only
            // touches the kth position's time may still hold one before it.
            let kth = best[k - 1].0;
            let beyond = match bounds.order {
                Order::NewestFirst => span.occ_max < kth,
                Order::OldestFirst => span.occ_min > kth,
            };
            if beyond {
                break;
            }
        }
        best.extend(collector.collect_segment(&*weight, span.ordinal, span.reader)?);
        sort_in_order(&mut best, bounds.order);
        best.truncate(k);
    }
    Ok(best)
}

/// How many documents of a query the bounds admit; segments outside the time bounds
/// are skipped without reading a document.
pub fn count_admitted(
    searcher: &Searcher,
    query: &dyn Query,
    bounds: &Bounds,
) -> tantivy::Result<u64> {
    let weight = query.weight(EnableScoring::disabled_from_searcher(searcher))?;
    let collector = CountAdmitted { bounds: *bounds };
    let mut count = 0;
    for span in segments_in_range(searcher, bounds)? {
        count += collector.collect_segment(&*weight, span.ordinal, span.reader)?;
    }
    Ok(count)
}

/// The columns both collectors read.
struct Columns {
    occ: Column<i64>,
    stream: Column<u64>,
    seq: Column<u64>,
}

impl Columns {
    fn open(segment: &SegmentReader) -> tantivy::Result<Columns> {
        let fast = segment.fast_fields();
        Ok(Columns {
            occ: fast.i64("occ")?,
            stream: fast.u64("stream")?,
            seq: fast.u64("seq")?,
        })
    }

    fn position(&self, doc: DocId, bounds: &Bounds) -> Option<Position> {
        let occ = self.occ.first(doc)?;
        let stream = self.stream.first(doc)?;
        let seq = self.seq.first(doc)?;
        bounds.admits(stream, occ, seq).then_some((occ, seq))
    }
}

/// The first `k` admitted positions in keyset order, sorted in that order.
pub struct TopPositions {
    pub bounds: Bounds,
    pub k: usize,
}

/// A heap entry whose greatest element is the one to drop first.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Keyed {
    /// Newest first keeps the largest positions: drop the smallest first.
    Newest(std::cmp::Reverse<Position>),
    Oldest(Position),
}

impl Keyed {
    fn new(order: Order, position: Position) -> Keyed {
        match order {
            Order::NewestFirst => Keyed::Newest(std::cmp::Reverse(position)),
            Order::OldestFirst => Keyed::Oldest(position),
        }
    }

    fn position(&self) -> Position {
        match self {
            Keyed::Newest(std::cmp::Reverse(position)) | Keyed::Oldest(position) => *position,
        }
    }
}

pub struct TopSegment {
    columns: Columns,
    bounds: Bounds,
    k: usize,
    heap: BinaryHeap<Keyed>,
}

impl SegmentCollector for TopSegment {
    type Fruit = Vec<Position>;

    fn collect(&mut self, doc: DocId, _score: Score) {
        let Some(position) = self.columns.position(doc, &self.bounds) else {
            return;
        };
        let keyed = Keyed::new(self.bounds.order, position);
        if self.heap.len() < self.k {
            self.heap.push(keyed);
        } else if self.heap.peek().is_some_and(|worst| keyed < *worst) {
            self.heap.pop();
            self.heap.push(keyed);
        }
    }

    fn harvest(self) -> Vec<Position> {
        self.heap
            .into_iter()
            .map(|keyed| keyed.position())
            .collect()
    }
}

impl Collector for TopPositions {
    type Fruit = Vec<Position>;
    type Child = TopSegment;

    fn for_segment(
        &self,
        _segment_local_id: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<TopSegment> {
        Ok(TopSegment {
            columns: Columns::open(segment)?,
            bounds: self.bounds,
            k: self.k,
            heap: BinaryHeap::with_capacity(self.k + 1),
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<Vec<Position>>) -> tantivy::Result<Vec<Position>> {
        let mut all: Vec<Position> = fruits.into_iter().flatten().collect();
        sort_in_order(&mut all, self.bounds.order);
        all.truncate(self.k);
        Ok(all)
    }
}

pub fn sort_in_order(positions: &mut [Position], order: Order) {
    match order {
        Order::NewestFirst => positions.sort_unstable_by(|a, b| b.cmp(a)),
        Order::OldestFirst => positions.sort_unstable(),
    }
}

/// How many documents the bounds admit.
pub struct CountAdmitted {
    pub bounds: Bounds,
}

pub struct CountSegment {
    columns: Columns,
    bounds: Bounds,
    count: u64,
}

impl SegmentCollector for CountSegment {
    type Fruit = u64;

    fn collect(&mut self, doc: DocId, _score: Score) {
        if self.columns.position(doc, &self.bounds).is_some() {
            self.count += 1;
        }
    }

    fn harvest(self) -> u64 {
        self.count
    }
}

impl Collector for CountAdmitted {
    type Fruit = u64;
    type Child = CountSegment;

    fn for_segment(
        &self,
        _segment_local_id: SegmentOrdinal,
        segment: &SegmentReader,
    ) -> tantivy::Result<CountSegment> {
        Ok(CountSegment {
            columns: Columns::open(segment)?,
            bounds: self.bounds,
            count: 0,
        })
    }

    fn requires_scoring(&self) -> bool {
        false
    }

    fn merge_fruits(&self, fruits: Vec<u64>) -> tantivy::Result<u64> {
        Ok(fruits.into_iter().sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(order: Order, after: Option<Position>) -> Bounds {
        Bounds {
            stream: 5,
            start_ns: Some(10),
            end_ns: Some(20),
            after,
            order,
            seq_below: 100,
        }
    }

    #[test]
    fn bounds_admit_only_the_window_after_the_cursor() {
        let newest = bounds(Order::NewestFirst, Some((15, 7)));
        assert!(newest.admits(5, 15, 6));
        assert!(newest.admits(5, 14, 99));
        assert!(
            !newest.admits(5, 15, 7),
            "the cursor's own position is done"
        );
        assert!(!newest.admits(5, 16, 1));
        assert!(!newest.admits(6, 14, 1), "another stream");
        assert!(!newest.admits(5, 9, 1), "before start");
        assert!(!newest.admits(5, 14, 100), "not in this searcher");
        let oldest = bounds(Order::OldestFirst, Some((15, 7)));
        assert!(oldest.admits(5, 15, 8));
        assert!(!oldest.admits(5, 15, 7));
        assert!(!oldest.admits(5, 20, 8), "end is exclusive");
    }

    #[test]
    fn heap_keeps_the_first_k_in_order() {
        for order in [Order::NewestFirst, Order::OldestFirst] {
            let positions: Vec<Position> = (0..50).map(|i| ((i * 7) % 13, i as u64)).collect();
            let mut heap = BinaryHeap::new();
            for position in &positions {
                let keyed = Keyed::new(order, *position);
                if heap.len() < 5 {
                    heap.push(keyed);
                } else if heap.peek().is_some_and(|worst| keyed < *worst) {
                    heap.pop();
                    heap.push(keyed);
                }
            }
            let mut kept: Vec<Position> = heap.into_iter().map(|k| k.position()).collect();
            sort_in_order(&mut kept, order);
            let mut expected = positions.clone();
            sort_in_order(&mut expected, order);
            expected.truncate(5);
            assert_eq!(kept, expected, "{order:?}");
        }
    }
}
