//! RFC 9162 (Certificate Transparency 2.0) Merkle trees: the tree hash over
//! a log's leaves, inclusion and consistency proofs, and their
//! verification. Pure computation, no I/O. Two logs use it: the legal
//! desk's audit log (its checkpoints) and the key directory's log of epoch
//! roots, which lets a device check in a few hundred bytes that a newer
//! epoch continues the history it saw, where akd's own append-only proof
//! would cost most of a megabyte per busy epoch.
//!
//! Hashes are domain-separated (0x00 for leaves, 0x01 for nodes), so no
//! leaf can pass for a node.

use sha2::{Digest as _, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The hash of a leaf holding `data`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha256::new()
        .chain_update([0u8])
        .chain_update(data)
        .finalize()
        .into()
}

/// The hash of an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    Sha256::new()
        .chain_update([1u8])
        .chain_update(left)
        .chain_update(right)
        .finalize()
        .into()
}

/// The largest power of two smaller than `n` (n > 1).
fn split(n: u64) -> u64 {
    1 << (u64::BITS - 1 - (n - 1).leading_zeros())
}

/// The tree hash over `leaves` (RFC 9162 §2.1.1), computed once.
pub fn tree_hash(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => Sha256::digest([]).into(),
        1 => leaves[0],
        n => {
            let k = split(n as u64) as usize;
            node_hash(&tree_hash(&leaves[..k]), &tree_hash(&leaves[k..]))
        }
    }
}

/// A log's leaf hashes, with every complete subtree's hash kept, so that
/// roots and proofs over any prefix cost O(log² n) hashes, not O(n).
#[derive(Debug, Clone, Default)]
pub struct MerkleLog {
    /// `levels[k][i]`: the hash of the complete subtree of 2^k leaves
    /// starting at leaf i·2^k.
    levels: Vec<Vec<Hash>>,
}

impl MerkleLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many leaves it holds.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The leaf hash at `index`.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()
            .and_then(|l| l.get(usize::try_from(index).ok()?))
            .copied()
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut hash = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(hash);
            let n = self.levels[level].len();
            // A new right child completes its parent.
            if !n.is_multiple_of(2) {
                break;
            }
            hash = node_hash(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            level += 1;
        }
    }

    /// The hash of leaves `start..end` (end ≤ len, start < end).
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(start / n) as usize];
        }
        let k = split(n);
        node_hash(
            &self.subtree(start, start + k),
            &self.subtree(start + k, end),
        )
    }

    /// The tree hash over the first `size` leaves (size ≤ len).
    pub fn root(&self, size: u64) -> Option<Hash> {
        match size {
            0 => Some(Sha256::digest([]).into()),
            s if s <= self.len() => Some(self.subtree(0, s)),
            _ => None,
        }
    }

    /// The inclusion proof of leaf `index` in the tree of the first `size`
    /// leaves (RFC 9162 §2.1.3.1).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Option<Vec<Hash>> {
        if index >= size || size > self.len() {
            return None;
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Some(proof)
    }

    fn path(&self, index: u64, start: u64, end: u64, proof: &mut Vec<Hash>) {
        let n = end - start;
        if n == 1 {
            return;
        }
        let k = split(n);
        if index - start < k {
            self.path(index, start, start + k, proof);
            proof.push(self.subtree(start + k, end));
        } else {
            self.path(index, start + k, end, proof);
            proof.push(self.subtree(start, start + k));
        }
    }

    /// The consistency proof from the tree of the first `old` leaves to the
    /// tree of the first `new` (RFC 9162 §2.1.4.1). Empty when old is 0 or
    /// old equals new.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Option<Vec<Hash>> {
        if old > new || new > self.len() {
            return None;
        }
        let mut proof = Vec::new();
        if old > 0 && old < new {
            self.subproof(old, 0, new, true, &mut proof);
        }
        Some(proof)
    }

    fn subproof(&self, m: u64, start: u64, end: u64, complete: bool, proof: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !complete {
                proof.push(self.subtree(start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, complete, proof);
            proof.push(self.subtree(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, proof);
            proof.push(self.subtree(start, start + k));
        }
    }
}

/// Checks that `leaf` is leaf `index` of the tree of `size` leaves whose
/// hash is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Checks that the tree of `old` leaves hashing to `old_root` is a prefix
/// of the tree of `new` leaves hashing to `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if old == 0 {
        // Every tree extends the empty one.
        return proof.is_empty();
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *old_root && sr == *new_root && s == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(n: u64) -> (MerkleLog, Vec<Hash>) {
        let leaves: Vec<Hash> = (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect();
        let mut log = MerkleLog::new();
        for l in &leaves {
            log.push(*l);
        }
        (log, leaves)
    }

    #[test]
    fn roots_match_the_rfc_definition() {
        let (log, leaves) = log(70);
        for size in 0..=70u64 {
            assert_eq!(log.root(size).unwrap(), tree_hash(&leaves[..size as usize]));
        }
        assert!(log.root(71).is_none());
    }

    #[test]
    fn every_inclusion_and_consistency_proof_verifies_and_a_changed_one_does_not() {
        let (log, leaves) = log(40);
        for size in 1..=40u64 {
            let root = log.root(size).unwrap();
            for index in 0..size {
                let proof = log.inclusion_proof(index, size).unwrap();
                assert!(verify_inclusion(
                    index,
                    size,
                    &leaves[index as usize],
                    &proof,
                    &root
                ));
                let other = leaf_hash(b"not in the log");
                assert!(!verify_inclusion(index, size, &other, &proof, &root));
                if size > 1 {
                    assert!(!verify_inclusion(
                        (index + 1) % size,
                        size,
                        &leaves[index as usize],
                        &proof,
                        &root
                    ));
                }
            }
            for old in 0..=size {
                let old_root = log.root(old).unwrap();
                let proof = log.consistency_proof(old, size).unwrap();
                assert!(
                    verify_consistency(old, size, &old_root, &root, &proof),
                    "{old} -> {size}"
                );
                if old > 0 && old < size {
                    let wrong = leaf_hash(b"another history");
                    assert!(!verify_consistency(old, size, &wrong, &root, &proof));
                    assert!(!verify_consistency(old, size, &old_root, &wrong, &proof));
                    let mut cut = proof.clone();
                    cut.pop();
                    assert!(!verify_consistency(old, size, &old_root, &root, &cut));
                }
            }
        }
    }

    #[test]
    fn a_rewritten_leaf_breaks_consistency_with_the_old_tree() {
        let (log, mut leaves) = log(9);
        let old_root = log.root(5).unwrap();
        leaves[3] = leaf_hash(b"rewritten");
        let mut forged = MerkleLog::new();
        for l in &leaves {
            forged.push(*l);
        }
        let proof = forged.consistency_proof(5, 9).unwrap();
        assert!(!verify_consistency(
            5,
            9,
            &old_root,
            &forged.root(9).unwrap(),
            &proof
        ));
    }
}
