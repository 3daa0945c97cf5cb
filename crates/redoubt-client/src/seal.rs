//! Encryption at rest. A key derived from the passphrase with Argon2id seals
//! every sensitive value in the profile database with XChaCha20-Poly1305.
//! Each value's additional data names its place (table and row), so a value
//! copied to another row fails to open instead of being misread.

use argon2::{Algorithm, Argon2, Params, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{ClientError, Result};

/// Argon2id cost parameters, stored with the profile so they can be raised
/// for new profiles without locking out old ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for KdfParams {
    /// OWASP's recommended minimum for Argon2id (19 MiB, 2 passes).
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            parallelism: 1,
        }
    }
}

/// The profile key.
pub struct SealKey {
    cipher: XChaCha20Poly1305,
}

impl SealKey {
    /// Derives the key from a passphrase.
    pub fn derive(passphrase: &str, salt: &[u8], params: KdfParams) -> Result<Self> {
        let params = Params::new(
            params.memory_kib,
            params.iterations,
            params.parallelism,
            Some(32),
        )
        .map_err(|_| ClientError::Corrupt("key-derivation parameters"))?;
        let mut key = Zeroizing::new([0u8; 32]);
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(passphrase.as_bytes(), salt, key.as_mut())
            .map_err(|_| ClientError::Corrupt("key derivation"))?;
        Ok(Self {
            cipher: XChaCha20Poly1305::new(key.as_ref().into()),
        })
    }

    /// A key from 32 secret bytes (a key exchange's output), not a
    /// passphrase.
    pub fn from_secret(secret: &[u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(secret.into()),
        }
    }

    /// Encrypts `plain`, binding it to `place`.
    pub fn seal(&self, place: &[u8], plain: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 24];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        // Encryption with a fresh random nonce cannot fail for in-memory data.
        let sealed = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: place,
                },
            )
            .unwrap_or_default();
        out.extend(sealed);
        out
    }

    /// Decrypts a value sealed for `place`.
    pub fn open(&self, place: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < 24 {
            return Err(ClientError::Corrupt("sealed value too short"));
        }
        let (nonce, body) = sealed.split_at(24);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: body,
                    aad: place,
                },
            )
            .map_err(|_| ClientError::Corrupt("a sealed value does not decrypt"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FAST: KdfParams = KdfParams {
        memory_kib: 256,
        iterations: 1,
        parallelism: 1,
    };

    #[test]
    fn values_open_only_with_the_key_and_place_they_were_sealed_for() {
        let key = SealKey::derive("correct horse", b"0123456789abcdef", FAST).unwrap();
        let sealed = key.seal(b"messages/1", b"hello");
        assert_eq!(key.open(b"messages/1", &sealed).unwrap(), b"hello");
        assert!(key.open(b"messages/2", &sealed).is_err());
        let other = SealKey::derive("wrong", b"0123456789abcdef", FAST).unwrap();
        assert!(other.open(b"messages/1", &sealed).is_err());
        assert!(!sealed.windows(5).any(|w| w == b"hello"));
    }
}
