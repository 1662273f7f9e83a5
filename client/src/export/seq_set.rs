//! A set of seqs as a sparse bitmap: what a filtered export keeps of the events its
//! query found (their seqs only), to write them in seq order block by block.

use std::collections::BTreeMap;

/// Seqs per chunk: one bit each, 16 words.
const CHUNK_SEQS: u64 = 1024;
const CHUNK_WORDS: usize = (CHUNK_SEQS / 64) as usize;

/// A set of seqs, one bit per seq in 128-byte chunks of 1,024 consecutive seqs, a chunk
/// only where a seq is set. Memory: at most ~170 bytes per chunk with a seq (the bits
/// and the map's node), so at most 1/6 byte per event of the stream, and never more than
/// ~170 bytes per seq; a dense filter costs 1 bit per event of the stream it spans.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SeqSet {
    chunks: BTreeMap<u64, Box<[u64; CHUNK_WORDS]>>,
    count: u64,
}

fn place(seq: u64) -> (u64, usize, u64) {
    let offset = seq % CHUNK_SEQS;
    (
        seq / CHUNK_SEQS,
        (offset / 64) as usize,
        1u64 << (offset % 64),
    )
}

impl SeqSet {
    pub fn new() -> SeqSet {
        SeqSet::default()
    }

    /// Adds `seq`; false when it was there already.
    pub fn insert(&mut self, seq: u64) -> bool {
        let (chunk, word, bit) = place(seq);
        let words = self
            .chunks
            .entry(chunk)
            .or_insert_with(|| Box::new([0; CHUNK_WORDS]));
        if words[word] & bit != 0 {
            return false;
        }
        words[word] |= bit;
        self.count += 1;
        true
    }

    pub fn contains(&self, seq: u64) -> bool {
        let (chunk, word, bit) = place(seq);
        self.chunks
            .get(&chunk)
            .is_some_and(|words| words[word] & bit != 0)
    }

    /// Seqs in the set.
    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The seqs of the set in `first ..= last`, in increasing order.
    pub fn range(&self, first: u64, last: u64) -> Vec<u64> {
        let mut seqs = Vec::new();
        if first > last {
            return seqs;
        }
        for (&chunk, words) in self.chunks.range(first / CHUNK_SEQS..=last / CHUNK_SEQS) {
            let chunk_first = chunk * CHUNK_SEQS;
            for (word_index, &word) in words.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    let bit = u64::from(bits.trailing_zeros());
                    bits &= bits - 1;
                    let seq = chunk_first + word_index as u64 * 64 + bit;
                    if seq >= first && seq <= last {
                        seqs.push(seq);
                    }
                }
            }
        }
        seqs
    }

    /// Whether any seq of `first ..= last` is in the set.
    pub fn any_in(&self, first: u64, last: u64) -> bool {
        if first > last {
            return false;
        }
        for (&chunk, words) in self.chunks.range(first / CHUNK_SEQS..=last / CHUNK_SEQS) {
            let chunk_first = chunk * CHUNK_SEQS;
            let low = first.max(chunk_first) - chunk_first;
            let high = last.min(chunk_first + (CHUNK_SEQS - 1)) - chunk_first;
            for offset in low..=high {
                if words[(offset / 64) as usize] & (1u64 << (offset % 64)) != 0 {
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    proptest! {
        /// The bitmap answers like a BTreeSet.
        #[test]
        fn behaves_like_a_set(
            seqs in prop::collection::vec(1u64..5_000, 0..300),
            queries in prop::collection::vec((1u64..5_100, 0u64..2_100), 1..30),
        ) {
            let mut set = SeqSet::new();
            let mut model = BTreeSet::new();
            for &seq in &seqs {
                prop_assert_eq!(set.insert(seq), model.insert(seq));
            }
            prop_assert_eq!(set.len(), model.len() as u64);
            for &(first, width) in &queries {
                let last = first + width;
                let expected: Vec<u64> = model.range(first..=last).copied().collect();
                prop_assert_eq!(set.range(first, last), expected.clone());
                prop_assert_eq!(set.any_in(first, last), !expected.is_empty());
                prop_assert_eq!(set.contains(first), model.contains(&first));
            }
        }
    }

    #[test]
    fn huge_seqs_fit() {
        let mut set = SeqSet::new();
        assert!(set.insert(u64::MAX));
        assert!(set.contains(u64::MAX));
        assert_eq!(set.range(u64::MAX - 1, u64::MAX), vec![u64::MAX]);
        assert!(set.any_in(u64::MAX, u64::MAX));
        assert!(!set.any_in(5, 4));
    }
}
