//! RFC 9162 Merkle trees over leaf hashes, as the server builds them. Pure: no I/O.
//!
//! - [`root_of`]: the Merkle Tree Hash `MTH(D[n])` of RFC 9162 §2.1.1 over leaves that are
//!   already hashed (`SHA-256(0x00 || canonical bytes)`, see [`super::event::leaf_hash`]).
//!   An interior node is [`node_hash`] `= SHA-256(0x01 || left || right)`, a tree of
//!   n > 1 leaves splits at the largest power of two k < n, and the empty tree's root is
//!   SHA-256 of the empty string.
//! - [`Rfc9162Hasher`]: the same hashing for rs_merkle, which builds the per-block trees.
//!   rs_merkle pairs neighbours level by level and carries a lone last node up unchanged,
//!   which gives exactly RFC 9162's left-balanced shape; a test checks this for every size
//!   up to 70.
//! - [`CompactTree`]: an append-only accumulator that keeps only the roots of the complete
//!   subtrees (at most 64 hashes whatever the size), for the stream-level tree over block
//!   hashes.
//! - [`inclusion_proof`] and [`consistency_proof`]: the `PATH` (§2.1.3.1) and `PROOF` /
//!   `SUBPROOF` (§2.1.4.1) algorithms, reading leaves through [`LeafSource`];
//!   [`try_inclusion_proof`] and [`try_consistency_proof`] are the same algorithms
//!   reading the roots of perfect subtrees through a fallible [`SubtreeSource`] (the
//!   store keeps them, so a proof costs O(log n) reads instead of O(n) leaves).
//! - [`verify_inclusion`] and [`verify_consistency`]: the verification algorithms of
//!   §2.1.3.2 and §2.1.4.2, with which the server checks a proof before serving it.
//!
//! Proofs are checked by `trail_client::verify`, which was written separately from the
//! RFC text and shares no code with this file on purpose: a bug in one is caught by the
//! other.

use rs_merkle::Hasher;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Domain separator of an interior node (RFC 9162 §2.1.1), so that an interior node can
/// never be passed off as a leaf (leaves use 0x00).
pub const NODE_HASH_PREFIX: u8 = 0x01;

/// `MTH({}) = SHA-256()`, the root of a tree with no leaves.
pub const EMPTY_TREE_ROOT: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// A tree size is a `u64`, so a compact tree holds at most one subtree root per bit.
pub const COMPACT_TREE_SUBTREE_ROOTS_MAX: usize = 64;

/// `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([NODE_HASH_PREFIX]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// `MTH(D[n])` over already-hashed leaves: O(n) hashes, O(log n) stack.
pub fn root_of(leaves: &[[u8; 32]]) -> [u8; 32] {
    if leaves.is_empty() {
        return EMPTY_TREE_ROOT;
    }
    infallible(subtree_root(&FromLeaves(leaves), 0, leaves.len() as u64))
}

/// Where proof generation reads leaf hashes from: a slice, or a closure.
pub trait LeafSource {
    /// The hash of leaf `index`; the caller only asks for indices below the tree size it
    /// is proving about.
    fn leaf(&self, index: u64) -> [u8; 32];
}

impl LeafSource for [[u8; 32]] {
    fn leaf(&self, index: u64) -> [u8; 32] {
        let position = usize::try_from(index).expect("leaf index fits in usize");
        self[position]
    }
}

impl<F> LeafSource for F
where
    F: Fn(u64) -> [u8; 32],
{
    fn leaf(&self, index: u64) -> [u8; 32] {
        self(index)
    }
}

/// Where proof generation reads the roots of perfect subtrees from: the subtree of
/// `2^level` leaves that is the `index`-th of its size from the left, i.e. leaves
/// `index * 2^level .. (index + 1) * 2^level` (level 0: the leaves). Every node of an
/// RFC 9162 tree is such a subtree or splits into them, so a proof needs O(log n) of
/// these reads. Reads may fail (a store); the first error ends the proof.
pub trait SubtreeSource {
    type Error;

    /// `MTH` of the perfect subtree `(level, index)`; asked only for subtrees inside the
    /// tree being proved about.
    fn perfect_root(&self, level: u32, index: u64) -> Result<[u8; 32], Self::Error>;
}

/// A [`SubtreeSource`] that hashes a perfect subtree from its leaves: O(2^level).
pub struct FromLeaves<'a, S: ?Sized>(pub &'a S);

impl<S> SubtreeSource for FromLeaves<'_, S>
where
    S: LeafSource + ?Sized,
{
    type Error = std::convert::Infallible;

    fn perfect_root(&self, level: u32, index: u64) -> Result<[u8; 32], Self::Error> {
        if level == 0 {
            return Ok(self.0.leaf(index));
        }
        Ok(node_hash(
            &self.perfect_root(level - 1, 2 * index)?,
            &self.perfect_root(level - 1, 2 * index + 1)?,
        ))
    }
}

fn infallible<T>(result: Result<T, std::convert::Infallible>) -> T {
    match result {
        Ok(value) => value,
        Err(never) => match never {},
    }
}

/// The audit path of leaf `index` in the tree of the first `tree_size` leaves:
/// `PATH(index, D[tree_size])` of RFC 9162 §2.1.3.1, leaf level first.
///
/// Panics if `index >= tree_size`: asking for a proof of a leaf that is not in the tree
/// is a bug in the caller, and no proof is better than a wrong one.
pub fn inclusion_proof<S>(source: &S, index: u64, tree_size: u64) -> Vec<[u8; 32]>
where
    S: LeafSource + ?Sized,
{
    infallible(try_inclusion_proof(&FromLeaves(source), index, tree_size))
}

