//! Verification of Trail's Merkle proofs, written from RFC 9162 (Certificate Transparency
//! 2.0), which keeps RFC 6962's tree. Pure: no I/O.
//!
//! - [`leaf_hash`]: `SHA-256(0x00 || data)` (§2.1.1); interior nodes are
//!   `SHA-256(0x01 || left || right)`.
//! - [`verify_inclusion`]: §2.1.3.2, "Verifying an Inclusion Proof".
//! - [`verify_consistency`]: §2.1.4.2, "Verifying Consistency between Two Tree Heads".
//! - [`merkle_root`] and [`RootBuilder`]: MTH (§2.1.1) over already-hashed leaves, for the
//!   full audit, which recomputes every root instead of checking proofs.
//!
//! This file deliberately shares no code with the server's tree code (`trail-node`,
//! `ledger::merkle`): it is a second, independent implementation, so that a bug on either
//! side shows up as a proof that fails to verify instead of being repeated on both.
//!
//! A proof binds a leaf to a root, not to a tree size: the same path can prove leaf 0 in
//! trees of 3 and of 4 leaves, each against the root of 3 leaves. So `tree_size` and
//! `root` must come from the same signed checkpoint; never take the size from the proof
//! response and the root from somewhere else.

use sha2::{Digest, Sha256};

/// `SHA-256()`: RFC 9162's root of a tree with no leaves.
pub const EMPTY_TREE_ROOT: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// Why a proof did not verify. Every variant names the input at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("leaf index {index} is out of range for a tree of {tree_size} leaves")]
    IndexOutOfRange { index: u64, tree_size: u64 },
    #[error("old tree size {old_size} is greater than new tree size {new_size}")]
    OldSizeGreaterThanNewSize { old_size: u64, new_size: u64 },
    #[error("proof too short: {actual_hashes} hashes, expected {expected_hashes}")]
    ProofTooShort {
        expected_hashes: usize,
        actual_hashes: usize,
    },
    #[error("proof too long: {actual_hashes} hashes, expected {expected_hashes}")]
    ProofTooLong {
        expected_hashes: usize,
        actual_hashes: usize,
    },
    #[error("root mismatch: the proof gives {}, expected {}", hex(.computed), hex(.expected))]
    RootMismatch {
        computed: [u8; 32],
        expected: [u8; 32],
    },
    #[error("old root mismatch: the proof gives {}, expected {}", hex(.computed), hex(.expected))]
    OldRootMismatch {
        computed: [u8; 32],
        expected: [u8; 32],
    },
    #[error("new root mismatch: the proof gives {}, expected {}", hex(.computed), hex(.expected))]
    NewRootMismatch {
        computed: [u8; 32],
        expected: [u8; 32],
    },
    #[error(
        "two different roots for the same tree size {tree_size}: old {}, new {}",
        hex(.old_root),
        hex(.new_root)
    )]
    RootsDifferAtSameSize {
        tree_size: u64,
        old_root: [u8; 32],
        new_root: [u8; 32],
    },
}

fn hex(hash: &[u8; 32]) -> String {
    let mut text = String::with_capacity(64);
    for byte in hash {
        text.push_str(&format!("{byte:02x}"));
    }
    text
}

/// RFC 9162 leaf hash: `SHA-256(0x00 || data)`.
pub fn leaf_hash(data: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(data);
    hasher.finalize().into()
}

/// RFC 9162 interior node: `SHA-256(0x01 || left || right)`.
fn interior_hash(left: &[u8; 32], right: &[u8; 32]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left);
    hasher.update(right);
    hasher.finalize().into()
}

/// RFC 9162 MTH of leaves that are already hashed (event leaf hashes or block hashes),
/// built one leaf at a time in O(log n) memory, so an audit of millions of events keeps
/// no more than 64 hashes per tree.
///
/// The tree of n leaves splits at the largest power of two below n, so it is a row of
/// complete subtrees, one per set bit of n, largest first. The builder keeps the roots of
/// that row; the full root folds them from the right (the smallest subtree is the
/// deepest right child).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RootBuilder {
    /// Roots of the complete subtrees, largest (leftmost) first; subtree `k` from the end
    /// has `2^(position of the k-th set bit of leaves_count)` leaves.
    subtree_roots: Vec<[u8; 32]>,
    leaves_count: u64,
}

impl RootBuilder {
    pub fn new() -> RootBuilder {
        RootBuilder::default()
    }

    /// Appends the next leaf (a hash, not hashed again).
    pub fn push(&mut self, leaf: [u8; 32]) {
        assert!(self.leaves_count < u64::MAX, "tree full");
        let mut merged = leaf;
        // Adding 1 to the count carries through its trailing ones: each carry merges the
        // two equal subtrees at that level into one.
        let mut carries = self.leaves_count.trailing_ones();
        while carries > 0 {
            let left = self
                .subtree_roots
                .pop()
                .expect("one subtree per set bit of the count");
            merged = interior_hash(&left, &merged);
            carries -= 1;
        }
        self.subtree_roots.push(merged);
        self.leaves_count += 1;
        assert_eq!(
            self.subtree_roots.len(),
            self.leaves_count.count_ones() as usize
        );
    }

    /// Leaves pushed so far.
    pub fn len(&self) -> u64 {
        self.leaves_count
    }

    pub fn is_empty(&self) -> bool {
        self.leaves_count == 0
    }

    /// The root of the leaves pushed so far; [`EMPTY_TREE_ROOT`] when there are none.
    pub fn root(&self) -> [u8; 32] {
        let Some((last, rest)) = self.subtree_roots.split_last() else {
            return EMPTY_TREE_ROOT;
        };
        let mut root = *last;
        for left in rest.iter().rev() {
            root = interior_hash(left, &root);
        }
        root
    }
}

