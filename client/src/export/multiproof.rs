//! Merkle multiproofs over RFC 9162 trees: one proof that a set of leaves sits at given
//! indices of a tree of known size and root. Pure: no I/O.
//!
//! An export proves many events of a block, and many blocks of a stream tree, at once.
//! One RFC 9162 audit path per leaf would repeat the hashes the paths share; a list of
//! every leaf would send hashes the verifier can compute. A multiproof sends exactly the
//! hashes it cannot compute: the roots of the *maximal subtrees that hold no proven
//! leaf*, left to right. So it is never longer than the other leaves (n - k hashes) nor
//! than the k audit paths, and it is empty when every leaf is proven.
//!
//! Verification ([`multiproof_root`]) walks the RFC 9162 tree shape from the root (a
//! tree of n > 1 leaves splits at the largest power of two below n): a subtree that
//! holds no proven leaf takes the next proof hash, a single leaf is the proven hash,
//! anything else is `SHA-256(0x01 || left || right)` of its two halves. The result must
//! equal the signed root and every proof hash must have been used. This is the whole
//! algorithm an independent verifier needs (docs/PROOFS.md, "Exports").
//!
//! [`MultiproofBuilder`] makes the proof from the leaves streamed in order, deciding
//! for each one whether it is proven, in O(log n) memory plus the proof itself.

use crate::verify::merkle_root;

/// Why a multiproof was refused. Every variant names what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultiproofError {
    #[error("a multiproof proves at least one leaf, none was given")]
    NoLeaves,
    #[error("leaf index {index} is out of range for a tree of {tree_size} leaves")]
    LeafOutOfRange { index: u64, tree_size: u64 },
    #[error("leaf index {index} follows {previous}: proven leaves must be in increasing order")]
    LeavesNotIncreasing { index: u64, previous: u64 },
    #[error("the proof has {hashes} hashes, fewer than the tree shape needs")]
    ProofTooShort { hashes: usize },
    #[error("the proof has {hashes} hashes, only {used} are needed")]
    ProofTooLong { hashes: usize, used: usize },
}

/// RFC 9162 interior node, `SHA-256(0x01 || left || right)`: the root of the two-leaf
/// tree, so the one definition in `verify.rs` is reused rather than repeated.
fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    merkle_root(&[*left, *right])
}

/// The largest power of two below `size` (which is at least 2): where RFC 9162 splits.
fn split_size(size: u64) -> u64 {
    assert!(size >= 2);
    1u64 << (63 - (size - 1).leading_zeros())
}

/// Checks that `leaves` (index, leaf hash) are the leaves at those indices of the tree of
/// `tree_size` leaves, given the multiproof `proof`; returns the root they give, which
/// the caller compares with the root it trusts (a header's merkle root, a signed
/// checkpoint's root).
pub fn multiproof_root(
    tree_size: u64,
    leaves: &[(u64, [u8; 32])],
    proof: &[[u8; 32]],
) -> Result<[u8; 32], MultiproofError> {
    if leaves.is_empty() {
        return Err(MultiproofError::NoLeaves);
    }
    let mut previous: Option<u64> = None;
    for &(index, _) in leaves {
        if index >= tree_size {
            return Err(MultiproofError::LeafOutOfRange { index, tree_size });
        }
        if let Some(previous) = previous {
            if index <= previous {
                return Err(MultiproofError::LeavesNotIncreasing { index, previous });
            }
        }
        previous = Some(index);
    }
    let mut used = 0usize;
    let root = subtree_root(0, tree_size, leaves, proof, &mut used)?;
    if used != proof.len() {
        return Err(MultiproofError::ProofTooLong {
            hashes: proof.len(),
            used,
        });
    }
    Ok(root)
}

/// The root of leaves `start .. end`, of which `leaves` (sorted, inside the range) are
/// proven. Recursion depth is the tree height, at most 64.
fn subtree_root(
    start: u64,
    end: u64,
    leaves: &[(u64, [u8; 32])],
    proof: &[[u8; 32]],
    used: &mut usize,
) -> Result<[u8; 32], MultiproofError> {
    if leaves.is_empty() {
        let hash = proof.get(*used).ok_or(MultiproofError::ProofTooShort {
            hashes: proof.len(),
        })?;
        *used += 1;
        return Ok(*hash);
    }
    if end - start == 1 {
        // Sorted, distinct and inside the range: the one leaf is this one.
        assert!(leaves.len() == 1 && leaves[0].0 == start);
        return Ok(leaves[0].1);
    }
    let split = start + split_size(end - start);
    let cut = leaves.partition_point(|&(index, _)| index < split);
    let left = subtree_root(start, split, &leaves[..cut], proof, used)?;
    let right = subtree_root(split, end, &leaves[cut..], proof, used)?;
    Ok(node_hash(&left, &right))
}

