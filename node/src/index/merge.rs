//! The index's merge policy: segments are merged only with their neighbours in time.
//!
//! Every search visits the segments whose `occurred_at` range meets its bounds, newest
//! (or oldest) first, and stops when no segment left can hold a better position
//! (`search.rs`). That pays only if segments hold narrow spans of time. tantivy's
//! default policy merges segments of similar size wherever they are: at 10 M events it
//! had merged the oldest and the newest into one 5 M-document segment spanning all 90
//! days, which every query then searched in full. Here segments are ordered by time and
//! only runs of consecutive ones are merged, so each segment stays a span of ingest
//! time (events arrive roughly in `occurred_at` order) and segments grow with age, like
//! the levels of an LSM tree.
//!
//! Sizes are in tiers of a factor 8 from 80,000 documents. For the smallest tier first,
//! every run of at least 8 consecutive segments no bigger than that tier is merged (up
//! to 16 segments and 2 M documents at once), unless one of them would be more than
//! half of the merge (a big segment is not rewritten to absorb a few small ones);
//! segments of 2 M documents or more are left alone. A segment with over
//! 30% of its documents deleted (a shard rebuilt or moved away) is rewritten alone.
//!
//! The policy learns the segments' time ranges from the columns the indexer opens for
//! each searcher it publishes; a segment it does not know yet (committed, not yet
//! visible) waits for a later round.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tantivy::index::SegmentId;
use tantivy::index::SegmentMeta;
use tantivy::merge_policy::{MergeCandidate, MergePolicy};

/// Smallest tier: segments below `TIER_BASE_DOCS x TIER_FACTOR` documents are all alike.
const TIER_BASE_DOCS: u32 = 10_000;
/// Each tier holds segments up to this factor bigger than the one below.
const TIER_FACTOR: u32 = 8;
/// Segments this big are not merged any more, and no merge makes a bigger one: a
/// search visits a whole segment when its time range meets the bounds (at 10 M events
/// a 7-day count took 3.4 ms in a 4 M-document segment spanning 37 days, 0.9 ms with
/// segments of at most ~2 M).
const SEGMENT_DOCS_MAX: u32 = 2_000_000;
/// A run is merged once it has this many segments...
const RUN_MIN: usize = 8;
/// ...and at most this many go into one merge.
const RUN_MAX: usize = 16;
/// A segment with more of its documents deleted is rewritten.
const DELETED_RATIO_MAX: f64 = 0.3;

/// The `occurred_at` range of each visible segment, shared by the indexer (which
/// learns them) and the merge policy (which runs on tantivy's segment updater).
#[derive(Debug, Clone, Default)]
pub struct SegmentRanges(Arc<Mutex<HashMap<SegmentId, (i64, i64)>>>);

impl SegmentRanges {
    /// Replaces what is known with the ranges of the segments now visible (segments
    /// merged away are forgotten, so the map stays as small as the index).
    pub fn learn(&self, ranges: impl Iterator<Item = (SegmentId, (i64, i64))>) {
        let mut known = self.0.lock().expect("segment ranges lock");
        known.clear();
        known.extend(ranges);
    }

    fn get(&self, id: &SegmentId) -> Option<(i64, i64)> {
        self.0.lock().expect("segment ranges lock").get(id).copied()
    }
}

#[derive(Debug)]
pub struct TimeMergePolicy {
    ranges: SegmentRanges,
}

impl TimeMergePolicy {
    pub fn new(ranges: SegmentRanges) -> TimeMergePolicy {
        TimeMergePolicy { ranges }
    }
}

fn tier(docs: u32) -> u32 {
    let mut tier = 0;
    let mut bound = u64::from(TIER_BASE_DOCS) * u64::from(TIER_FACTOR);
    while u64::from(docs) >= bound {
        tier += 1;
        bound *= u64::from(TIER_FACTOR);
    }
    tier
}

/// The merges for segments given as `(occ_min, occ_max, documents, deleted, id)`.
/// Pure, so it is tested without an index.
fn plan<Id: Copy + Eq + std::hash::Hash>(
    mut segments: Vec<(i64, i64, u32, u32, Id)>,
) -> Vec<Vec<Id>> {
    segments.sort_by_key(|&(min, max, ..)| (min, max));
    let top_tier = tier(SEGMENT_DOCS_MAX);
    let mut taken: HashSet<Id> = HashSet::new();
    let mut merges = Vec::new();
    for level in 0..=top_tier {
        // Runs of consecutive segments no bigger than this tier, as (docs, id).
        let mut run: Vec<(u32, Id)> = Vec::new();
        let close =
            |run: &mut Vec<(u32, Id)>, merges: &mut Vec<Vec<Id>>, taken: &mut HashSet<Id>| {
                if run.len() >= RUN_MIN {
                    for chunk in chunks(run) {
                        let total: u64 = chunk.iter().map(|&(docs, _)| u64::from(docs)).sum();
                        let biggest = chunk.iter().map(|&(docs, _)| u64::from(docs)).max();
                        // No segment is more than half of a merge: each document is
                        // rewritten a bounded number of times.
                        if chunk.len() >= 2 && biggest.is_some_and(|biggest| 2 * biggest <= total) {
                            taken.extend(chunk.iter().map(|&(_, id)| id));
                            merges.push(chunk.iter().map(|&(_, id)| id).collect());
                        }
                    }
                }
                run.clear();
            };
        for &(_, _, docs, _, id) in &segments {
            let fits = docs < SEGMENT_DOCS_MAX && tier(docs) <= level && !taken.contains(&id);
            if fits {
                run.push((docs, id));
            } else {
                close(&mut run, &mut merges, &mut taken);
            }
        }
        close(&mut run, &mut merges, &mut taken);
    }
    for &(_, _, docs, deleted, id) in &segments {
        let total = f64::from(docs) + f64::from(deleted);
        if !taken.contains(&id) && total > 0.0 && f64::from(deleted) / total > DELETED_RATIO_MAX {
            merges.push(vec![id]);
        }
    }
    merges
}