/// [`inclusion_proof`] from the roots of perfect subtrees: O(log n) reads (at most one
/// sibling per level is not perfect, and it splits into at most one perfect subtree per
/// level).
pub fn try_inclusion_proof<S>(
    source: &S,
    index: u64,
    tree_size: u64,
) -> Result<Vec<[u8; 32]>, S::Error>
where
    S: SubtreeSource + ?Sized,
{
    assert!(
        index < tree_size,
        "inclusion proof of leaf {index} asked for a tree of {tree_size} leaves"
    );
    let mut proof = Vec::new();
    append_path(source, index, 0, tree_size, &mut proof)?;
    let expected = inclusion_path_len(index, tree_size);
    assert_eq!(
        proof.len(),
        expected,
        "inclusion proof of leaf {index} in a tree of {tree_size} leaves has {} hashes, the \
         sizes imply {expected}",
        proof.len()
    );
    assert!(proof.len() <= COMPACT_TREE_SUBTREE_ROOTS_MAX);
    Ok(proof)
}

/// The proof that the tree of the first `old_size` leaves is a prefix of the tree of the
/// first `new_size`: `PROOF(old_size, D[new_size])` of RFC 9162 §2.1.4.1.
///
/// The RFC defines it for `0 < old_size < new_size`; for `old_size == 0` and
/// `old_size == new_size` the proof is empty (the verifier then compares roots directly).
/// Panics if `old_size > new_size`, a bug in the caller.
pub fn consistency_proof<S>(source: &S, old_size: u64, new_size: u64) -> Vec<[u8; 32]>
where
    S: LeafSource + ?Sized,
{
    infallible(try_consistency_proof(
        &FromLeaves(source),
        old_size,
        new_size,
    ))
}

/// [`consistency_proof`] from the roots of perfect subtrees: O(log n) reads.
pub fn try_consistency_proof<S>(
    source: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<[u8; 32]>, S::Error>
where
    S: SubtreeSource + ?Sized,
{
    assert!(
        old_size <= new_size,
        "consistency proof asked from size {old_size} back to size {new_size}"
    );
    let mut proof = Vec::new();
    if old_size == 0 || old_size == new_size {
        return Ok(proof);
    }
    append_subproof(source, old_size, 0, new_size, true, &mut proof)?;
    let expected = consistency_path_len(old_size, new_size);
    assert_eq!(
        proof.len(),
        expected,
        "consistency proof from size {old_size} to size {new_size} has {} hashes, the sizes \
         imply {expected}",
        proof.len()
    );
    // Each level contributes at most one hash, plus the one for the old tree's own root.
    assert!(proof.len() <= COMPACT_TREE_SUBTREE_ROOTS_MAX + 1);
    Ok(proof)
}

/// How many hashes the inclusion proof of leaf `index` in a tree of `tree_size` leaves
/// holds: one per level below the node where the paths to `index` and to the last
/// leaf part (`inner`), plus one per left sibling above it (`border`), as RFC 9162
/// §2.1.3.2's verifier consumes them. `index < tree_size`.
fn inclusion_path_len(index: u64, tree_size: u64) -> usize {
    let inner = u64::BITS - (index ^ (tree_size - 1)).leading_zeros();
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner + border) as usize
}

/// How many hashes the consistency proof from `old_size` to `new_size` leaves holds
/// (`old_size <= new_size`): none when either tree is the other or empty; else the
/// inclusion path of the old tree's last leaf above the largest perfect subtree that
/// ends it, plus that subtree's root unless it is the whole old tree (RFC 9162
/// §2.1.4.2).
fn consistency_path_len(old_size: u64, new_size: u64) -> usize {
    if old_size == 0 || old_size == new_size {
        return 0;
    }
    let shift = old_size.trailing_zeros() as usize;
    let seed = usize::from(!old_size.is_power_of_two());
    inclusion_path_len(old_size - 1, new_size) - shift + seed
}

/// `MTH` of the first `tree_size` leaves, from the roots of perfect subtrees: one read
/// per set bit of `tree_size`.
pub fn try_root_of<S>(source: &S, tree_size: u64) -> Result<[u8; 32], S::Error>
where
    S: SubtreeSource + ?Sized,
{
    if tree_size == 0 {
        return Ok(EMPTY_TREE_ROOT);
    }
    subtree_root(source, 0, tree_size)
}

/// The largest power of two strictly below `count`: where RFC 9162 splits a tree.
fn split_point(count: u64) -> u64 {
    assert!(count >= 2, "a tree of {count} leaves does not split");
    1 << (u64::BITS - 1 - (count - 1).leading_zeros())
}

/// `MTH(D[start:end])`, from perfect subtrees. In an RFC 9162 tree `start` is a
/// multiple of every power of two up to the node's size, so a node of `2^k` leaves is
/// the perfect subtree `(k, start / 2^k)`.
fn subtree_root<S>(source: &S, start: u64, end: u64) -> Result<[u8; 32], S::Error>
where
    S: SubtreeSource + ?Sized,
{
    assert!(start < end, "empty subtree {start}..{end}");
    let count = end - start;
    if count.is_power_of_two() {
        let level = count.trailing_zeros();
        assert_eq!(start % count, 0, "subtree {start}..{end} is not aligned");
        return source.perfect_root(level, start >> level);
    }
    let middle = start + split_point(count);
    Ok(node_hash(
        &subtree_root(source, start, middle)?,
        &subtree_root(source, middle, end)?,
    ))
}