/// A subtree of the builder's row: complete, except the right spine folded at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Subtree {
    hash: [u8; 32],
    /// Index of its first leaf, to order the proof left to right.
    first_leaf: u64,
    /// Whether it holds a proven leaf.
    proven: bool,
}

/// What [`MultiproofBuilder::finish`] gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multiproof {
    /// The root of every leaf pushed.
    pub root: [u8; 32],
    /// Leaves pushed.
    pub tree_size: u64,
    /// Leaves pushed as proven.
    pub proven: u64,
    /// The proof: roots of the maximal subtrees with no proven leaf, left to right.
    /// With no proven leaf at all it is the whole tree's root (nothing is proven).
    pub hashes: Vec<[u8; 32]>,
}

/// Builds a multiproof from the leaves in order, like [`crate::verify::RootBuilder`]
/// builds a root: it keeps the row of complete subtrees (one per set bit of the count),
/// each flagged with whether it holds a proven leaf. When two subtrees merge and
/// exactly one holds a proven leaf, the other is a maximal unproven subtree: its root
/// joins the proof. Memory: O(log n) for the row, plus the proof itself.
#[derive(Debug, Clone, Default)]
pub struct MultiproofBuilder {
    row: Vec<Subtree>,
    leaves_count: u64,
    proven_count: u64,
    /// (first leaf, hash) of each maximal unproven subtree found so far; merges find
    /// them out of left-to-right order, so they are sorted at the end.
    found: Vec<(u64, [u8; 32])>,
}

impl MultiproofBuilder {
    pub fn new() -> MultiproofBuilder {
        MultiproofBuilder::default()
    }

    /// Leaves pushed so far.
    pub fn len(&self) -> u64 {
        self.leaves_count
    }

    pub fn is_empty(&self) -> bool {
        self.leaves_count == 0
    }

    /// Leaves pushed as proven so far.
    pub fn proven(&self) -> u64 {
        self.proven_count
    }

    /// Appends the next leaf (a hash, not hashed again); `proven` says whether the
    /// proof is for it.
    pub fn push(&mut self, leaf: [u8; 32], proven: bool) {
        assert!(self.leaves_count < u64::MAX, "tree full");
        let mut merged = Subtree {
            hash: leaf,
            first_leaf: self.leaves_count,
            proven,
        };
        // As in RootBuilder: adding 1 to the count carries through its trailing ones,
        // and each carry merges two equal subtrees.
        let mut carries = self.leaves_count.trailing_ones();
        while carries > 0 {
            let left = self
                .row
                .pop()
                .expect("one subtree per set bit of the count");
            merged = self.merge(left, merged);
            carries -= 1;
        }
        self.row.push(merged);
        self.leaves_count += 1;
        if proven {
            self.proven_count += 1;
        }
        assert_eq!(self.row.len(), self.leaves_count.count_ones() as usize);
    }

    fn merge(&mut self, left: Subtree, right: Subtree) -> Subtree {
        if left.proven && !right.proven {
            self.found.push((right.first_leaf, right.hash));
        }
        if right.proven && !left.proven {
            self.found.push((left.first_leaf, left.hash));
        }
        Subtree {
            hash: node_hash(&left.hash, &right.hash),
            first_leaf: left.first_leaf,
            proven: left.proven || right.proven,
        }
    }

