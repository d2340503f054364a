//! The WAL's on-disk format: segment header, record framing, the meta file.
//!
//! All integers are little-endian. CRC32C is the Castagnoli polynomial (hardware accelerated).
//!
//! **Segment file** `{first_index:020}.wal` (created as `….wal.tmp`, synced, renamed, directory
//! synced — so a `.wal` file always has a complete, durable header):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `RGWALSEG` |
//! | 8 | 2 | format version ([`SEGMENT_VERSION`]) |
//! | 10 | 2 | reserved, zero |
//! | 12 | 8 | first log index this segment holds |
//! | 20 | 4 | CRC32C of bytes 0..20 |
//!
//! followed by records, and then (when preallocated) zeros up to the segment size:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | payload length `n` (≤ `record_bytes_max`) |
//! | 4 | 4 | CRC32C over bytes 0..4, the kind byte and the payload |
//! | 8 | 1 | kind ([`RecordKind`]) |
//! | 9 | n | payload |
//!
//! Every group-commit batch starts with a [`RecordKind::Batch`] record whose payload (8 bytes) is
//! the segment offset up to which the previous `fdatasync` made this segment durable. Entries are
//! [`RecordKind::Entry`] records holding one codec-encoded log entry; a [`RecordKind::Committed`]
//! record holds the codec-encoded committed log id, and ends its batch: the id may name the
//! batch's own entries, and a scan stops at the first damaged record, so a committed record
//! read back always has the entries before it. (Logs written before this order put it right
//! after the batch record; they read the same.)
//!
//! **Meta file** `wal.meta` (replaced atomically: written to `wal.meta.tmp`, synced, renamed,
//! directory synced) holds the vote, the purge point, the committed id as of its writing and a
//! pending truncation intent:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | magic `RGWALMET` |
//! | 8 | 2 | format version ([`META_VERSION`]) |
//! | 10 | 2 | reserved, zero |
//! | 12 | 4 | payload length `n` (≤ [`META_BYTES_MAX`]) |
//! | 16 | 4 | CRC32C over bytes 0..16 and the payload |
//! | 20 | n | codec-encoded meta state |

/// Magic at the start of every segment file.
pub const SEGMENT_MAGIC: [u8; 8] = *b"RGWALSEG";
/// Segment format version this build writes and reads.
pub const SEGMENT_VERSION: u16 = 1;
/// Size of the segment header in bytes.
pub const SEGMENT_HEADER_BYTES: u64 = 24;
/// Size of a record header (length, CRC, kind) in bytes.
pub const RECORD_HEADER_BYTES: usize = 9;
/// Size of a batch record's payload: one u64 offset.
pub const BATCH_PAYLOAD_BYTES: usize = 8;

/// Magic at the start of the meta file.
pub const META_MAGIC: [u8; 8] = *b"RGWALMET";
/// Meta file format version this build writes and reads.
pub const META_VERSION: u16 = 1;
/// Size of the meta file header in bytes.
pub const META_HEADER_BYTES: usize = 20;
/// The largest meta payload accepted (a vote and three log ids need well under 1 KiB).
pub const META_BYTES_MAX: usize = 64 * 1024;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// One log entry, codec-encoded.
    Entry = 1,
    /// Start of a group-commit batch; payload: u64 offset covered by the previous fsync.
    Batch = 2,
    /// The committed log id, codec-encoded `Option<LogId>`.
    Committed = 3,
}

impl RecordKind {
    pub fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Entry),
            2 => Some(Self::Batch),
            3 => Some(Self::Committed),
            _ => None,
        }
    }
}

/// The file name of the segment whose first log index is `first_index`.
pub fn segment_file_name(first_index: u64) -> String {
    format!("{first_index:020}.wal")
}

/// Parses a segment file name; `None` for any other file.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".wal")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Encodes a segment header.
pub fn encode_segment_header(first_index: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[0..8].copy_from_slice(&SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..20]);
    h[20..24].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Why a segment header is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderError {
    BadMagic,
    BadChecksum,
    UnknownVersion(u16),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::BadMagic => write!(f, "segment header has a bad magic"),
            Self::BadChecksum => write!(f, "segment header checksum mismatch"),
            Self::UnknownVersion(v) => {
                write!(
                    f,
                    "unknown segment format version {v} (this build reads {SEGMENT_VERSION})"
                )
            }
        }
    }
}

/// Decodes a segment header, returning its first index.
pub fn decode_segment_header(h: &[u8; SEGMENT_HEADER_BYTES as usize]) -> Result<u64, HeaderError> {
    if h[0..8] != SEGMENT_MAGIC {
        return Err(HeaderError::BadMagic);
    }
    let crc = u32::from_le_bytes([h[20], h[21], h[22], h[23]]);
    if crc32c::crc32c(&h[0..20]) != crc {
        return Err(HeaderError::BadChecksum);
    }
    let version = u16::from_le_bytes([h[8], h[9]]);
    if version != SEGMENT_VERSION {
        return Err(HeaderError::UnknownVersion(version));
    }
    Ok(u64::from_le_bytes(
        h[12..20].try_into().expect("slice of 8 bytes"),
    ))
}

