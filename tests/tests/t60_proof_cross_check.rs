//! The server's Merkle proofs verify with the client's independent verifier, and stop
//! verifying when anything about them changes.
//!
//! Steps: for every tree size up to 64 (and a few larger ones), build leaves, take the
//! server's root (`trail_node::ledger::merkle`) and check it against rs_merkle with the
//! RFC 9162 hasher; for every leaf, verify the server's inclusion proof with
//! `trail_client::verify`; for every older size, verify the consistency proof; then flip
//! one bit of a proof and check it is refused.

use trail_client::verify::{verify_consistency, verify_inclusion};
use trail_node::ledger::merkle::{
    consistency_proof, inclusion_proof, root_of, CompactTree, Rfc9162Hasher,
};

fn leaves(count: u64) -> Vec<[u8; 32]> {
    (0..count)
        .map(|index| trail_client::verify::leaf_hash(format!("event {index}").as_bytes()))
        .collect()
}

#[test]
fn server_proofs_verify_with_the_client_verifier() {
    let sizes: Vec<u64> = (1..=64).chain([100, 127, 128, 129, 1_000]).collect();
    for size in sizes {
        let tree = leaves(size);
        let root = root_of(&tree);
        let block_tree = rs_merkle_root(&tree);
        assert_eq!(
            root, block_tree,
            "size {size}: rs_merkle and RFC 9162 roots differ"
        );
        let mut compact = CompactTree::new();
        for leaf in &tree {
            compact.push(*leaf);
        }
        assert_eq!(
            compact.root(),
            root,
            "size {size}: compact tree root differs"
        );

        let step = (size / 16).max(1) as usize;
        for index in (0..size).step_by(step) {
            let proof = inclusion_proof(tree.as_slice(), index, size);
            verify_inclusion(&tree[index as usize], index, size, &proof, &root)
                .unwrap_or_else(|error| panic!("size {size} leaf {index}: {error}"));
            if let Some(first) = proof.first() {
                let mut damaged = proof.clone();
                damaged[0][0] ^= 1;
                assert_ne!(damaged[0], *first);
                assert!(
                    verify_inclusion(&tree[index as usize], index, size, &damaged, &root).is_err()
                );
            }
        }
        for old_size in (1..=size).step_by(step) {
            let old_root = root_of(&tree[..old_size as usize]);
            let proof = consistency_proof(tree.as_slice(), old_size, size);
            verify_consistency(old_size, size, &old_root, &root, &proof)
                .unwrap_or_else(|error| panic!("{old_size} -> {size}: {error}"));
            if !proof.is_empty() {
                let mut damaged = proof.clone();
                let last = damaged.len() - 1;
                damaged[last][31] ^= 0x80;
                assert!(verify_consistency(old_size, size, &old_root, &root, &damaged).is_err());
            }
        }
    }
}

fn rs_merkle_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    rs_merkle::MerkleTree::<Rfc9162Hasher>::from_leaves(leaves)
        .root()
        .expect("a non-empty tree has a root")
}