/// RFC 9162 MTH of `leaves`, which are already hashed.
pub fn merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    let mut builder = RootBuilder::new();
    for leaf in leaves {
        builder.push(*leaf);
    }
    builder.root()
}

/// Where the next proof hash goes when climbing from the leaf towards the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// `r = HASH(0x01 || p || r)`.
    Left,
    /// `r = HASH(0x01 || r || p)`.
    Right,
}

/// Drops the lowest bit of both RFC counters `fn` and `sn`.
fn shift(node_index: &mut u64, last_index: &mut u64) {
    *node_index >>= 1;
    *last_index >>= 1;
}

/// The index arithmetic of §2.1.3.2 step 4, without the hashing: which side each proof
/// hash goes on, one entry per hash the proof must have. Running it first lets a proof of
/// the wrong length be refused as too short or too long before any hashing. At most 64
/// entries, one per level of a tree of up to 2^64 leaves.
///
/// `node_index` and `last_index` are the RFC's `fn` and `sn`.
fn inclusion_sides(index: u64, tree_size: u64) -> Vec<Side> {
    assert!(index < tree_size);
    let mut node_index = index;
    let mut last_index = tree_size - 1;
    let mut sides = Vec::new();
    // 4a: a proof hash with `sn` already 0 is one too many, so the steps end there.
    while last_index != 0 {
        // 4b: the node is a right child, or the last node of its level with no sibling
        // to its right; either way the proof hash is on its left.
        if node_index & 1 == 1 || node_index == last_index {
            sides.push(Side::Left);
            // A last node that is a left child has no sibling at this level: it moves up
            // unchanged until it becomes a right child or the leftmost node.
            if node_index & 1 == 0 {
                while node_index & 1 == 0 && node_index != 0 {
                    shift(&mut node_index, &mut last_index);
                }
            }
        } else {
            sides.push(Side::Right);
        }
        // 4c.
        shift(&mut node_index, &mut last_index);
    }
    assert!(sides.len() <= 64);
    sides
}

fn check_length(expected_hashes: usize, actual_hashes: usize) -> Result<(), VerifyError> {
    if actual_hashes < expected_hashes {
        return Err(VerifyError::ProofTooShort {
            expected_hashes,
            actual_hashes,
        });
    }
    if actual_hashes > expected_hashes {
        return Err(VerifyError::ProofTooLong {
            expected_hashes,
            actual_hashes,
        });
    }
    Ok(())
}

/// Checks that `leaf_hash` is leaf `index` of the tree of `tree_size` leaves whose root is
/// `root`, given its audit path `proof` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &[u8; 32],
    index: u64,
    tree_size: u64,
    proof: &[[u8; 32]],
    root: &[u8; 32],
) -> Result<(), VerifyError> {
    // Step 1.
    if index >= tree_size {
        return Err(VerifyError::IndexOutOfRange { index, tree_size });
    }
    let sides = inclusion_sides(index, tree_size);
    check_length(sides.len(), proof.len())?;
    // Steps 3 and 4, with the sides worked out above.
    let mut computed = *leaf_hash;
    for (side, proof_hash) in sides.iter().zip(proof) {
        computed = match side {
            Side::Left => interior_hash(proof_hash, &computed),
            Side::Right => interior_hash(&computed, proof_hash),
        };
    }
    // Step 5; `sn` is 0 by construction of `sides`.
    if computed != *root {
        return Err(VerifyError::RootMismatch {
            computed,
            expected: *root,
        });
    }
    Ok(())
}

/// What one hash after the first does in §2.1.4.2 step 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ConsistencyStep {
    /// The hash is a left sibling in both trees: `fr = HASH(0x01 || c || fr)` and
    /// `sr = HASH(0x01 || c || sr)`.
    LeftOfBoth,
    /// The hash covers leaves only the new tree has: `sr = HASH(0x01 || sr || c)`.
    RightOfNew,
}

