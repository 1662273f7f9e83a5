//! Reading the secondary index: the tantivy query of a filter, and two searches that
//! read only fast fields: the top `k` positions in keyset order, and a count.
//!
//! Positions are `(occurred_at, seq)` of one stream. The collectors take the bounds
//! that the term query cannot express (the time range, the cursor, the stream, the
//! index watermark, and the actor type and result) and apply them per document from
//! the columns.

use std::collections::{BinaryHeap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use tantivy::columnar::Column;
use tantivy::index::SegmentId;
use tantivy::query::{BooleanQuery, EnableScoring, Occur, Query, RangeQuery, TermQuery, Weight};
use tantivy::schema::IndexRecordOption;
use tantivy::{DocId, Searcher, SegmentReader, Term};

use super::schema::{AttrsTest, Fields, Terms};
use crate::query::{ActionMatch, Filters, Order};

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
    /// The actor type and result wanted (`schema::attrs_value`).
    pub attrs: AttrsTest,
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

/// Whether the filter asks more than a time range of the tenant's stream.
pub fn asks_more_than_time(filters: &Filters) -> bool {
    has_index_terms(filters) || !attrs_test(filters).is_none()
}

/// Whether the filter has a term the index can look up (otherwise the stream's
/// documents are selected from the `stream` column).
pub fn has_index_terms(filters: &Filters) -> bool {
    filters.actor_id.is_some()
        || filters.action.is_some()
        || filters.resource_type.is_some()
        || filters.resource_id.is_some()
        || filters.request_id.is_some()
}

/// What a filter asks of the `attrs` column.
pub fn attrs_test(filters: &Filters) -> AttrsTest {
    AttrsTest::new(filters.actor_kind, filters.outcome)
}

/// The term query of a tenant's filter in its stream (`bounds.stream`): every clause
/// is a Must; the time bounds, actor type and result are the collectors' business.
pub fn term_query(
    fields: &Fields,
    terms: &Terms,
    tenant_id: &str,
    filters: &Filters,
    stream: u64,
) -> Box<dyn Query> {
    let mut clauses: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    let mut must = |term: Term| {
        clauses.push((
            Occur::Must,
            Box::new(TermQuery::new(term, IndexRecordOption::Basic)),
        ));
    };
    if let Some(actor_id) = &filters.actor_id {
        must(terms.actor(fields, tenant_id, actor_id));
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
    if clauses.is_empty() {
        // No term: the stream's documents, from its column (every term is scoped to
        // the tenant, so with terms the stream bound is the collectors' check).
        let value = Term::from_field_u64(fields.stream, stream);
        return Box::new(RangeQuery::new(
            Bound::Included(value.clone()),
            Bound::Included(value),
        ));
    }
    Box::new(BooleanQuery::new(clauses))
}

/// One segment of a searcher with its position columns, opened once per segment for
/// all the queries that read it: opening a column deserializes its block table, which
/// per query and segment was a tenth of a query's time at 10 M events (a 5 M-document
/// segment has ~10,000 blocks per column).
pub struct SegmentColumns {
    id: SegmentId,
    occ: Column<i64>,
    stream: Column<u64>,
    seq: Column<u64>,
    attrs: Column<u64>,
    /// The range of `occurred_at` in the segment (column statistics).
    occ_min: i64,
    occ_max: i64,
}

impl SegmentColumns {
    fn open(segment: &SegmentReader) -> tantivy::Result<SegmentColumns> {
        let fast = segment.fast_fields();
        let occ = fast.i64("occ")?;
        Ok(SegmentColumns {
            id: segment.segment_id(),
            occ_min: occ.min_value(),
            occ_max: occ.max_value(),
            occ,
            stream: fast.u64("stream")?,
            seq: fast.u64("seq")?,
            attrs: fast.u64("attrs")?,
        })
    }

    /// The document's position if the bounds admit it. `occurred_at` is read first
    /// and the other columns only for documents inside the time bounds and, when
    /// `before` is given, not after it in the order (a full top-k's last position's
    /// time): most documents a search visits cost one column read. `attrs` is read
    /// only when the bounds test it.
    fn position(&self, doc: DocId, bounds: &Bounds, before: Option<i64>) -> Option<Position> {
        let occ = self.occ.first(doc)?;
        if bounds.start_ns.is_some_and(|start| occ < start)
            || bounds.end_ns.is_some_and(|end| occ >= end)
        {
            return None;
        }
        let beyond = match (before, bounds.order) {
            (None, _) => false,
            (Some(kth), Order::NewestFirst) => occ < kth,
            (Some(kth), Order::OldestFirst) => occ > kth,
        };
        if beyond {
            return None;
        }
        if !bounds.attrs.is_none() && !bounds.attrs.admits(self.attrs.first(doc)?) {
            return None;
        }
        let stream = self.stream.first(doc)?;
        let seq = self.seq.first(doc)?;
        bounds.admits(stream, occ, seq).then_some((occ, seq))
    }
}

/// A committed searcher and its segments' columns, in the searcher's segment order.
pub struct IndexView {
    pub searcher: Searcher,
    segments: Vec<Arc<SegmentColumns>>,
}

impl IndexView {
    /// The view of `searcher`, taking the columns of segments already open from
    /// `cache` and opening the others. `cache` is left holding exactly this view's
    /// segments.
    pub fn new(
        searcher: Searcher,
        cache: &mut HashMap<SegmentId, Arc<SegmentColumns>>,
    ) -> tantivy::Result<IndexView> {
        let mut segments = Vec::with_capacity(searcher.segment_readers().len());
        for reader in searcher.segment_readers() {
            let columns = match cache.get(&reader.segment_id()) {
                Some(columns) => columns.clone(),
                None => Arc::new(SegmentColumns::open(reader)?),
            };
            segments.push(columns);
        }
        cache.clear();
        cache.extend(segments.iter().map(|columns| (columns.id, columns.clone())));
        Ok(IndexView { searcher, segments })
    }

    /// The segments that can hold a document inside the time bounds, by column
    /// statistics (no document is read).
    fn in_range(&self, bounds: &Bounds) -> Vec<(&SegmentReader, &SegmentColumns)> {
        self.searcher
            .segment_readers()
            .iter()
            .zip(&self.segments)
            .filter(|(reader, columns)| {
                reader.num_docs() > 0
                    && bounds.start_ns.is_none_or(|start| columns.occ_max >= start)
                    && bounds.end_ns.is_none_or(|end| columns.occ_min < end)
            })
            .map(|(reader, columns)| (reader, &**columns))
            .collect()
    }

    /// Live documents in all segments.
    pub fn docs(&self) -> u64 {
        self.searcher.num_docs()
    }

    /// The segments' ids and `occurred_at` ranges (for the merge policy).
    pub fn ranges(&self) -> impl Iterator<Item = (SegmentId, (i64, i64))> + '_ {
        self.segments
            .iter()
            .map(|columns| (columns.id, (columns.occ_min, columns.occ_max)))
    }
}

/// Term statistics of the segments that can hold a document inside the time bounds
/// (per-segment term dictionaries; no posting is read): the planner's estimate. The
/// segments are found once, for all the terms of a query.
pub struct RangeStats<'a> {
    readers: Vec<&'a SegmentReader>,
}