/// Appends `PATH(index - start, D[start:end])`. `index` is absolute.
fn append_path<S>(
    source: &S,
    index: u64,
    start: u64,
    end: u64,
    proof: &mut Vec<[u8; 32]>,
) -> Result<(), S::Error>
where
    S: SubtreeSource + ?Sized,
{
    assert!(
        start <= index && index < end,
        "inclusion path of leaf {index} asked in subtree {start}..{end}"
    );
    let count = end - start;
    if count == 1 {
        return Ok(());
    }
    let middle = start + split_point(count);
    // The path inside the half that holds the leaf comes first, then that half's sibling.
    if index < middle {
        append_path(source, index, start, middle, proof)?;
        proof.push(subtree_root(source, middle, end)?);
    } else {
        append_path(source, index, middle, end, proof)?;
        proof.push(subtree_root(source, start, middle)?);
    }
    Ok(())
}

/// Appends `SUBPROOF(old_count, D[start:end], node_is_old_root)`, where `old_count` is
/// how many leaves of `start..end` the old tree covers. `node_is_old_root` is the RFC's
/// `b`: whether `D[start:start + old_count]` is the whole old tree, whose root the
/// verifier already has, so it need not be sent.
fn append_subproof<S>(
    source: &S,
    old_count: u64,
    start: u64,
    end: u64,
    node_is_old_root: bool,
    proof: &mut Vec<[u8; 32]>,
) -> Result<(), S::Error>
where
    S: SubtreeSource + ?Sized,
{
    let count = end - start;
    assert!(
        0 < old_count && old_count <= count,
        "consistency subproof of {old_count} old leaves asked in subtree {start}..{end}"
    );
    if old_count == count {
        if !node_is_old_root {
            proof.push(subtree_root(source, start, end)?);
        }
        return Ok(());
    }
    let split = split_point(count);
    let middle = start + split;
    if old_count <= split {
        append_subproof(source, old_count, start, middle, node_is_old_root, proof)?;
        proof.push(subtree_root(source, middle, end)?);
    } else {
        append_subproof(source, old_count - split, middle, end, false, proof)?;
        proof.push(subtree_root(source, start, middle)?);
    }
    Ok(())
}

