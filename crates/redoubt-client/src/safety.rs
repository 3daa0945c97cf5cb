//! Safety numbers: a fingerprint of an account's device keys that two people
//! can compare out of band. Any change to the keys changes the number.

use sha2::{Digest, Sha512};

/// Iterations of the hash, which makes finding a key set with a chosen
/// fingerprint expensive (the same defence Signal's safety numbers use).
const ITERATIONS: usize = 5200;

/// One side's 30-digit fingerprint over its phone number and device keys.
pub fn fingerprint(phone: &str, keys: &[Vec<u8>]) -> String {
    let mut keys = keys.to_vec();
    keys.sort();
    let mut hash = Sha512::new()
        .chain_update(b"redoubt/safety-number/v1\0")
        .chain_update(phone.as_bytes())
        .finalize()
        .to_vec();
    for _ in 0..ITERATIONS {
        let mut h = Sha512::new();
        h.update(&hash);
        for key in &keys {
            h.update((key.len() as u32).to_be_bytes());
            h.update(key);
        }
        hash = h.finalize().to_vec();
    }
    hash[..30]
        .chunks(5)
        .map(|c| {
            let n = c.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
            format!("{:05}", n % 100_000)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The number two people compare: both fingerprints, in a fixed order so
/// that both see the same 60 digits.
pub fn safety_number(mine: &str, theirs: &str) -> String {
    if mine <= theirs {
        format!("{mine} {theirs}")
    } else {
        format!("{theirs} {mine}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_change_with_keys() {
        let a = fingerprint("+33612345678", &[vec![1; 32], vec![2; 32]]);
        assert_eq!(a, fingerprint("+33612345678", &[vec![2; 32], vec![1; 32]]));
        assert_ne!(a, fingerprint("+33612345678", &[vec![1; 32]]));
        assert_eq!(a.split(' ').count(), 6);
        assert_eq!(safety_number(&a, "0"), safety_number("0", &a));
    }
}