/// A run cut into merges of at most [`RUN_MAX`] segments and [`SEGMENT_DOCS_MAX`]
/// documents each (a merge's memory and time grow with its size).
fn chunks<Id: Copy>(run: &[(u32, Id)]) -> Vec<&[(u32, Id)]> {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut docs = 0u64;
    for (index, &(size, _)) in run.iter().enumerate() {
        let full = index - start == RUN_MAX || docs + u64::from(size) > u64::from(SEGMENT_DOCS_MAX);
        if full && index > start {
            chunks.push(&run[start..index]);
            start = index;
            docs = 0;
        }
        docs += u64::from(size);
    }
    if start < run.len() {
        chunks.push(&run[start..]);
    }
    chunks
}

impl MergePolicy for TimeMergePolicy {
    fn compute_merge_candidates(&self, segments: &[SegmentMeta]) -> Vec<MergeCandidate> {
        let known = segments
            .iter()
            .filter_map(|meta| {
                let (min, max) = self.ranges.get(&meta.id())?;
                Some((
                    min,
                    max,
                    meta.num_docs(),
                    meta.num_deleted_docs(),
                    meta.id(),
                ))
            })
            .collect();
        plan(known).into_iter().map(MergeCandidate).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_factors_of_eight() {
        assert_eq!(tier(0), 0);
        assert_eq!(tier(79_999), 0);
        assert_eq!(tier(80_000), 1);
        assert_eq!(tier(640_000), 2);
        assert_eq!(tier(5_120_000), 3);
    }

    /// Segments `(first day, docs)`, each one day wide, ids their index.
    fn days(sizes: &[u32]) -> Vec<(i64, i64, u32, u32, usize)> {
        sizes
            .iter()
            .enumerate()
            .map(|(day, &docs)| (day as i64 * 10, day as i64 * 10 + 9, docs, 0, day))
            .collect()
    }

    #[test]
    fn only_runs_of_neighbours_in_time_merge() {
        // Seven small ones are not enough; eight are.
        assert!(plan(days(&[20_000; 7])).is_empty());
        assert_eq!(plan(days(&[20_000; 8])), vec![(0..8).collect::<Vec<_>>()]);
        // A big segment between two groups of small ones splits them: neither side
        // has eight, and the small ones are never merged across it.
        let mut sizes = vec![20_000; 5];
        sizes.push(3_000_000);
        sizes.extend([20_000; 5]);
        assert!(plan(days(&sizes)).is_empty());
        // A run of small ones next to a mid-sized one: the small tier merges first,
        // the mid-sized one joins a run of its tier later.
        let mut sizes = vec![200_000; 3];
        sizes.extend([20_000; 9]);
        assert_eq!(plan(days(&sizes)), vec![(3..12).collect::<Vec<_>>()]);
        // Stragglers of a small tier join a run of the next tier...
        let sizes = [
            200_000, 20_000, 200_000, 200_000, 20_000, 200_000, 200_000, 200_000,
        ];
        assert_eq!(plan(days(&sizes)), vec![(0..8).collect::<Vec<_>>()]);
        // ...and sizes either side of a tier's bound merge together.
        let sizes = [
            79_000, 81_000, 79_000, 81_000, 79_000, 81_000, 79_000, 81_000,
        ];
        assert_eq!(plan(days(&sizes)), vec![(0..8).collect::<Vec<_>>()]);
        // A big segment does not absorb small ones (it would be rewritten for little).
        let mut sizes = vec![20_000; 10];
        sizes.insert(5, 600_000);
        assert_eq!(plan(days(&sizes)), Vec::<Vec<usize>>::new());
        // The order is by time, not by the order given.
        let mut shuffled = days(&[20_000; 8]);
        shuffled.reverse();
        assert_eq!(plan(shuffled), vec![(0..8).collect::<Vec<_>>()]);
    }

    #[test]
    fn long_runs_merge_in_chunks_and_huge_segments_stay() {
        let merges = plan(days(&[20_000; 20]));
        assert_eq!(
            merges,
            vec![(0..16).collect::<Vec<_>>(), vec![16, 17, 18, 19]]
        );
        assert!(plan(days(&[6_000_000; 10])).is_empty());
        // No merge makes more than 2 M documents.
        let merges = plan(days(&[500_000; 8]));
        assert_eq!(merges, vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]]);
    }

    #[test]
    fn segments_with_many_deletes_are_rewritten() {
        let mut segments = days(&[1_000_000, 1_000_000]);
        segments[1].3 = 600_000;
        assert_eq!(plan(segments), vec![vec![1]]);
    }
}
