//! Secrets sealed at rest: the secret fields of tenant configs (API keys) are encrypted with
//! ChaCha20-Poly1305 under a cluster key before they are proposed, so the Raft log, snapshots,
//! RocksDB and backups hold only ciphertext.
//!
//! **Design.** Every member reads a keyring from its `secrets_key_file`: one key per line,
//! `<id> <64 hex digits>` (32 bytes), `#` comments; the **last** line is the key that seals, the
//! earlier ones only open what they sealed. A [`Sealed`] secret names its key id, carries a
//! 96-bit nonce and the ciphertext with its 16-byte tag; the associated data binds it to its
//! tenant and field, so a sealed value moved to another tenant or field does not open.
//!
//! The nonce is synthetic (as in SIV modes): a keyed BLAKE3 hash, under a key derived from the
//! sealing key, of the tenant, field and plain secret. Sealing is therefore deterministic: a
//! client's retry of a config change seals to the same bytes, so the request keeps its
//! fingerprint and exactly-once holds (a random nonce would make every retry a different
//! request). Two nonces are equal only for the same tenant, field and secret, whose ciphertexts
//! are then equal too: what leaks is that a secret was set to the value it had.
//! Rotation: add a new last line on every member, restart each, and `raftgraph secrets rotate` re-seals
//! every secret sealed under another key, through the log.
//!
//! **Invariants**
//! - Nothing here logs or displays a key or a plain secret: `Keyring`'s `Debug` lists key ids,
//!   `Sealed`'s shows the key id and length.
//! - Opening fails (never panics) on a wrong key, a changed byte, or another tenant or field.
//!
//! **Caveats**
//! - Keys sit in memory unencrypted while the server runs (`zeroize` clears them when dropped).
//! - Equal secrets of one tenant field seal to equal bytes (see above).

use std::fmt;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Bytes of a key.
pub const KEY_BYTES: usize = 32;
/// Bytes of a nonce.
pub const NONCE_BYTES: usize = 12;
/// Bytes the seal adds to a secret (the authentication tag).
pub const TAG_BYTES: usize = 16;
/// The longest key id, bytes (`[A-Za-z0-9_-]`).
pub const KEY_ID_BYTES_MAX: usize = 32;
/// The most keys a keyring holds.
pub const KEYS_MAX: usize = 64;

/// A secret sealed under key `key_id`. **Format:** part of tenant configs in the log, snapshots
/// and RocksDB (bincode, positional).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    pub key_id: String,
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; NONCE_BYTES],
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Sealed(key {:?}, {} bytes)",
            self.key_id,
            self.ciphertext.len()
        )
    }
}

/// Why a keyring could not be read. Never shows key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("line {line}: {reason}")]
    Line { line: usize, reason: String },
    #[error("no key: the file must hold at least one line `<id> <64 hex digits>`")]
    Empty,
    #[error("{count} keys, at most {KEYS_MAX}")]
    TooMany { count: usize },
}

/// Why a sealed secret could not be opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OpenError {
    #[error("sealed under key {0:?}, which this member's keyring does not hold")]
    UnknownKey(String),
    #[error(
        "sealed under key {0:?}, but it does not open: changed, or moved from another tenant or field"
    )]
    Corrupt(String),
}

/// The keys a member seals and opens with; the last one seals.
pub struct Keyring {
    keys: Vec<(String, Zeroizing<[u8; KEY_BYTES]>)>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|(id, _)| id.as_str()).collect();
        write!(f, "Keyring({ids:?})")
    }
}

/// Whether `id` is a valid key id.
pub fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= KEY_ID_BYTES_MAX
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn hex_key(s: &str) -> Option<[u8; KEY_BYTES]> {
    if s.len() != 2 * KEY_BYTES || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut k = [0u8; KEY_BYTES];
    for (i, b) in k.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(k)
}

/// The associated data of a secret: the tenant and the field it belongs to.
fn aad(tenant: &str, field: &str) -> Vec<u8> {
    format!("raftgraph sealed secret v1\0{tenant}\0{field}").into_bytes()
}