fn record_crc(len_bytes: &[u8; 4], kind: u8, payload: &[u8]) -> u32 {
    let crc = crc32c::crc32c(len_bytes);
    let crc = crc32c::crc32c_append(crc, &[kind]);
    crc32c::crc32c_append(crc, payload)
}

/// Appends one framed record to `buf`. The caller has checked `payload.len()` against the record
/// limit; a payload over u32::MAX is a bug, hence the panic.
pub fn encode_record(kind: RecordKind, payload: &[u8], buf: &mut Vec<u8>) {
    let len =
        u32::try_from(payload.len()).expect("record payload checked against record_bytes_max");
    let len_bytes = len.to_le_bytes();
    let crc = record_crc(&len_bytes, kind as u8, payload);
    buf.extend_from_slice(&len_bytes);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.push(kind as u8);
    buf.extend_from_slice(payload);
}

/// A decoded record header: what the next `len` bytes should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub len: u32,
    pub crc: u32,
    pub kind: u8,
}

pub fn decode_record_header(h: &[u8; RECORD_HEADER_BYTES]) -> RecordHeader {
    RecordHeader {
        len: u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
        crc: u32::from_le_bytes([h[4], h[5], h[6], h[7]]),
        kind: h[8],
    }
}

/// True when `payload` matches the header's checksum.
pub fn record_crc_ok(h: &RecordHeader, payload: &[u8]) -> bool {
    record_crc(&h.len.to_le_bytes(), h.kind, payload) == h.crc
}

/// Encodes a whole meta file.
pub fn encode_meta(payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len() <= META_BYTES_MAX,
        "meta payload of {} bytes",
        payload.len()
    );
    let mut buf = Vec::with_capacity(META_HEADER_BYTES + payload.len());
    buf.extend_from_slice(&META_MAGIC);
    buf.extend_from_slice(&META_VERSION.to_le_bytes());
    buf.extend_from_slice(&[0, 0]);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&buf[0..16]), payload);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf.extend_from_slice(payload);
    buf
}

/// Checks a whole meta file and returns its payload.
pub fn decode_meta(bytes: &[u8]) -> Result<&[u8], String> {
    if bytes.len() < META_HEADER_BYTES {
        return Err(format!(
            "meta file is {} bytes, shorter than its header",
            bytes.len()
        ));
    }
    if bytes[0..8] != META_MAGIC {
        return Err("meta file has a bad magic".into());
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != META_VERSION {
        return Err(format!(
            "unknown meta format version {version} (this build reads {META_VERSION})"
        ));
    }
    let len = u32::from_le_bytes(bytes[12..16].try_into().expect("4 bytes")) as usize;
    if len > META_BYTES_MAX || META_HEADER_BYTES + len != bytes.len() {
        return Err(format!(
            "meta payload length {len} does not match file length {}",
            bytes.len()
        ));
    }
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    let payload = &bytes[META_HEADER_BYTES..];
    if crc32c::crc32c_append(crc32c::crc32c(&bytes[0..16]), payload) != crc {
        return Err("meta file checksum mismatch".into());
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names_round_trip_and_reject_others() {
        assert_eq!(segment_file_name(42), "00000000000000000042.wal");
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
        for bad in [
            "42.wal",
            "00000000000000000042.wal.tmp",
            "0000000000000000004x.wal",
            "wal.meta",
        ] {
            assert_eq!(parse_segment_file_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_detects_every_single_bit_flip() {
        let h = encode_segment_header(7);
        assert_eq!(decode_segment_header(&h), Ok(7));
        for bit in 0..h.len() * 8 {
            let mut bad = h;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_segment_header(&bad).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn record_crc_covers_length_kind_and_payload() {
        let mut buf = Vec::new();
        encode_record(RecordKind::Entry, b"hello", &mut buf);
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let h = decode_record_header(bad[..RECORD_HEADER_BYTES].try_into().unwrap());
            let payload = &bad[RECORD_HEADER_BYTES..];
            let ok = h.len as usize == payload.len() && record_crc_ok(&h, payload);
            assert!(!ok, "bit {bit} flipped unnoticed");
        }
    }

    #[test]
    fn meta_round_trips_and_rejects_flips() {
        let file = encode_meta(b"state");
        assert_eq!(decode_meta(&file).unwrap(), b"state");
        for bit in 0..file.len() * 8 {
            let mut bad = file.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_meta(&bad).is_err(), "bit {bit}");
        }
    }
}