/// Whether `path` proves leaf `leaf` at `index` in the tree of `tree_size` leaves with
/// root `root`: RFC 9162 §2.1.3.2.
pub fn verify_inclusion(
    leaf: &[u8; 32],
    index: u64,
    tree_size: u64,
    path: &[[u8; 32]],
    root: &[u8; 32],
) -> bool {
    if index >= tree_size {
        return false;
    }
    let mut position = index;
    let mut last = tree_size - 1;
    let mut hash = *leaf;
    for sibling in path {
        if last == 0 {
            return false;
        }
        if position & 1 == 1 || position == last {
            hash = node_hash(sibling, &hash);
            while position & 1 == 0 && position != 0 {
                position >>= 1;
                last >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        position >>= 1;
        last >>= 1;
    }
    last == 0 && hash == *root
}

/// Whether `proof` shows the tree of `old_size` leaves with root `old_root` to be a
/// prefix of the tree of `new_size` leaves with root `new_root`: RFC 9162 §2.1.4.2
/// (for `old_size` 0 or `new_size`, an empty proof and, for equal sizes, equal roots).
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &[u8; 32],
    new_root: &[u8; 32],
    proof: &[[u8; 32]],
) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == 0 {
        return proof.is_empty();
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<[u8; 32]> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let mut old_position = old_size - 1;
    let mut new_last = new_size - 1;
    while old_position & 1 == 1 {
        old_position >>= 1;
        new_last >>= 1;
    }
    let mut old_hash = *first;
    let mut new_hash = *first;
    for node in rest {
        if new_last == 0 {
            return false;
        }
        if old_position & 1 == 1 || old_position == new_last {
            old_hash = node_hash(node, &old_hash);
            new_hash = node_hash(node, &new_hash);
            while old_position & 1 == 0 && old_position != 0 {
                old_position >>= 1;
                new_last >>= 1;
            }
        } else {
            new_hash = node_hash(&new_hash, node);
        }
        old_position >>= 1;
        new_last >>= 1;
    }
    old_hash == *old_root && new_hash == *new_root && new_last == 0
}

/// RFC 9162 hashing for rs_merkle: `hash` is the leaf hash (0x00 prefix), and
/// `concat_and_hash` the interior node hash (0x01 prefix). A lone node at the end of a
/// level is carried up unchanged, as RFC 9162's tree shape requires; rs_merkle's default
/// does the same, but stating it here keeps the shape from depending on a default.
#[derive(Debug, Clone, Copy)]
pub struct Rfc9162Hasher;

impl Hasher for Rfc9162Hasher {
    type Hash = [u8; 32];

    fn hash(data: &[u8]) -> [u8; 32] {
        super::event::leaf_hash(data)
    }

    fn concat_and_hash(left: &[u8; 32], right: Option<&[u8; 32]>) -> [u8; 32] {
        match right {
            Some(right) => node_hash(left, right),
            None => *left,
        }
    }
}

/// An append-only RFC 9162 tree that keeps only the roots of its complete subtrees
/// (a "compact range" from 0): one per set bit of the leaf count, largest (leftmost)
/// first. Memory is at most 64 hashes whatever the size; `push` costs O(1) amortized
/// hashes and `root` O(log n).
///
/// Deserializing checks that the number of subtree roots matches the leaf count.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "CompactTreeRecord")]
pub struct CompactTree {
    leaf_count: u64,
    subtree_roots: Vec<[u8; 32]>,
}

/// The persisted form of a [`CompactTree`], before its invariant is checked.
#[derive(Deserialize)]
struct CompactTreeRecord {
    leaf_count: u64,
    subtree_roots: Vec<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("compact tree of {leaf_count} leaves needs {expected} subtree roots, found {found}")]
pub struct CompactTreeError {
    pub leaf_count: u64,
    pub expected: usize,
    pub found: usize,
}

impl TryFrom<CompactTreeRecord> for CompactTree {
    type Error = CompactTreeError;

    fn try_from(record: CompactTreeRecord) -> Result<CompactTree, CompactTreeError> {
        let expected = record.leaf_count.count_ones() as usize;
        if record.subtree_roots.len() != expected {
            return Err(CompactTreeError {
                leaf_count: record.leaf_count,
                expected,
                found: record.subtree_roots.len(),
            });
        }
        Ok(CompactTree {
            leaf_count: record.leaf_count,
            subtree_roots: record.subtree_roots,
        })
    }
}

impl CompactTree {
    pub fn new() -> CompactTree {
        CompactTree::default()
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: [u8; 32]) {
        self.push_completing(leaf, &mut Vec::new());
    }

    /// Appends a leaf hash, and to `completed` the roots of the perfect subtrees of two
    /// or more leaves that it completes, smallest first: for leaf `i` (counting from 0)
    /// one per trailing one bit of `i`, the subtree of `2^level` leaves at index
    /// `i >> level` for level 1, 2, ... (the store keeps them for O(log n) proofs).
    pub fn push_completing(&mut self, leaf: [u8; 32], completed: &mut Vec<[u8; 32]>) {
        assert!(self.leaf_count < u64::MAX, "compact tree is full");
        // Each trailing one bit of the count is a complete subtree exactly as tall as the
        // one being carried, so the two merge, like a carry in binary addition.
        let mut carried = leaf;
        let mut remaining_count = self.leaf_count;
        while remaining_count & 1 == 1 {
            let left = self
                .subtree_roots
                .pop()
                .expect("one subtree root per set bit of the leaf count");
            carried = node_hash(&left, &carried);
            completed.push(carried);
            remaining_count >>= 1;
        }
        self.subtree_roots.push(carried);
        self.leaf_count += 1;
        assert_eq!(
            self.subtree_roots.len(),
            self.leaf_count.count_ones() as usize,
            "a compact tree of {} leaves keeps one subtree root per set bit of its size",
            self.leaf_count
        );
    }

    /// Number of leaves pushed.
    pub fn len(&self) -> u64 {
        self.leaf_count
    }

    pub fn is_empty(&self) -> bool {
        self.leaf_count == 0
    }

    /// `MTH` of all leaves pushed so far.
    pub fn root(&self) -> [u8; 32] {
        let Some((last, others)) = self.subtree_roots.split_last() else {
            return EMPTY_TREE_ROOT;
        };
        // RFC 9162 splits off the largest complete subtree on the left first, so the
        // right end of the tree is hashed first: fold from the smallest subtree leftwards.
        let mut root = *last;
        for left in others.iter().rev() {
            root = node_hash(left, &root);
        }
        root
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Leaf hashes that differ for every index and seed.
    fn sample_leaves(count: u64, seed: u64) -> Vec<[u8; 32]> {
        let mut leaves = Vec::new();
        for index in 0..count {
            let mut data = seed.to_be_bytes().to_vec();
            data.extend_from_slice(&index.to_be_bytes());
            leaves.push(super::super::event::leaf_hash(&data));
        }
        leaves
    }

    fn hash_from_hex(text: &str) -> [u8; 32] {
        assert_eq!(text.len(), 64);
        let mut hash = [0u8; 32];
        for (position, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[position * 2..position * 2 + 2], 16).unwrap();
        }
        hash
    }

    // --- The reference model: RFC 9162 §2.1 read literally, as slow as it likes. ---

    fn reference_node(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
        let mut bytes = vec![0x01];
        bytes.extend_from_slice(left);
        bytes.extend_from_slice(right);
        Sha256::digest(&bytes).into()
    }

    /// Largest power of two k < n, found by doubling.
    fn reference_split(count: usize) -> usize {
        let mut split = 1;
        while split * 2 < count {
            split *= 2;
        }
        split
    }

    fn reference_mth(leaves: &[[u8; 32]]) -> [u8; 32] {
        match leaves.len() {
            0 => Sha256::digest(b"").into(),
            1 => leaves[0],
            count => {
                let split = reference_split(count);
                reference_node(
                    &reference_mth(&leaves[..split]),
                    &reference_mth(&leaves[split..]),
                )
            }
        }
    }

    /// Recomputes the root from an inclusion proof by walking down the RFC's recursive
    /// decomposition, taking sibling hashes from the end of the proof. Returns `None` if
    /// the proof has the wrong length.
    fn reference_root_from_path(
        leaf: [u8; 32],
        index: usize,
        count: usize,
        proof: &mut Vec<[u8; 32]>,
    ) -> Option<[u8; 32]> {
        if count == 1 {
            return Some(leaf);
        }
        let split = reference_split(count);
        let sibling = proof.pop()?;
        if index < split {
            let left = reference_root_from_path(leaf, index, split, proof)?;
            Some(reference_node(&left, &sibling))
        } else {
            let right = reference_root_from_path(leaf, index - split, count - split, proof)?;
            Some(reference_node(&sibling, &right))
        }
    }

    /// Recomputes `(old root, new root)` from a consistency proof by walking down the
    /// `SUBPROOF` decomposition, taking hashes from the end of the proof.
    fn reference_roots_from_subproof(
        old_count: usize,
        count: usize,
        node_is_old_root: bool,
        old_root: [u8; 32],
        proof: &mut Vec<[u8; 32]>,
    ) -> Option<([u8; 32], [u8; 32])> {
        if old_count == count {
            if node_is_old_root {
                return Some((old_root, old_root));
            }
            let node = proof.pop()?;
            return Some((node, node));
        }
        let split = reference_split(count);
        let sibling = proof.pop()?;
        if old_count <= split {
            let (old, new) =
                reference_roots_from_subproof(old_count, split, node_is_old_root, old_root, proof)?;
            Some((old, reference_node(&new, &sibling)))
        } else {
            let (old, new) = reference_roots_from_subproof(
                old_count - split,
                count - split,
                false,
                old_root,
                proof,
            )?;
            Some((
                reference_node(&sibling, &old),
                reference_node(&sibling, &new),
            ))
        }
    }

    fn check_inclusion(leaves: &[[u8; 32]], index: usize, tree_size: usize) {
        let proof = inclusion_proof(leaves, index as u64, tree_size as u64);
        let mut remaining = proof.clone();
        let root = reference_root_from_path(leaves[index], index, tree_size, &mut remaining);
        assert_eq!(
            root,
            Some(reference_mth(&leaves[..tree_size])),
            "leaf {index} of {tree_size}"
        );
        assert!(
            remaining.is_empty(),
            "proof too long: leaf {index} of {tree_size}"
        );
    }

    fn check_consistency(leaves: &[[u8; 32]], old_size: usize, new_size: usize) {
        let proof = consistency_proof(leaves, old_size as u64, new_size as u64);
        if old_size == 0 || old_size == new_size {
            assert!(proof.is_empty());
            return;
        }
        let old_root = reference_mth(&leaves[..old_size]);
        let mut remaining = proof.clone();
        let roots =
            reference_roots_from_subproof(old_size, new_size, true, old_root, &mut remaining);
        assert_eq!(
            roots,
            Some((old_root, reference_mth(&leaves[..new_size]))),
            "{old_size} to {new_size}"
        );
        assert!(
            remaining.is_empty(),
            "proof too long: {old_size} to {new_size}"
        );
    }

    // --- Unit tests. ---

    #[test]
    fn empty_tree_root_is_sha256_of_nothing() {
        let digest: [u8; 32] = Sha256::digest(b"").into();
        assert_eq!(EMPTY_TREE_ROOT, digest);
        assert_eq!(root_of(&[]), EMPTY_TREE_ROOT);
        assert_eq!(CompactTree::new().root(), EMPTY_TREE_ROOT);
    }

    #[test]
    fn node_hash_is_prefixed_with_one() {
        let left = [0xaa; 32];
        let right = [0xbb; 32];
        assert_eq!(node_hash(&left, &right), reference_node(&left, &right));
        assert_ne!(node_hash(&left, &right), node_hash(&right, &left));
    }

    #[test]
    fn split_point_is_largest_power_of_two_below() {
        for count in 2..=1025u64 {
            assert_eq!(split_point(count), reference_split(count as usize) as u64);
        }
        assert_eq!(split_point(u64::MAX), 1 << 63);
        assert_eq!(split_point((1 << 63) + 1), 1 << 63);
        assert_eq!(split_point(1 << 63), 1 << 62);
    }

    /// The RFC 6962 / certificate-transparency test data: eight leaves and the root of
    /// every prefix. Source: github.com/transparency-dev/merkle, `proof/verify_test.go`
    /// (`leaves` and `roots`), the same data as certificate-transparency's `merkle_test`.
    /// The client's verify tests use the same published vectors.
    fn published_leaves() -> Vec<[u8; 32]> {
        let data: [&[u8]; 8] = [
            b"",
            &[0x00],
            &[0x10],
            &[0x20, 0x21],
            &[0x30, 0x31],
            &[0x40, 0x41, 0x42, 0x43],
            &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
            &[
                0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d,
                0x6e, 0x6f,
            ],
        ];
        data.iter()
            .map(|bytes| super::super::event::leaf_hash(bytes))
            .collect()
    }

    const PUBLISHED_ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn published_roots() {
        let leaves = published_leaves();
        let mut tree = CompactTree::new();
        for (position, expected) in PUBLISHED_ROOTS.iter().enumerate() {
            tree.push(leaves[position]);
            let expected = hash_from_hex(expected);
            assert_eq!(
                root_of(&leaves[..=position]),
                expected,
                "size {}",
                position + 1
            );
            assert_eq!(tree.root(), expected, "size {}", position + 1);
        }
    }

    /// Inclusion and consistency proofs from the same source (`inclusionProofs` there
    /// numbers leaves from 1; here indices start at 0).
    #[test]
    fn published_proofs() {
        let leaves = published_leaves();
        let inclusion: [(u64, u64, &[&str]); 5] = [
            (0, 1, &[]),
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (index, tree_size, expected) in inclusion {
            let expected: Vec<[u8; 32]> = expected.iter().map(|hex| hash_from_hex(hex)).collect();
            assert_eq!(
                inclusion_proof(&leaves[..], index, tree_size),
                expected,
                "leaf {index} of {tree_size}"
            );
        }
        let consistency: [(u64, u64, &[&str]); 5] = [
            (1, 1, &[]),
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
            (
                6,
                7,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
        ];
        for (old_size, new_size, expected) in consistency {
            let expected: Vec<[u8; 32]> = expected.iter().map(|hex| hash_from_hex(hex)).collect();
            assert_eq!(
                consistency_proof(&leaves[..], old_size, new_size),
                expected,
                "{old_size} to {new_size}"
            );
        }
    }

    /// The worked example of RFC 9162 §2.1.5, a tree of 7 leaves `d0..d6`, with each named
    /// node written as the range of leaves under it.
    #[test]
    fn rfc9162_example_proofs() {
        let leaves = sample_leaves(7, 9162);
        let node = |start: usize, end: usize| reference_mth(&leaves[start..end]);
        let (a, b, c, d) = (node(0, 1), node(1, 2), node(2, 3), node(3, 4));
        let (f, j) = (node(5, 6), node(6, 7));
        let (g, h, i) = (node(0, 2), node(2, 4), node(4, 6));
        let (k, l) = (node(0, 4), node(4, 7));
        assert_eq!(a, leaves[0]);

        assert_eq!(inclusion_proof(&leaves[..], 0, 7), vec![b, h, l]);
        assert_eq!(inclusion_proof(&leaves[..], 3, 7), vec![c, g, l]);
        assert_eq!(inclusion_proof(&leaves[..], 4, 7), vec![f, j, k]);
        assert_eq!(inclusion_proof(&leaves[..], 6, 7), vec![i, k]);

        assert_eq!(consistency_proof(&leaves[..], 3, 7), vec![c, d, g, l]);
        assert_eq!(consistency_proof(&leaves[..], 4, 7), vec![l]);
        assert_eq!(consistency_proof(&leaves[..], 6, 7), vec![i, j, k]);
    }

    /// rs_merkle with [`Rfc9162Hasher`] builds RFC 9162's tree shape: its root equals
    /// `MTH` for every size, whether the tree is built at once or leaf by leaf.
    #[test]
    fn rs_merkle_matches_rfc9162_for_every_size_up_to_70() {
        let leaves = sample_leaves(70, 1);
        let mut incremental = rs_merkle::MerkleTree::<Rfc9162Hasher>::new();
        for size in 1..=70 {
            let expected = root_of(&leaves[..size]);
            assert_eq!(expected, reference_mth(&leaves[..size]));
            let tree = rs_merkle::MerkleTree::<Rfc9162Hasher>::from_leaves(&leaves[..size]);
            assert_eq!(tree.root(), Some(expected), "from_leaves, size {size}");
            incremental.insert(leaves[size - 1]).commit();
            assert_eq!(incremental.root(), Some(expected), "insert, size {size}");
        }
    }

    #[test]
    fn rfc9162_hasher_hashes_data_as_a_leaf() {
        assert_eq!(
            Rfc9162Hasher::hash(b"event"),
            super::super::event::leaf_hash(b"event")
        );
        let lone = [7u8; 32];
        assert_eq!(Rfc9162Hasher::concat_and_hash(&lone, None), lone);
    }

    #[test]
    fn leaf_source_from_a_closure() {
        let leaves = sample_leaves(13, 2);
        let source = |index: u64| leaves[index as usize];
        assert_eq!(
            inclusion_proof(&source, 9, 13),
            inclusion_proof(&leaves[..], 9, 13)
        );
        assert_eq!(
            consistency_proof(&source, 5, 13),
            consistency_proof(&leaves[..], 5, 13)
        );
    }

    /// Every leaf and every pair of sizes of every tree up to 40 leaves.
    #[test]
    fn every_proof_of_small_trees() {
        let leaves = sample_leaves(40, 3);
        for new_size in 1..=40 {
            for index in 0..new_size {
                check_inclusion(&leaves, index, new_size);
            }
            for old_size in 0..=new_size {
                check_consistency(&leaves, old_size, new_size);
            }
        }
    }

    #[test]
    fn proof_lengths_at_the_edges() {
        let leaves = sample_leaves(1025, 4);
        assert!(inclusion_proof(&leaves[..], 0, 1).is_empty());
        assert_eq!(inclusion_proof(&leaves[..], 0, 1024).len(), 10);
        assert_eq!(inclusion_proof(&leaves[..], 1024, 1025).len(), 1);
        assert_eq!(inclusion_proof(&leaves[..], 0, 1025).len(), 11);
        // A power-of-two old tree is a node of the new one: its root is not resent.
        assert_eq!(consistency_proof(&leaves[..], 512, 1024).len(), 1);
        assert_eq!(consistency_proof(&leaves[..], 1024, 1025).len(), 1);
        // 1023 leaves are ten complete subtrees (512 + 256 + ... + 1), none of them the
        // old root, plus the one new leaf beside the last.
        assert_eq!(consistency_proof(&leaves[..], 1023, 1024).len(), 11);
    }

    /// Every proof over trees of up to 64 leaves holds as many hashes as its sizes imply
    /// (the proof functions assert it; here over every index and size pair).
    #[test]
    fn proof_lengths_are_what_the_sizes_imply() {
        let leaves: Vec<[u8; 32]> = (0u8..64)
            .map(|n| super::super::event::leaf_hash(&[n]))
            .collect();
        assert_eq!(inclusion_path_len(0, 1), 0);
        assert_eq!(inclusion_path_len(0, 7), 3);
        assert_eq!(inclusion_path_len(6, 7), 2);
        assert_eq!(consistency_path_len(4, 7), 1);
        assert_eq!(consistency_path_len(3, 7), 4);
        for tree_size in 1..=leaves.len() as u64 {
            for index in 0..tree_size {
                let proof = inclusion_proof(leaves.as_slice(), index, tree_size);
                assert_eq!(proof.len(), inclusion_path_len(index, tree_size));
            }
            for old_size in 0..=tree_size {
                let proof = consistency_proof(leaves.as_slice(), old_size, tree_size);
                assert_eq!(proof.len(), consistency_path_len(old_size, tree_size));
            }
        }
    }

    #[test]
    #[should_panic(expected = "inclusion proof of leaf 3")]
    fn inclusion_proof_outside_the_tree_panics() {
        let leaves = sample_leaves(3, 5);
        inclusion_proof(&leaves[..], 3, 3);
    }

    #[test]
    #[should_panic(expected = "consistency proof asked from size 4")]
    fn consistency_proof_backwards_panics() {
        let leaves = sample_leaves(4, 6);
        consistency_proof(&leaves[..], 4, 3);
    }

    #[test]
    fn compact_tree_matches_reference_at_every_size() {
        let leaves = sample_leaves(300, 7);
        let mut tree = CompactTree::new();
        assert!(tree.is_empty());
        for (position, leaf) in leaves.iter().enumerate() {
            tree.push(*leaf);
            assert_eq!(tree.len(), position as u64 + 1);
            assert_eq!(tree.root(), reference_mth(&leaves[..=position]));
        }
    }

    #[test]
    fn compact_tree_round_trips_through_serde() {
        let mut tree = CompactTree::new();
        for leaf in sample_leaves(11, 8) {
            tree.push(leaf);
        }
        let json = serde_json::to_string(&tree).unwrap();
        let from_json: CompactTree = serde_json::from_str(&json).unwrap();
        assert_eq!(from_json, tree);
        let bytes = bincode::serialize(&tree).unwrap();
        let mut from_bincode: CompactTree = bincode::deserialize(&bytes).unwrap();
        assert_eq!(from_bincode, tree);
        // It keeps growing correctly after being restored.
        let more = sample_leaves(12, 8);
        from_bincode.push(more[11]);
        assert_eq!(from_bincode.root(), reference_mth(&more));
    }

    #[test]
    fn compact_tree_rejects_inconsistent_records() {
        let mut tree = CompactTree::new();
        for leaf in sample_leaves(5, 9) {
            tree.push(leaf);
        }
        let mut value = serde_json::to_value(&tree).unwrap();
        value["leaf_count"] = serde_json::json!(7);
        let error = serde_json::from_value::<CompactTree>(value).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("compact tree of 7 leaves needs 3 subtree roots, found 2"),
            "{error}"
        );
    }

    /// A store of perfect subtree roots as apply writes them (the leaves, and what
    /// [`CompactTree::push_completing`] reports per leaf), counting its reads.
    struct StoredNodes {
        leaves: Vec<[u8; 32]>,
        nodes: std::collections::HashMap<(u32, u64), [u8; 32]>,
        reads: std::cell::Cell<u64>,
    }

    impl StoredNodes {
        fn build(leaves: &[[u8; 32]]) -> StoredNodes {
            let mut tree = CompactTree::new();
            let mut nodes = std::collections::HashMap::new();
            for (position, leaf) in leaves.iter().enumerate() {
                let mut completed = Vec::new();
                tree.push_completing(*leaf, &mut completed);
                assert_eq!(completed.len() as u32, (position as u64).trailing_ones());
                for (offset, root) in completed.into_iter().enumerate() {
                    let level = offset as u32 + 1;
                    nodes.insert((level, position as u64 >> level), root);
                }
            }
            StoredNodes {
                leaves: leaves.to_vec(),
                nodes,
                reads: std::cell::Cell::new(0),
            }
        }

        fn take_reads(&self) -> u64 {
            self.reads.replace(0)
        }
    }

    impl SubtreeSource for StoredNodes {
        type Error = String;

        fn perfect_root(&self, level: u32, index: u64) -> Result<[u8; 32], String> {
            self.reads.set(self.reads.get() + 1);
            if level == 0 {
                return Ok(self.leaves[index as usize]);
            }
            self.nodes
                .get(&(level, index))
                .copied()
                .ok_or_else(|| format!("no node ({level}, {index})"))
        }
    }

    /// At most two reads per level: a proof's siblings are perfect subtrees but one,
    /// which splits into at most one perfect subtree per level.
    fn reads_max(tree_size: u64) -> u64 {
        2 * u64::from(u64::BITS - tree_size.leading_zeros()) + 2
    }

    #[test]
    fn stored_nodes_give_the_same_proofs_in_log_reads_for_every_small_tree() {
        let leaves = sample_leaves(140, 10);
        let stored = StoredNodes::build(&leaves);
        for new_size in 1..=140u64 {
            assert_eq!(
                try_root_of(&stored, new_size).unwrap(),
                root_of(&leaves[..new_size as usize])
            );
            assert!(stored.take_reads() <= u64::from(new_size.count_ones()));
            let root = root_of(&leaves[..new_size as usize]);
            for index in 0..new_size {
                let proof = try_inclusion_proof(&stored, index, new_size).unwrap();
                assert!(
                    stored.take_reads() <= reads_max(new_size),
                    "{index} of {new_size}"
                );
                assert_eq!(proof, inclusion_proof(&leaves[..], index, new_size));
                assert!(verify_inclusion(
                    &leaves[index as usize],
                    index,
                    new_size,
                    &proof,
                    &root
                ));
            }
            for old_size in 0..=new_size {
                let proof = try_consistency_proof(&stored, old_size, new_size).unwrap();
                assert!(
                    stored.take_reads() <= reads_max(new_size),
                    "{old_size} to {new_size}"
                );
                assert_eq!(proof, consistency_proof(&leaves[..], old_size, new_size));
                let old_root = root_of(&leaves[..old_size as usize]);
                assert!(
                    verify_consistency(old_size, new_size, &old_root, &root, &proof),
                    "{old_size} to {new_size}"
                );
            }
        }
    }

    #[test]
    fn verification_rejects_a_changed_proof() {
        let leaves = sample_leaves(13, 11);
        let root = root_of(&leaves);
        let mut path = inclusion_proof(&leaves[..], 5, 13);
        assert!(verify_inclusion(&leaves[5], 5, 13, &path, &root));
        assert!(!verify_inclusion(&leaves[5], 6, 13, &path, &root));
        assert!(!verify_inclusion(&leaves[5], 5, 4, &path, &root));
        path[1][0] ^= 1;
        assert!(!verify_inclusion(&leaves[5], 5, 13, &path, &root));
        let old_root = root_of(&leaves[..6]);
        let mut proof = consistency_proof(&leaves[..], 6, 13);
        assert!(verify_consistency(6, 13, &old_root, &root, &proof));
        assert!(!verify_consistency(7, 13, &old_root, &root, &proof));
        proof.pop();
        assert!(!verify_consistency(6, 13, &old_root, &root, &proof));
    }

    proptest! {
        #[test]
        fn root_of_matches_reference(count in 0u64..300, seed in any::<u64>()) {
            let leaves = sample_leaves(count, seed);
            prop_assert_eq!(root_of(&leaves), reference_mth(&leaves));
        }

        #[test]
        fn inclusion_proofs_match_reference(
            tree_size in 1usize..400,
            index_fraction in 0.0f64..1.0,
            seed in any::<u64>(),
        ) {
            let leaves = sample_leaves(tree_size as u64, seed);
            let index = ((tree_size as f64 * index_fraction) as usize).min(tree_size - 1);
            check_inclusion(&leaves, index, tree_size);
        }

        #[test]
        fn consistency_proofs_match_reference(
            new_size in 1usize..400,
            old_fraction in 0.0f64..=1.0,
            seed in any::<u64>(),
        ) {
            let leaves = sample_leaves(new_size as u64, seed);
            let old_size = ((new_size as f64 * old_fraction) as usize).min(new_size);
            check_consistency(&leaves, old_size, new_size);
        }

        /// Proofs from stored perfect subtree roots are byte-identical to proofs from
        /// every leaf, cost O(log n) reads, and verify.
        #[test]
        fn stored_node_proofs_equal_leaf_proofs(
            new_size in 1u64..5_000,
            index_fraction in 0.0f64..1.0,
            old_fraction in 0.0f64..=1.0,
            seed in any::<u64>(),
        ) {
            let leaves = sample_leaves(new_size, seed);
            let stored = StoredNodes::build(&leaves);
            let root = root_of(&leaves);
            let index = ((new_size as f64 * index_fraction) as u64).min(new_size - 1);
            let path = try_inclusion_proof(&stored, index, new_size).unwrap();
            prop_assert!(stored.take_reads() <= reads_max(new_size));
            prop_assert_eq!(&path, &inclusion_proof(&leaves[..], index, new_size));
            prop_assert!(verify_inclusion(&leaves[index as usize], index, new_size, &path, &root));
            let old_size = ((new_size as f64 * old_fraction) as u64).min(new_size);
            let proof = try_consistency_proof(&stored, old_size, new_size).unwrap();
            prop_assert!(stored.take_reads() <= reads_max(new_size));
            prop_assert_eq!(&proof, &consistency_proof(&leaves[..], old_size, new_size));
            let old_root = try_root_of(&stored, old_size).unwrap();
            prop_assert_eq!(old_root, root_of(&leaves[..old_size as usize]));
            prop_assert!(verify_consistency(old_size, new_size, &old_root, &root, &proof));
        }

        #[test]
        fn compact_tree_survives_a_round_trip_at_any_size(
            count in 0u64..200,
            seed in any::<u64>(),
        ) {
            let leaves = sample_leaves(count, seed);
            let mut tree = CompactTree::new();
            for leaf in &leaves {
                tree.push(*leaf);
            }
            let restored: CompactTree =
                bincode::deserialize(&bincode::serialize(&tree).unwrap()).unwrap();
            prop_assert_eq!(restored.root(), reference_mth(&leaves));
            prop_assert_eq!(restored.len(), count);
        }
    }
}
