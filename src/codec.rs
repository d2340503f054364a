//! The one codec for every value raftgraph writes into the Raft log or stores on disk.
//!
//! serde + bincode 2 (`=2.0.1`, standard configuration) behind a leading format-version byte. All
//! encoding goes through here so that a later switch of serializer is a change to this file alone
//! (the bincode project is unmaintained upstream).
//!
//! **Invariants**
//! - Every encoded value starts with [`FORMAT_VERSION`]; decoding any other leading byte fails.
//! - Decoding never allocates more than [`DECODE_BYTES_MAX`] for one value, whatever the input
//!   claims (bincode's limit checks each claimed length before allocating).
//! - Decoding a value must consume the whole input: trailing bytes are an error, not ignored.
//!
//! **Caveats**
//! - Values must not contain `HashMap`s: their iteration order would make bytes differ between
//!   processes. Use `BTreeMap` for anything that reaches the log or the disk.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Version byte in front of every encoded value. Bump it (and keep a decoder for the old one) when
/// the encoding of any stored type changes incompatibly.
///
/// - 1: the first format.
/// - 2: a Raft entry carries a `Proposal` (a list of requests) instead of one `Request`, and log
///   ids name a leader by term alone (standard Raft leader ids). No decoder for version 1 is
///   kept: no raftgraph release ever wrote it, so a version-1 data directory is refused with
///   `UnknownVersion { found: 1 }` and must be recreated.
/// - 3: a `Request` carries its command's fingerprint, stamped by the leader, instead of every
///   replica computing it at apply. No decoder for version 2 is kept either (no release wrote
///   it): a version-2 data directory is refused with `UnknownVersion { found: 2 }`.
/// - 4: a `Request` names its owner (the credential that made it), sessions are keyed by
///   `(owner, client id)` and metered per owner, and `ClusterLimits` bounds sessions per
///   principal. No decoder for version 3 is kept (no release wrote it; its session table has
///   no owners to convert into): a version-3 data directory is refused with
///   `UnknownVersion { found: 3 }` and must be recreated.
///
///   Added within version 4, readable by every version-4 reader of this build: a tenant's rate
///   limits (`Command::SetRateLimits`, `Outcome::RateLimits`, appended last to their enums, and
///   a meta key of their own). An older build decodes no entry carrying them ("malformed
///   value"): upgrade every member before setting a rate limit.
pub const FORMAT_VERSION: u8 = 4;

use crate::wire::DECODE_BYTES_MAX;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_BYTES_MAX>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<DECODE_BYTES_MAX>()
}

/// The buffer [`encode`] starts with, bytes.
const ENCODE_CAPACITY: usize = 256;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty input: no format-version byte")]
    Empty,
    #[error("unknown codec format version {found} (this build reads version {FORMAT_VERSION})")]
    UnknownVersion { found: u8 },
    #[error("malformed value: {0}")]
    Decode(String),
    #[error("value has {0} trailing bytes after its end")]
    Trailing(usize),
    #[error("value cannot be encoded: {0}")]
    Encode(String),
}

/// Appends the encoding of `value` (version byte first) to `buf`.
pub fn encode_into<T: Serialize>(value: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    buf.push(FORMAT_VERSION);
    bincode::serde::encode_into_std_write(value, buf, config())
        .map(|_| ())
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// The length [`encode`] would produce, without keeping the bytes.
pub fn encoded_len<T: Serialize>(value: &T) -> Result<usize, CodecError> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0 += b.len();
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(1);
    bincode::serde::encode_into_std_write(value, &mut c, config())
        .map_err(|e| CodecError::Encode(e.to_string()))?;
    Ok(c.0)
}

/// Encodes `value` into a new buffer, version byte first.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    // Most values written per request (records, sessions, a command to fingerprint) are a few
    // hundred bytes: starting there saves the buffer's growth from 8 bytes up, one
    // reallocation and copy per doubling.
    let mut buf = Vec::with_capacity(ENCODE_CAPACITY);
    encode_into(value, &mut buf)?;
    Ok(buf)
}

/// Decodes a value written by [`encode`]; the whole input must be one value.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(CodecError::UnknownVersion { found: version });
    }
    let (value, used) = bincode::serde::decode_from_slice::<T, _>(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Trailing(body.len() - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn round_trip_keeps_value_and_version_byte_leads() {
        let value: BTreeMap<String, Vec<u8>> =
            [("a".to_string(), vec![1, 2]), ("b".to_string(), vec![])].into();
        let bytes = encode(&value).unwrap();
        assert_eq!(bytes[0], FORMAT_VERSION);
        assert_eq!(decode::<BTreeMap<String, Vec<u8>>>(&bytes).unwrap(), value);
    }

    #[test]
    fn rejects_unknown_version_empty_and_trailing_bytes() {
        let mut bytes = encode(&7u64).unwrap();
        assert!(matches!(decode::<u64>(&[]), Err(CodecError::Empty)));
        bytes.push(0);
        assert!(matches!(
            decode::<u64>(&bytes),
            Err(CodecError::Trailing(1))
        ));
        bytes[0] = FORMAT_VERSION + 1;
        assert!(matches!(
            decode::<u64>(&bytes),
            Err(CodecError::UnknownVersion { .. })
        ));
    }

    #[test]
    fn huge_claimed_length_fails_without_allocating_it() {
        // A Vec<u8> whose varint length claims u64::MAX / 2 bytes: bincode's limit must refuse it.
        let mut bytes = vec![FORMAT_VERSION, 0xFD];
        bytes.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(matches!(
            decode::<Vec<u8>>(&bytes),
            Err(CodecError::Decode(_))
        ));
    }
}