/// The index arithmetic of §2.1.4.2 steps 3, 4 and 6, without the hashing, for
/// `0 < old_size < new_size`: one step per proof hash after the first. At most 64.
fn consistency_steps(old_size: u64, new_size: u64) -> Vec<ConsistencyStep> {
    assert!(0 < old_size && old_size < new_size);
    // Step 3: `fn` and `sn`.
    let mut node_index = old_size - 1;
    let mut last_index = new_size - 1;
    // Step 4: climb past the levels where the old tree's last node is a right child;
    // those nodes are inside the first proof hash.
    while node_index & 1 == 1 {
        shift(&mut node_index, &mut last_index);
    }
    // Steps 6a-6c walk up exactly as the inclusion steps 4a-4c do, from here.
    inclusion_sides(node_index, last_index + 1)
        .into_iter()
        .map(|side| match side {
            Side::Left => ConsistencyStep::LeftOfBoth,
            Side::Right => ConsistencyStep::RightOfNew,
        })
        .collect()
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix of the tree
/// of `new_size` leaves with root `new_root`, given the consistency proof `proof`
/// (RFC 9162 §2.1.4.2).
///
/// The RFC covers `0 < old_size < new_size`. For equal sizes the proof must be empty and
/// the roots equal. An empty old tree is a prefix of every tree, so the proof must be
/// empty, but its root must still be [`EMPTY_TREE_ROOT`]: a checkpoint of size 0 with any
/// other root is not a valid tree head.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &[u8; 32],
    new_root: &[u8; 32],
    proof: &[[u8; 32]],
) -> Result<(), VerifyError> {
    if old_size > new_size {
        return Err(VerifyError::OldSizeGreaterThanNewSize { old_size, new_size });
    }
    if old_size == new_size {
        check_length(0, proof.len())?;
        if old_root != new_root {
            return Err(VerifyError::RootsDifferAtSameSize {
                tree_size: old_size,
                old_root: *old_root,
                new_root: *new_root,
            });
        }
        if old_size == 0 && *old_root != EMPTY_TREE_ROOT {
            return Err(VerifyError::OldRootMismatch {
                computed: EMPTY_TREE_ROOT,
                expected: *old_root,
            });
        }
        return Ok(());
    }
    if old_size == 0 {
        check_length(0, proof.len())?;
        if *old_root != EMPTY_TREE_ROOT {
            return Err(VerifyError::OldRootMismatch {
                computed: EMPTY_TREE_ROOT,
                expected: *old_root,
            });
        }
        return Ok(());
    }

    // Step 2: when the old tree is complete (a power of two), it is a node of the new
    // tree, and the proof leaves out its root, which the verifier already has.
    let old_tree_is_complete = old_size.is_power_of_two();
    let steps = consistency_steps(old_size, new_size);
    let hashes_sent = if old_tree_is_complete {
        steps.len()
    } else {
        steps.len() + 1
    };
    // Step 1 (an empty proof fails) is covered here: `steps` is never empty when
    // old_size < new_size, as `sn` starts above `fn` and both must reach 0.
    check_length(hashes_sent, proof.len())?;
    let (first, rest) = if old_tree_is_complete {
        (*old_root, proof)
    } else {
        (proof[0], &proof[1..])
    };
    assert_eq!(rest.len(), steps.len());

    // Steps 5 and 6.
    let mut old_computed = first;
    let mut new_computed = first;
    for (step, proof_hash) in steps.iter().zip(rest) {
        match step {
            ConsistencyStep::LeftOfBoth => {
                old_computed = interior_hash(proof_hash, &old_computed);
                new_computed = interior_hash(proof_hash, &new_computed);
            }
            ConsistencyStep::RightOfNew => {
                new_computed = interior_hash(&new_computed, proof_hash);
            }
        }
    }
    // Step 7; `sn` is 0 by construction of `steps`.
    if old_computed != *old_root {
        return Err(VerifyError::OldRootMismatch {
            computed: old_computed,
            expected: *old_root,
        });
    }
    if new_computed != *new_root {
        return Err(VerifyError::NewRootMismatch {
            computed: new_computed,
            expected: *new_root,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn from_hex(text: &str) -> [u8; 32] {
        assert_eq!(text.len(), 64, "{text}");
        let mut hash = [0u8; 32];
        for (position, byte) in hash.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[position * 2..position * 2 + 2], 16).unwrap();
        }
        hash
    }

    fn from_hex_list(texts: &[&str]) -> Vec<[u8; 32]> {
        texts.iter().map(|text| from_hex(text)).collect()
    }

    // --- Published test vectors. ---
    //
    // The RFC 6962 test data of certificate-transparency, as kept today by
    // github.com/transparency-dev/merkle in `proof/verify_test.go` (the `leaves`, `roots`,
    // `inclusionProofs` and `consistencyProofs` tables, and `sha256EmptyTreeHash`).
    // There leaves are numbered from 1 in `inclusionProofs`; here indices start at 0.

    const LEAF_DATA: [&[u8]; 8] = [
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

    /// `ROOTS[n - 1]` is the root of the first n leaves.
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    const EMPTY_ROOT_HEX: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    /// `(index, tree_size, proof)`.
    fn inclusion_vectors() -> Vec<(u64, u64, Vec<[u8; 32]>)> {
        vec![
            (0, 1, vec![]),
            (
                0,
                8,
                from_hex_list(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                5,
                8,
                from_hex_list(&[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (
                2,
                3,
                from_hex_list(&[
                    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
                ]),
            ),
            (
                1,
                5,
                from_hex_list(&[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ]),
            ),
        ]
    }

    /// `(old_size, new_size, proof)`.
    fn consistency_vectors() -> Vec<(u64, u64, Vec<[u8; 32]>)> {
        vec![
            (1, 1, vec![]),
            (
                1,
                8,
                from_hex_list(&[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ]),
            ),
            (
                6,
                8,
                from_hex_list(&[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
            (
                2,
                5,
                from_hex_list(&[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ]),
            ),
            (
                6,
                7,
                from_hex_list(&[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ]),
            ),
        ]
    }

    fn root(tree_size: u64) -> [u8; 32] {
        from_hex(ROOTS[tree_size as usize - 1])
    }

    fn flip_bit(hash: &[u8; 32], bit: usize) -> [u8; 32] {
        let mut flipped = *hash;
        flipped[bit / 8] ^= 1 << (bit % 8);
        flipped
    }

    #[test]
    fn empty_tree_root_is_the_published_one() {
        assert_eq!(EMPTY_TREE_ROOT, from_hex(EMPTY_ROOT_HEX));
        let digest: [u8; 32] = Sha256::digest(b"").into();
        assert_eq!(EMPTY_TREE_ROOT, digest);
        assert_eq!(reference_root(&[]), EMPTY_TREE_ROOT);
    }

    /// The reference model below builds the published roots, so its proofs can be trusted
    /// in the property tests.
    #[test]
    fn reference_model_gives_the_published_roots() {
        let leaves: Vec<[u8; 32]> = LEAF_DATA.iter().map(|data| leaf_hash(data)).collect();
        assert_eq!(
            leaves[0],
            root(1),
            "a one-leaf tree's root is its leaf hash"
        );
        for tree_size in 1..=8 {
            assert_eq!(
                reference_root(&leaves[..tree_size]),
                root(tree_size as u64),
                "size {tree_size}"
            );
        }
        for (index, tree_size, proof) in inclusion_vectors() {
            assert_eq!(
                reference_inclusion_proof(&leaves[..tree_size as usize], index as usize),
                proof
            );
        }
        for (old_size, new_size, proof) in consistency_vectors() {
            assert_eq!(
                reference_consistency_proof(&leaves[..new_size as usize], old_size as usize),
                proof
            );
        }
    }

    #[test]
    fn published_inclusion_proofs_verify() {
        for (index, tree_size, proof) in inclusion_vectors() {
            let leaf = leaf_hash(LEAF_DATA[index as usize]);
            assert_eq!(
                verify_inclusion(&leaf, index, tree_size, &proof, &root(tree_size)),
                Ok(()),
                "leaf {index} of {tree_size}"
            );
        }
    }

    #[test]
    fn published_consistency_proofs_verify() {
        for (old_size, new_size, proof) in consistency_vectors() {
            assert_eq!(
                verify_consistency(old_size, new_size, &root(old_size), &root(new_size), &proof),
                Ok(()),
                "{old_size} to {new_size}"
            );
        }
    }

    /// The corruptions of transparency-dev/merkle's `corruptInclusionProof`, and every
    /// single bit of every proof hash, the leaf and the root.
    #[test]
    fn corrupted_published_inclusion_proofs_fail() {
        let some_hash =
            from_hex("abacaba000000000000000000000000000000000000000000060061e00123456");
        for (index, tree_size, proof) in inclusion_vectors() {
            let leaf = leaf_hash(LEAF_DATA[index as usize]);
            let good_root = root(tree_size);
            let fails = |leaf: &[u8; 32],
                         index: u64,
                         tree_size: u64,
                         proof: &[[u8; 32]],
                         root: &[u8; 32]| {
                verify_inclusion(leaf, index, tree_size, proof, root).is_err()
            };
            assert!(fails(
                &leaf,
                index.wrapping_sub(1),
                tree_size,
                &proof,
                &good_root
            ));
            assert!(fails(&leaf, index + 1, tree_size, &proof, &good_root));
            assert!(fails(&leaf, index ^ 2, tree_size, &proof, &good_root));
            assert!(fails(&leaf, index, tree_size * 2, &proof, &good_root));
            assert!(fails(&leaf, index, tree_size / 2, &proof, &good_root));
            assert!(fails(
                &leaf_hash(b"WrongLeaf"),
                index,
                tree_size,
                &proof,
                &good_root
            ));
            assert!(fails(&leaf, index, tree_size, &proof, &EMPTY_TREE_ROOT));
            assert!(fails(&leaf, index, tree_size, &proof, &some_hash));
            let mut extended = proof.clone();
            extended.push(good_root);
            assert_eq!(
                verify_inclusion(&leaf, index, tree_size, &extended, &good_root),
                Err(VerifyError::ProofTooLong {
                    expected_hashes: proof.len(),
                    actual_hashes: proof.len() + 1
                })
            );
            let mut prepended = vec![good_root];
            prepended.extend_from_slice(&proof);
            assert!(fails(&leaf, index, tree_size, &prepended, &good_root));
            if !proof.is_empty() {
                assert_eq!(
                    verify_inclusion(
                        &leaf,
                        index,
                        tree_size,
                        &proof[..proof.len() - 1],
                        &good_root
                    ),
                    Err(VerifyError::ProofTooShort {
                        expected_hashes: proof.len(),
                        actual_hashes: proof.len() - 1
                    })
                );
            }
            for position in 0..proof.len() {
                for bit in 0..256 {
                    let mut corrupted = proof.clone();
                    corrupted[position] = flip_bit(&proof[position], bit);
                    assert!(matches!(
                        verify_inclusion(&leaf, index, tree_size, &corrupted, &good_root),
                        Err(VerifyError::RootMismatch { .. })
                    ));
                }
            }
            for bit in 0..256 {
                assert!(fails(
                    &flip_bit(&leaf, bit),
                    index,
                    tree_size,
                    &proof,
                    &good_root
                ));
                assert!(fails(
                    &leaf,
                    index,
                    tree_size,
                    &proof,
                    &flip_bit(&good_root, bit)
                ));
            }
        }
    }

    /// The corruptions of transparency-dev/merkle's `corruptConsistencyProof`, and every
    /// single bit of every proof hash and of both roots.
    #[test]
    fn corrupted_published_consistency_proofs_fail() {
        for (old_size, new_size, proof) in consistency_vectors() {
            if proof.is_empty() {
                continue;
            }
            let old_root = root(old_size);
            let new_root = root(new_size);
            let fails = |old_size: u64,
                         new_size: u64,
                         old_root: &[u8; 32],
                         new_root: &[u8; 32],
                         proof: &[[u8; 32]]| {
                verify_consistency(old_size, new_size, old_root, new_root, proof).is_err()
            };
            assert!(fails(old_size - 1, new_size, &old_root, &new_root, &proof));
            assert!(fails(old_size + 1, new_size, &old_root, &new_root, &proof));
            assert!(fails(old_size ^ 2, new_size, &old_root, &new_root, &proof));
            assert!(fails(old_size, new_size * 2, &old_root, &new_root, &proof));
            assert!(fails(old_size, new_size / 2, &old_root, &new_root, &proof));
            assert!(fails(
                old_size,
                new_size,
                &leaf_hash(b"WrongRoot"),
                &new_root,
                &proof
            ));
            assert!(fails(
                old_size,
                new_size,
                &old_root,
                &leaf_hash(b"WrongRoot"),
                &proof
            ));
            assert!(fails(old_size, new_size, &new_root, &old_root, &proof));
            assert!(matches!(
                verify_consistency(old_size, new_size, &old_root, &new_root, &[]),
                Err(VerifyError::ProofTooShort { .. })
            ));
            for extra in [old_root, new_root, proof[0]] {
                let mut extended = proof.clone();
                extended.push(extra);
                assert!(matches!(
                    verify_consistency(old_size, new_size, &old_root, &new_root, &extended),
                    Err(VerifyError::ProofTooLong { .. })
                ));
                let mut prepended = vec![extra];
                prepended.extend_from_slice(&proof);
                assert!(fails(old_size, new_size, &old_root, &new_root, &prepended));
            }
            assert!(matches!(
                verify_consistency(
                    old_size,
                    new_size,
                    &old_root,
                    &new_root,
                    &proof[..proof.len() - 1]
                ),
                Err(VerifyError::ProofTooShort { .. })
            ));
            for position in 0..proof.len() {
                for bit in 0..256 {
                    let mut corrupted = proof.clone();
                    corrupted[position] = flip_bit(&proof[position], bit);
                    assert!(fails(old_size, new_size, &old_root, &new_root, &corrupted));
                }
            }
            for bit in 0..256 {
                assert!(fails(
                    old_size,
                    new_size,
                    &flip_bit(&old_root, bit),
                    &new_root,
                    &proof
                ));
                assert!(fails(
                    old_size,
                    new_size,
                    &old_root,
                    &flip_bit(&new_root, bit),
                    &proof
                ));
            }
        }
    }

    #[test]
    fn inclusion_edge_cases() {
        let leaf = leaf_hash(b"data");
        assert_eq!(verify_inclusion(&leaf, 0, 1, &[], &leaf), Ok(()));
        assert!(matches!(
            verify_inclusion(&leaf, 0, 1, &[], &EMPTY_TREE_ROOT),
            Err(VerifyError::RootMismatch { .. })
        ));
        for (index, tree_size) in [(0, 0), (1, 0), (1, 1), (2, 1), (u64::MAX, u64::MAX)] {
            assert_eq!(
                verify_inclusion(&leaf, index, tree_size, &[], &leaf),
                Err(VerifyError::IndexOutOfRange { index, tree_size })
            );
        }
        // The largest tree there can be, 2^64 - 1 leaves: leaf 0 is 64 levels deep.
        let proof = vec![leaf; 64];
        assert!(matches!(
            verify_inclusion(&leaf, 0, u64::MAX, &proof, &leaf),
            Err(VerifyError::RootMismatch { .. })
        ));
        // Its last leaf ends a chain of right subtrees of 2^63 - 1, 2^62 - 1, ... leaves,
        // one level shallower than leaf 0, which sits under the complete left 2^63.
        assert_eq!(
            verify_inclusion(&leaf, u64::MAX - 1, u64::MAX, &[], &leaf),
            Err(VerifyError::ProofTooShort {
                expected_hashes: 63,
                actual_hashes: 0
            })
        );
    }

    #[test]
    fn consistency_edge_cases() {
        let some_root = leaf_hash(b"some root");
        let other_root = leaf_hash(b"other root");
        assert_eq!(
            verify_consistency(2, 1, &some_root, &other_root, &[]),
            Err(VerifyError::OldSizeGreaterThanNewSize {
                old_size: 2,
                new_size: 1
            })
        );
        assert_eq!(
            verify_consistency(1, 1, &some_root, &some_root, &[]),
            Ok(())
        );
        assert!(matches!(
            verify_consistency(1, 1, &some_root, &other_root, &[]),
            Err(VerifyError::RootsDifferAtSameSize { tree_size: 1, .. })
        ));
        assert!(matches!(
            verify_consistency(1, 1, &some_root, &some_root, &[some_root]),
            Err(VerifyError::ProofTooLong { .. })
        ));
        assert_eq!(
            verify_consistency(0, 0, &EMPTY_TREE_ROOT, &EMPTY_TREE_ROOT, &[]),
            Ok(())
        );
        assert!(matches!(
            verify_consistency(0, 0, &some_root, &some_root, &[]),
            Err(VerifyError::OldRootMismatch { .. })
        ));
        // The empty tree is a prefix of every tree, whatever its root.
        assert_eq!(
            verify_consistency(0, 5, &EMPTY_TREE_ROOT, &some_root, &[]),
            Ok(())
        );
        assert!(matches!(
            verify_consistency(0, 5, &some_root, &other_root, &[]),
            Err(VerifyError::OldRootMismatch { .. })
        ));
        assert!(matches!(
            verify_consistency(0, 5, &EMPTY_TREE_ROOT, &some_root, &[EMPTY_TREE_ROOT]),
            Err(VerifyError::ProofTooLong { .. })
        ));
        // RFC 9162 §2.1.4.2 step 1: an empty proof between different sizes fails.
        assert_eq!(
            verify_consistency(1, 2, &some_root, &other_root, &[]),
            Err(VerifyError::ProofTooShort {
                expected_hashes: 1,
                actual_hashes: 0
            })
        );
    }

    #[test]
    fn errors_name_what_failed() {
        let error = VerifyError::RootMismatch {
            computed: [0xab; 32],
            expected: EMPTY_TREE_ROOT,
        };
        assert_eq!(
            error.to_string(),
            format!(
                "root mismatch: the proof gives {}, expected {EMPTY_ROOT_HEX}",
                "ab".repeat(32)
            )
        );
        let error = VerifyError::IndexOutOfRange {
            index: 3,
            tree_size: 3,
        };
        assert_eq!(
            error.to_string(),
            "leaf index 3 is out of range for a tree of 3 leaves"
        );
    }

    #[test]
    fn root_builder_gives_the_published_roots() {
        let leaves: Vec<[u8; 32]> = LEAF_DATA.iter().map(|data| leaf_hash(data)).collect();
        assert_eq!(merkle_root(&[]), EMPTY_TREE_ROOT);
        let mut builder = RootBuilder::new();
        assert!(builder.is_empty());
        for (position, leaf) in leaves.iter().enumerate() {
            builder.push(*leaf);
            assert_eq!(builder.len(), position as u64 + 1);
            assert_eq!(
                builder.root(),
                root(position as u64 + 1),
                "size {}",
                position + 1
            );
            assert_eq!(merkle_root(&leaves[..=position]), root(position as u64 + 1));
        }
    }

    /// A proof binds a leaf to a root, not to a size (see the module documentation): the
    /// path of leaf 0 in the 3-leaf tree, `[leaf 1, leaf 2]`, also walks a 4-leaf tree's
    /// shape, so it verifies against the 3-leaf root labelled with size 4. Likewise the
    /// consistency proof from 2 to 4 leaves verifies the 4-leaf root labelled with size 3.
    /// Only signed checkpoints, which tie size and root together, rule this out.
    #[test]
    fn a_proof_does_not_bind_the_tree_size() {
        let leaves: Vec<[u8; 32]> = LEAF_DATA.iter().map(|data| leaf_hash(data)).collect();
        let proof = reference_inclusion_proof(&leaves[..3], 0);
        assert_eq!(verify_inclusion(&leaves[0], 0, 3, &proof, &root(3)), Ok(()));
        assert_eq!(verify_inclusion(&leaves[0], 0, 4, &proof, &root(3)), Ok(()));
        // With the genuine root of 4 leaves, the same claim fails.
        assert!(verify_inclusion(&leaves[0], 0, 4, &proof, &root(4)).is_err());

        let proof = reference_consistency_proof(&leaves[..4], 2);
        assert_eq!(verify_consistency(2, 4, &root(2), &root(4), &proof), Ok(()));
        assert_eq!(verify_consistency(2, 3, &root(2), &root(4), &proof), Ok(()));
        assert!(verify_consistency(2, 3, &root(2), &root(3), &proof).is_err());
    }

    // --- Reference model for the property tests: RFC 9162 §2.1 read as recursion. ---

    fn reference_node(left: [u8; 32], right: [u8; 32]) -> [u8; 32] {
        let mut bytes = Vec::with_capacity(65);
        bytes.push(0x01);
        bytes.extend_from_slice(&left);
        bytes.extend_from_slice(&right);
        Sha256::digest(&bytes).into()
    }

    /// The largest power of two below `count`, which is at least 2.
    fn reference_split(count: usize) -> usize {
        let mut split = 1;
        while split * 2 < count {
            split *= 2;
        }
        split
    }

    /// MTH(D[n]).
    fn reference_root(leaves: &[[u8; 32]]) -> [u8; 32] {
        if leaves.is_empty() {
            return Sha256::digest(b"").into();
        }
        if leaves.len() == 1 {
            return leaves[0];
        }
        let split = reference_split(leaves.len());
        reference_node(
            reference_root(&leaves[..split]),
            reference_root(&leaves[split..]),
        )
    }

    /// PATH(m, D[n]).
    fn reference_inclusion_proof(leaves: &[[u8; 32]], index: usize) -> Vec<[u8; 32]> {
        if leaves.len() <= 1 {
            return Vec::new();
        }
        let split = reference_split(leaves.len());
        if index < split {
            let mut proof = reference_inclusion_proof(&leaves[..split], index);
            proof.push(reference_root(&leaves[split..]));
            proof
        } else {
            let mut proof = reference_inclusion_proof(&leaves[split..], index - split);
            proof.push(reference_root(&leaves[..split]));
            proof
        }
    }

    /// PROOF(m, D[n]) = SUBPROOF(m, D[n], true), and empty for m = 0 or m = n.
    fn reference_consistency_proof(leaves: &[[u8; 32]], old_size: usize) -> Vec<[u8; 32]> {
        if old_size == 0 || old_size == leaves.len() {
            return Vec::new();
        }
        reference_subproof(old_size, leaves, true)
    }

    fn reference_subproof(
        old_size: usize,
        leaves: &[[u8; 32]],
        whole_old_tree: bool,
    ) -> Vec<[u8; 32]> {
        if old_size == leaves.len() {
            if whole_old_tree {
                return Vec::new();
            }
            return vec![reference_root(leaves)];
        }
        let split = reference_split(leaves.len());
        if old_size <= split {
            let mut proof = reference_subproof(old_size, &leaves[..split], whole_old_tree);
            proof.push(reference_root(&leaves[split..]));
            proof
        } else {
            let mut proof = reference_subproof(old_size - split, &leaves[split..], false);
            proof.push(reference_root(&leaves[..split]));
            proof
        }
    }

    /// Distinct leaves for a seed.
    fn random_leaves(count: usize, seed: u64) -> Vec<[u8; 32]> {
        let mut leaves = Vec::with_capacity(count);
        for index in 0..count as u64 {
            let mut data = seed.to_le_bytes().to_vec();
            data.extend_from_slice(&index.to_le_bytes());
            leaves.push(leaf_hash(&data));
        }
        leaves
    }

    /// Leaves for every property test are drawn up to this many; trees are prefixes.
    const PROPERTY_LEAVES_MAX: usize = 260;

    proptest! {
        // Each case costs well under a millisecond, so a thousand per property is cheap.
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// (a) every inclusion proof verifies; (b) any single flipped bit in any proof hash,
        /// the leaf or the root, and any other index or size (with the genuine root of
        /// that size, as a signed checkpoint would give), makes it fail.
        #[test]
        fn inclusion_proofs_verify_and_corruptions_fail(
            seed in any::<u64>(),
            tree_size in 1usize..PROPERTY_LEAVES_MAX,
            index_choice in any::<prop::sample::Index>(),
            bit in 0usize..256,
            other_index_choice in any::<prop::sample::Index>(),
            other_size in 1usize..PROPERTY_LEAVES_MAX,
        ) {
            let leaves = random_leaves(PROPERTY_LEAVES_MAX, seed);
            let index = index_choice.index(tree_size);
            let tree = &leaves[..tree_size];
            let good_root = reference_root(tree);
            let proof = reference_inclusion_proof(tree, index);
            let leaf = leaves[index];
            let index_u64 = index as u64;
            let size_u64 = tree_size as u64;
            prop_assert_eq!(verify_inclusion(&leaf, index_u64, size_u64, &proof, &good_root), Ok(()));

            for position in 0..proof.len() {
                let mut corrupted = proof.clone();
                corrupted[position] = flip_bit(&proof[position], bit);
                prop_assert!(verify_inclusion(&leaf, index_u64, size_u64, &corrupted, &good_root).is_err());
            }
            prop_assert!(verify_inclusion(&flip_bit(&leaf, bit), index_u64, size_u64, &proof, &good_root).is_err());
            prop_assert!(verify_inclusion(&leaf, index_u64, size_u64, &proof, &flip_bit(&good_root, bit)).is_err());

            let other_index = other_index_choice.index(tree_size);
            if other_index != index {
                prop_assert!(verify_inclusion(&leaf, other_index as u64, size_u64, &proof, &good_root).is_err());
            }
            if other_size != tree_size {
                let other_root = reference_root(&leaves[..other_size]);
                prop_assert!(verify_inclusion(&leaf, index_u64, other_size as u64, &proof, &other_root).is_err());
            }
        }

        /// (a) every consistency proof verifies; (b) any single flipped bit in any proof
        /// hash or either root, and any other pair of sizes (with their genuine roots),
        /// makes it fail.
        #[test]
        fn consistency_proofs_verify_and_corruptions_fail(
            seed in any::<u64>(),
            new_size in 1usize..PROPERTY_LEAVES_MAX,
            old_choice in any::<prop::sample::Index>(),
            bit in 0usize..256,
            other_old_choice in any::<prop::sample::Index>(),
            other_new_size in 1usize..PROPERTY_LEAVES_MAX,
        ) {
            let leaves = random_leaves(PROPERTY_LEAVES_MAX, seed);
            // 0..=new_size.
            let old_size = old_choice.index(new_size + 1);
            let old_root = reference_root(&leaves[..old_size]);
            let new_root = reference_root(&leaves[..new_size]);
            let proof = reference_consistency_proof(&leaves[..new_size], old_size);
            let old_u64 = old_size as u64;
            let new_u64 = new_size as u64;
            prop_assert_eq!(verify_consistency(old_u64, new_u64, &old_root, &new_root, &proof), Ok(()));

            for position in 0..proof.len() {
                let mut corrupted = proof.clone();
                corrupted[position] = flip_bit(&proof[position], bit);
                prop_assert!(verify_consistency(old_u64, new_u64, &old_root, &new_root, &corrupted).is_err());
            }
            prop_assert!(verify_consistency(old_u64, new_u64, &flip_bit(&old_root, bit), &new_root, &proof).is_err());
            // With an empty old tree, or equal sizes, the new root is not constrained by
            // any proof hash, only by being equal to the old root when sizes are equal.
            if old_size > 0 {
                prop_assert!(verify_consistency(old_u64, new_u64, &old_root, &flip_bit(&new_root, bit), &proof).is_err());
            }

            let other_old_size = other_old_choice.index(other_new_size + 1);
            let other_pair = (other_old_size, other_new_size);
            // Pairs whose proof is empty, as this one's may be, verify with any empty proof.
            let other_proof_is_empty = other_old_size == 0 || other_old_size == other_new_size;
            if other_pair != (old_size, new_size) && !(other_proof_is_empty && proof.is_empty()) {
                let other_old_root = reference_root(&leaves[..other_old_size]);
                let other_new_root = reference_root(&leaves[..other_new_size]);
                prop_assert!(verify_consistency(
                    other_old_size as u64,
                    other_new_size as u64,
                    &other_old_root,
                    &other_new_root,
                    &proof,
                ).is_err());
            }
        }

        /// The incremental root is the recursive definition's for every size.
        #[test]
        fn root_builder_matches_the_reference(seed in any::<u64>(), tree_size in 0usize..PROPERTY_LEAVES_MAX) {
            let leaves = random_leaves(tree_size, seed);
            prop_assert_eq!(merkle_root(&leaves), reference_root(&leaves));
        }

        /// Exact length errors: the verifier's expected length is the reference proof's.
        #[test]
        fn length_errors_report_the_expected_length(
            tree_size in 1usize..PROPERTY_LEAVES_MAX,
            index_choice in any::<prop::sample::Index>(),
            extra_hashes in 1usize..4,
        ) {
            let leaves = random_leaves(tree_size, 1);
            let index = index_choice.index(tree_size);
            let proof = reference_inclusion_proof(&leaves, index);
            let good_root = reference_root(&leaves);
            let mut longer = proof.clone();
            longer.extend(std::iter::repeat_n(good_root, extra_hashes));
            prop_assert_eq!(
                verify_inclusion(&leaves[index], index as u64, tree_size as u64, &longer, &good_root),
                Err(VerifyError::ProofTooLong { expected_hashes: proof.len(), actual_hashes: proof.len() + extra_hashes })
            );
            if !proof.is_empty() {
                prop_assert_eq!(
                    verify_inclusion(&leaves[index], index as u64, tree_size as u64, &proof[1..], &good_root),
                    Err(VerifyError::ProofTooShort { expected_hashes: proof.len(), actual_hashes: proof.len() - 1 })
                );
            }
        }
    }
    /// Every prefix root of `leaves`: `roots[n]` is the root of the first n.
    fn prefix_roots(leaves: &[[u8; 32]]) -> Vec<[u8; 32]> {
        let mut builder = RootBuilder::new();
        let mut roots = vec![builder.root()];
        for leaf in leaves {
            builder.push(*leaf);
            roots.push(builder.root());
        }
        roots
    }

    proptest! {
        // Exhaustive over bits, indices and sizes per case, so fewer cases: each costs a
        // few hundred thousand hashes.
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Acceptance: an inclusion proof from the reference model verifies, and fails
        /// after ANY single-bit change to ANY of its hashes, at every other index of the
        /// same tree, and at every other tree size (with that size's genuine root).
        #[test]
        fn inclusion_fails_for_every_single_bit_flip_index_and_size(
            seed in any::<u64>(),
            tree_size in 1usize..PROPERTY_LEAVES_MAX,
            index_choice in any::<prop::sample::Index>(),
        ) {
            let leaves = random_leaves(PROPERTY_LEAVES_MAX, seed);
            let roots = prefix_roots(&leaves);
            let index = index_choice.index(tree_size);
            let tree = &leaves[..tree_size];
            let proof = reference_inclusion_proof(tree, index);
            let leaf = leaves[index];
            let size_u64 = tree_size as u64;
            prop_assert_eq!(verify_inclusion(&leaf, index as u64, size_u64, &proof, &roots[tree_size]), Ok(()));
            for position in 0..proof.len() {
                for bit in 0..256 {
                    let mut corrupted = proof.clone();
                    corrupted[position] = flip_bit(&proof[position], bit);
                    let outcome = verify_inclusion(&leaf, index as u64, size_u64, &corrupted, &roots[tree_size]);
                    prop_assert!(
                        matches!(outcome, Err(VerifyError::RootMismatch { .. })),
                        "hash {} bit {}: {:?}", position, bit, outcome
                    );
                }
            }
            for other_index in 0..tree_size {
                if other_index != index {
                    prop_assert!(verify_inclusion(&leaf, other_index as u64, size_u64, &proof, &roots[tree_size]).is_err());
                }
            }
            for (other_size, other_root) in roots.iter().enumerate().skip(1) {
                if other_size != tree_size {
                    prop_assert!(verify_inclusion(&leaf, index as u64, other_size as u64, &proof, other_root).is_err());
                }
            }
        }

        /// Acceptance: a consistency proof from the reference model verifies, and fails
        /// after ANY single-bit change to ANY of its hashes, for every other old size with
        /// the same new size, and every other new size with the same old size (with the
        /// genuine roots of those sizes).
        #[test]
        fn consistency_fails_for_every_single_bit_flip_and_size(
            seed in any::<u64>(),
            new_size in 1usize..PROPERTY_LEAVES_MAX,
            old_choice in any::<prop::sample::Index>(),
        ) {
            let leaves = random_leaves(PROPERTY_LEAVES_MAX, seed);
            let roots = prefix_roots(&leaves);
            let old_size = old_choice.index(new_size + 1);
            let proof = reference_consistency_proof(&leaves[..new_size], old_size);
            let (old_u64, new_u64) = (old_size as u64, new_size as u64);
            prop_assert_eq!(verify_consistency(old_u64, new_u64, &roots[old_size], &roots[new_size], &proof), Ok(()));
            for position in 0..proof.len() {
                for bit in 0..256 {
                    let mut corrupted = proof.clone();
                    corrupted[position] = flip_bit(&proof[position], bit);
                    prop_assert!(
                        verify_consistency(old_u64, new_u64, &roots[old_size], &roots[new_size], &corrupted).is_err(),
                        "hash {} bit {}", position, bit
                    );
                }
            }
            let proof_is_empty = proof.is_empty();
            for other_old in 0..=new_size {
                let other_is_empty = other_old == 0 || other_old == new_size;
                if other_old != old_size && !(other_is_empty && proof_is_empty) {
                    prop_assert!(
                        verify_consistency(other_old as u64, new_u64, &roots[other_old], &roots[new_size], &proof).is_err(),
                        "old size {} instead of {}", other_old, old_size
                    );
                }
            }
            for other_new in old_size.max(1)..PROPERTY_LEAVES_MAX {
                let other_is_empty = old_size == 0 || old_size == other_new;
                if other_new != new_size && !(other_is_empty && proof_is_empty) {
                    prop_assert!(
                        verify_consistency(old_u64, other_new as u64, &roots[old_size], &roots[other_new], &proof).is_err(),
                        "new size {} instead of {}", other_new, new_size
                    );
                }
            }
        }
    }
}