impl<'a> RangeStats<'a> {
    pub fn new(view: &'a IndexView, bounds: &Bounds) -> RangeStats<'a> {
        RangeStats {
            readers: view
                .in_range(bounds)
                .into_iter()
                .map(|(reader, _)| reader)
                .collect(),
        }
    }

    /// Live documents in those segments.
    pub fn docs(&self) -> u64 {
        self.readers
            .iter()
            .map(|reader| u64::from(reader.num_docs()))
            .sum()
    }

    /// Documents holding `term` in those segments.
    pub fn doc_freq(&self, term: &Term) -> tantivy::Result<u64> {
        let mut docs = 0;
        for reader in &self.readers {
            docs += u64::from(reader.inverted_index(term.field())?.doc_freq(term)?);
        }
        Ok(docs)
    }
}

/// Calls `each` with every live document of the query in the segment.
fn for_each_doc(
    weight: &dyn Weight,
    reader: &SegmentReader,
    mut each: impl FnMut(DocId),
) -> tantivy::Result<()> {
    let alive = reader.alive_bitset();
    weight.for_each_no_score(reader, &mut |docs| {
        for &doc in docs {
            if alive.is_none_or(|alive| alive.is_alive(doc)) {
                each(doc);
            }
        }
    })
}

/// The first `k` admitted positions of a query in keyset order. Segments are visited
/// from the one with the newest (or oldest) `occurred_at` on, and the search stops
/// when no segment left can hold a position before the `k`th found: segments hold
/// spans of ingest time (`merge.rs` merges only neighbours in time), so the newest page
/// of a term usually touches only the newest few segments, not those of the past.
pub fn top_positions(
    view: &IndexView,
    query: &dyn Query,
    bounds: &Bounds,
    k: usize,
) -> tantivy::Result<Vec<Position>> {
    let weight = query.weight(EnableScoring::disabled_from_searcher(&view.searcher))?;
    let mut spans = view.in_range(bounds);
    match bounds.order {
        Order::NewestFirst => spans.sort_by_key(|(_, columns)| std::cmp::Reverse(columns.occ_max)),
        Order::OldestFirst => spans.sort_by_key(|(_, columns)| columns.occ_min),
    }
    // The first k positions so far; the top of the heap is the one to drop first.
    let mut heap: BinaryHeap<Keyed> = BinaryHeap::with_capacity(k + 1);
    let kth_time = |heap: &BinaryHeap<Keyed>| {
        (heap.len() >= k)
            .then(|| heap.peek().map(|worst| worst.position().0))
            .flatten()
    };
    for (reader, columns) in spans {
        if let Some(kth) = kth_time(&heap) {
            // Ties on occurred_at are broken by seq, so a segment whose range only
            // touches the kth position's time may still hold one before it.
            let beyond = match bounds.order {
                Order::NewestFirst => columns.occ_max < kth,
                Order::OldestFirst => columns.occ_min > kth,
            };
            if beyond {
                break;
            }
        }
        let mut before = kth_time(&heap);
        for_each_doc(&*weight, reader, |doc| {
            let Some(position) = columns.position(doc, bounds, before) else {
                return;
            };
            let keyed = Keyed::new(bounds.order, position);
            if heap.len() < k {
                heap.push(keyed);
            } else if heap.peek().is_some_and(|worst| keyed < *worst) {
                heap.pop();
                heap.push(keyed);
            } else {
                return;
            }
            if heap.len() >= k {
                before = heap.peek().map(|worst| worst.position().0);
            }
        })?;
    }
    let mut best: Vec<Position> = heap.into_iter().map(|keyed| keyed.position()).collect();
    sort_in_order(&mut best, bounds.order);
    Ok(best)
}

/// How many documents of a query the bounds admit; segments outside the time bounds
/// are skipped without reading a document.
pub fn count_admitted(
    view: &IndexView,
    query: &dyn Query,
    bounds: &Bounds,
) -> tantivy::Result<u64> {
    let weight = query.weight(EnableScoring::disabled_from_searcher(&view.searcher))?;
    let mut count = 0;
    for (reader, columns) in view.in_range(bounds) {
        for_each_doc(&*weight, reader, |doc| {
            if columns.position(doc, bounds, None).is_some() {
                count += 1;
            }
        })?;
    }
    Ok(count)
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

pub fn sort_in_order(positions: &mut [Position], order: Order) {
    match order {
        Order::NewestFirst => positions.sort_unstable_by(|a, b| b.cmp(a)),
        Order::OldestFirst => positions.sort_unstable(),
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
            attrs: AttrsTest::default(),
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