impl Keyring {
    /// Reads a keyring file's text (see the module docs).
    pub fn parse(text: &str) -> Result<Keyring, KeyringError> {
        let mut keys: Vec<(String, Zeroizing<[u8; KEY_BYTES]>)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| KeyringError::Line {
                line: i + 1,
                reason: reason.to_string(),
            };
            let mut parts = line.split_whitespace();
            let (Some(id), Some(hex), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(bad("expected `<id> <64 hex digits>`"));
            };
            if !valid_key_id(id) {
                return Err(bad(
                    "the key id must be 1 to 32 characters of A-Z, a-z, 0-9, - and _",
                ));
            }
            if keys.iter().any(|(k, _)| k == id) {
                return Err(bad(&format!("key id {id:?} appears twice")));
            }
            let key =
                hex_key(hex).ok_or_else(|| bad("the key must be 64 hex digits (32 bytes)"))?;
            keys.push((id.to_string(), Zeroizing::new(key)));
            if keys.len() > KEYS_MAX {
                return Err(KeyringError::TooMany { count: keys.len() });
            }
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Keyring { keys })
    }

    /// A new keyring line with key id `id` and a key from `random`.
    pub fn new_line(id: &str, random: &dyn Fn(&mut [u8])) -> Result<String, KeyringError> {
        if !valid_key_id(id) {
            return Err(KeyringError::Line {
                line: 1,
                reason: "the key id must be 1 to 32 characters of A-Z, a-z, 0-9, - and _".into(),
            });
        }
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        random(&mut key[..]);
        let hex: Zeroizing<String> =
            Zeroizing::new(key.iter().map(|b| format!("{b:02x}")).collect());
        Ok(format!("{id} {}\n", hex.as_str()))
    }

    /// The id of the key that seals.
    pub fn current(&self) -> &str {
        &self.keys.last().expect("a keyring is never empty").0
    }

    fn cipher(&self, id: &str) -> Option<ChaCha20Poly1305> {
        let (_, key) = self.keys.iter().find(|(k, _)| k == id)?;
        Some(ChaCha20Poly1305::new(Key::from_slice(&key[..])))
    }

    /// `plain`, the secret of `field` in `tenant`, sealed under the current key with its
    /// synthetic nonce (see the module docs).
    pub fn seal(&self, plain: &str, tenant: &str, field: &str) -> Sealed {
        let (key_id, key) = self.keys.last().expect("a keyring is never empty");
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&key[..]));
        let aad = aad(tenant, field);
        let nonce_key = Zeroizing::new(blake3::derive_key(
            "raftgraph 2026 sealed secret synthetic nonce",
            &key[..],
        ));
        let mut hasher = blake3::Hasher::new_keyed(&nonce_key);
        hasher.update(&(aad.len() as u64).to_le_bytes());
        hasher.update(&aad);
        hasher.update(plain.as_bytes());
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&hasher.finalize().as_bytes()[..NONCE_BYTES]);
        let key_id = key_id.clone();
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("ChaCha20-Poly1305 seals any message shorter than 256 GiB");
        Sealed {
            key_id,
            nonce,
            ciphertext,
        }
    }

    /// The plain secret of `field` in `tenant`.
    pub fn open(
        &self,
        sealed: &Sealed,
        tenant: &str,
        field: &str,
    ) -> Result<Zeroizing<String>, OpenError> {
        let cipher = self
            .cipher(&sealed.key_id)
            .ok_or_else(|| OpenError::UnknownKey(sealed.key_id.clone()))?;
        let aad = aad(tenant, field);
        let corrupt = || OpenError::Corrupt(sealed.key_id.clone());
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(&sealed.nonce),
                    Payload {
                        msg: &sealed.ciphertext,
                        aad: &aad,
                    },
                )
                .map_err(|_| corrupt())?,
        );
        std::str::from_utf8(&plain)
            .map(|s| Zeroizing::new(s.to_string()))
            .map_err(|_| corrupt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fills with `n`, a different byte per key made.
    fn filler(n: u8) -> impl Fn(&mut [u8]) {
        move |buf: &mut [u8]| buf.fill(n)
    }

    fn ring(lines: &[&str]) -> Keyring {
        let text: String = lines
            .iter()
            .enumerate()
            .map(|(i, id)| Keyring::new_line(id, &filler(i as u8 + 1)).unwrap())
            .collect();
        Keyring::parse(&text).unwrap()
    }

    #[test]
    fn a_secret_opens_only_with_its_key_tenant_and_field() {
        let k = ring(&["k1"]);
        let s = k.seal("sk-live-123", "t", "llm.api_key");
        assert_eq!(
            s,
            k.seal("sk-live-123", "t", "llm.api_key"),
            "deterministic"
        );
        assert_ne!(s.nonce, k.seal("sk-live-123", "u", "llm.api_key").nonce);
        assert_ne!(s.nonce, k.seal("sk-live-124", "t", "llm.api_key").nonce);
        assert_eq!(s.key_id, "k1");
        assert_eq!(s.ciphertext.len(), "sk-live-123".len() + TAG_BYTES);
        assert!(!s.ciphertext.windows(4).any(|w| w == b"live"));
        assert_eq!(
            k.open(&s, "t", "llm.api_key").unwrap().as_str(),
            "sk-live-123"
        );
        assert!(matches!(
            k.open(&s, "u", "llm.api_key"),
            Err(OpenError::Corrupt(_))
        ));
        assert!(matches!(
            k.open(&s, "t", "tools[0].api_key"),
            Err(OpenError::Corrupt(_))
        ));
        let mut changed = s.clone();
        changed.ciphertext[0] ^= 1;
        assert!(matches!(
            k.open(&changed, "t", "llm.api_key"),
            Err(OpenError::Corrupt(_))
        ));
        let other = ring(&["k2"]);
        assert_eq!(
            other.open(&s, "t", "llm.api_key"),
            Err(OpenError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn the_last_key_seals_and_the_earlier_ones_still_open() {
        let old = ring(&["k1"]);
        let s = old.seal("x", "t", "f");
        let both = Keyring::parse(&format!(
            "# rotated\n{}{}",
            Keyring::new_line("k1", &filler(1)).unwrap(),
            Keyring::new_line("k2", &filler(2)).unwrap()
        ))
        .unwrap();
        assert_eq!(both.current(), "k2");
        assert_eq!(both.open(&s, "t", "f").unwrap().as_str(), "x");
        assert_eq!(both.seal("x", "t", "f").key_id, "k2");
    }

    #[test]
    fn bad_keyrings_are_refused_by_line_without_echoing_keys() {
        let hex = "ab".repeat(32);
        for (text, want) in [
            (String::new(), "no key"),
            (
                format!("k1 {hex}\nk1 {hex}\n"),
                "line 2: key id \"k1\" appears twice",
            ),
            (
                "k1 abc\n".to_string(),
                "line 1: the key must be 64 hex digits",
            ),
            (format!("bad/id {hex}\n"), "line 1: the key id must be"),
            (format!("k1 {hex} extra\n"), "line 1: expected"),
            (
                format!("k1 +{}\n", &hex[1..]),
                "line 1: the key must be 64 hex digits",
            ),
        ] {
            let e = Keyring::parse(&text).unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
            assert!(!e.contains(&hex), "{e}");
        }
        let k = Keyring::parse(&format!("k1 {hex}\n")).unwrap();
        assert_eq!(format!("{k:?}"), "Keyring([\"k1\"])");
    }
}