    /// The root and the proof. The tree must have at least one leaf.
    pub fn finish(mut self) -> Multiproof {
        let mut root = self
            .row
            .pop()
            .expect("a multiproof needs at least one leaf");
        // The row folds from the right: the smallest subtree is the deepest right child.
        while let Some(left) = self.row.pop() {
            root = self.merge(left, root);
        }
        if !root.proven {
            self.found.push((root.first_leaf, root.hash));
        }
        self.found
            .sort_unstable_by_key(|&(first_leaf, _)| first_leaf);
        Multiproof {
            root: root.hash,
            tree_size: self.leaves_count,
            proven: self.proven_count,
            hashes: self.found.into_iter().map(|(_, hash)| hash).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::{leaf_hash, verify_inclusion};
    use proptest::prelude::*;

    fn leaves(count: u64, seed: u64) -> Vec<[u8; 32]> {
        (0..count)
            .map(|index| leaf_hash(format!("{seed}/{index}").as_bytes()))
            .collect()
    }

    /// The definition, recursively: the roots of maximal subtrees with no proven leaf,
    /// left to right.
    fn reference_proof(leaves: &[[u8; 32]], offset: u64, proven: &[u64]) -> Vec<[u8; 32]> {
        let end = offset + leaves.len() as u64;
        let inside = proven.iter().any(|&index| index >= offset && index < end);
        if !inside {
            return vec![merkle_root(leaves)];
        }
        if leaves.len() == 1 {
            return Vec::new();
        }
        let split = split_size(leaves.len() as u64) as usize;
        let mut proof = reference_proof(&leaves[..split], offset, proven);
        proof.extend(reference_proof(
            &leaves[split..],
            offset + split as u64,
            proven,
        ));
        proof
    }

    fn build(leaves: &[[u8; 32]], proven: &[u64]) -> Multiproof {
        let mut builder = MultiproofBuilder::new();
        for (index, leaf) in leaves.iter().enumerate() {
            builder.push(*leaf, proven.contains(&(index as u64)));
        }
        builder.finish()
    }

    fn known(leaves: &[[u8; 32]], proven: &[u64]) -> Vec<(u64, [u8; 32])> {
        proven
            .iter()
            .map(|&index| (index, leaves[index as usize]))
            .collect()
    }

    #[test]
    fn split_sizes_follow_rfc_9162() {
        assert_eq!(split_size(2), 1);
        assert_eq!(split_size(3), 2);
        assert_eq!(split_size(4), 2);
        assert_eq!(split_size(5), 4);
        assert_eq!(split_size(1024), 512);
        assert_eq!(split_size(1025), 1024);
        assert_eq!(split_size(u64::MAX), 1 << 63);
    }

    #[test]
    fn every_leaf_proven_needs_no_hash_and_one_leaf_needs_its_audit_path() {
        let tree = leaves(13, 1);
        let all: Vec<u64> = (0..13).collect();
        let full = build(&tree, &all);
        assert!(full.hashes.is_empty());
        assert_eq!(full.root, merkle_root(&tree));
        assert_eq!(
            multiproof_root(13, &known(&tree, &all), &[]),
            Ok(merkle_root(&tree))
        );

        // A single proven leaf: the multiproof holds its audit path's hashes (in left to
        // right order rather than leaf-first), and the RFC verifier agrees.
        for index in 0..13u64 {
            let single = build(&tree, &[index]);
            assert_eq!(
                multiproof_root(13, &[(index, tree[index as usize])], &single.hashes),
                Ok(single.root)
            );
            // The same hashes as the leaf's RFC 9162 audit path, in left-to-right order
            // instead of leaf level first.
            let path = rfc_path(&tree, index as usize);
            let mut sorted_path = path.clone();
            sorted_path.sort_unstable();
            let mut sorted_proof = single.hashes.clone();
            sorted_proof.sort_unstable();
            assert_eq!(sorted_proof, sorted_path, "leaf {index}");
            assert!(
                verify_inclusion(&tree[index as usize], index, 13, &path, &single.root).is_ok()
            );
        }
    }

    fn reference_path_len(tree_size: u64, index: u64) -> usize {
        if tree_size <= 1 {
            return 0;
        }
        let split = split_size(tree_size);
        if index < split {
            1 + reference_path_len(split, index)
        } else {
            1 + reference_path_len(tree_size - split, index - split)
        }
    }

    fn rfc_path(leaves: &[[u8; 32]], index: usize) -> Vec<[u8; 32]> {
        if leaves.len() <= 1 {
            return Vec::new();
        }
        let split = split_size(leaves.len() as u64) as usize;
        if index < split {
            let mut path = rfc_path(&leaves[..split], index);
            path.push(merkle_root(&leaves[split..]));
            path
        } else {
            let mut path = rfc_path(&leaves[split..], index - split);
            path.push(merkle_root(&leaves[..split]));
            path
        }
    }

    #[test]
    fn refusals_name_the_problem() {
        let tree = leaves(8, 2);
        let proof = build(&tree, &[2, 5]);
        let good = known(&tree, &[2, 5]);
        assert_eq!(multiproof_root(8, &good, &proof.hashes), Ok(proof.root));
        assert_eq!(
            multiproof_root(8, &[], &proof.hashes),
            Err(MultiproofError::NoLeaves)
        );
        assert_eq!(
            multiproof_root(8, &[(8, tree[0])], &proof.hashes),
            Err(MultiproofError::LeafOutOfRange {
                index: 8,
                tree_size: 8
            })
        );
        assert_eq!(
            multiproof_root(8, &[good[1], good[0]], &proof.hashes),
            Err(MultiproofError::LeavesNotIncreasing {
                index: 2,
                previous: 5
            })
        );
        assert_eq!(
            multiproof_root(8, &good, &proof.hashes[1..]),
            Err(MultiproofError::ProofTooShort {
                hashes: proof.hashes.len() - 1
            })
        );
        let mut longer = proof.hashes.clone();
        longer.push([0; 32]);
        assert_eq!(
            multiproof_root(8, &good, &longer),
            Err(MultiproofError::ProofTooLong {
                hashes: longer.len(),
                used: proof.hashes.len()
            })
        );
    }

    /// Up to this many leaves per property case: blocks are 1,024 events by default, so
    /// sizes around powers of two up to a few hundred exercise every shape.
    const PROPERTY_LEAVES_MAX: u64 = 300;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// The builder's proof is the definition's, verifies, and is never longer than
        /// the unproven leaves nor than one audit path per proven leaf.
        #[test]
        fn proofs_match_the_definition_and_verify(
            seed in any::<u64>(),
            tree_size in 1u64..PROPERTY_LEAVES_MAX,
            picks in prop::collection::vec(any::<prop::sample::Index>(), 1..20),
        ) {
            let tree = leaves(tree_size, seed);
            let mut proven: Vec<u64> = picks.iter().map(|pick| pick.index(tree_size as usize) as u64).collect();
            proven.sort_unstable();
            proven.dedup();
            let built = build(&tree, &proven);
            prop_assert_eq!(built.root, merkle_root(&tree));
            prop_assert_eq!(&built.hashes, &reference_proof(&tree, 0, &proven));
            prop_assert_eq!(multiproof_root(tree_size, &known(&tree, &proven), &built.hashes), Ok(built.root));
            let unproven = (tree_size - proven.len() as u64) as usize;
            let paths: usize = proven.iter().map(|&index| reference_path_len(tree_size, index)).sum();
            prop_assert!(built.hashes.len() <= unproven.min(paths));
        }

        /// Any flipped bit in a proof hash or a proven leaf, a proven leaf left out, or
        /// one proven at another index, changes the root or is refused.
        #[test]
        fn tampering_is_caught(
            seed in any::<u64>(),
            tree_size in 2u64..PROPERTY_LEAVES_MAX,
            picks in prop::collection::vec(any::<prop::sample::Index>(), 1..8),
            bit in 0usize..256,
            victim in any::<prop::sample::Index>(),
        ) {
            let tree = leaves(tree_size, seed);
            let mut proven: Vec<u64> = picks.iter().map(|pick| pick.index(tree_size as usize) as u64).collect();
            proven.sort_unstable();
            proven.dedup();
            let built = build(&tree, &proven);
            let good = known(&tree, &proven);
            let fails = |leaves: &[(u64, [u8; 32])], proof: &[[u8; 32]]| {
                multiproof_root(tree_size, leaves, proof) != Ok(built.root)
            };
            if !built.hashes.is_empty() {
                let position = victim.index(built.hashes.len());
                let mut proof = built.hashes.clone();
                proof[position][bit / 8] ^= 1 << (bit % 8);
                prop_assert!(fails(&good, &proof));
            }
            let position = victim.index(good.len());
            let mut edited = good.clone();
            edited[position].1[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(fails(&edited, &built.hashes));
            if good.len() > 1 {
                let mut fewer = good.clone();
                fewer.remove(position);
                prop_assert!(fails(&fewer, &built.hashes));
            }
            let (index, hash) = good[position];
            for other in [index.wrapping_sub(1), index + 1] {
                if other < tree_size && !proven.contains(&other) {
                    let mut moved = good.clone();
                    moved[position] = (other, hash);
                    moved.sort_unstable_by_key(|&(index, _)| index);
                    prop_assert!(fails(&moved, &built.hashes));
                }
            }
        }
    }
}
