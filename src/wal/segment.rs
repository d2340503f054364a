//! One segment file: creating it, scanning it on recovery, reading records back.

use std::io;
use std::path::{Path, PathBuf};

use openraft::RaftTypeConfig;
use openraft::entry::RaftEntry;
use openraft::type_config::alias::LogIdOf;

use super::error::WalError;
use super::format::{self, RECORD_HEADER_BYTES, RecordKind, SEGMENT_HEADER_BYTES};
use super::fs::{WalFile, WalFs, io_context};
use crate::codec;

/// Where one entry's record sits in its segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    /// Offset of the record header.
    pub offset: u64,
    /// Payload length.
    pub len: u32,
}

/// An open segment. Entry `i` of `positions` holds log index `first_index + i`.
pub(crate) struct Segment {
    pub first_index: u64,
    pub path: PathBuf,
    pub file: Box<dyn WalFile>,
    /// Bytes written.
    pub len: u64,
    /// Bytes known durable (covered by a completed `sync_data`).
    pub synced_len: u64,
    pub positions: Vec<Pos>,
}

impl Segment {
    /// The index the next entry appended here must have.
    pub fn next_index(&self) -> u64 {
        self.first_index + self.positions.len() as u64
    }

    /// Creates `dir/{first_index}.wal` crash-atomically: header written and synced under a
    /// temporary name, renamed, directory synced. Once this returns, the segment survives a crash.
    ///
    /// With `preallocate_to` past the header, the file is first filled with zeros up to that size
    /// (in the same sync): later appends then overwrite allocated blocks, and `fdatasync` need not
    /// journal a size change, which makes each sync cheaper. Recovery reads a run of zeros
    /// reaching the end of a file as its unused tail.
    pub fn create(
        fs: &dyn WalFs,
        dir: &Path,
        first_index: u64,
        preallocate_to: u64,
    ) -> io::Result<Segment> {
        let name = format::segment_file_name(first_index);
        let tmp = dir.join(format!("{name}.tmp"));
        let mut file = fs.create(&tmp).map_err(|e| io_context(e, "create", &tmp))?;
        zero_fill(file.as_mut(), SEGMENT_HEADER_BYTES, preallocate_to, &tmp)?;
        Self::from_spare(fs, dir, first_index, file, &tmp)
    }

    /// Makes `file` (at `tmp`, a `.tmp` name; zero-filled by the spare thread or by
    /// [`Segment::create`]) the segment `dir/{first_index}.wal`: header written and synced,
    /// renamed, directory synced.
    pub fn from_spare(
        fs: &dyn WalFs,
        dir: &Path,
        first_index: u64,
        mut file: Box<dyn WalFile>,
        tmp: &Path,
    ) -> io::Result<Segment> {
        let header = format::encode_segment_header(first_index);
        file.write_all_at(&header, 0)
            .map_err(|e| io_context(e, "write header of", tmp))?;
        let path = dir.join(format::segment_file_name(first_index));
        file.sync_data().map_err(|e| io_context(e, "sync", tmp))?;
        fs.rename(tmp, &path)
            .map_err(|e| io_context(e, "rename", tmp))?;
        fs.sync_dir(dir)
            .map_err(|e| io_context(e, "sync directory", dir))?;
        Ok(Segment {
            first_index,
            path,
            file,
            len: SEGMENT_HEADER_BYTES,
            synced_len: SEGMENT_HEADER_BYTES,
            positions: Vec::new(),
        })
    }

    /// Reads the entry record at `pos` back, checks it, and decodes it.
    pub fn read_entry<C: RaftTypeConfig>(
        &self,
        index: u64,
        pos: Pos,
        record_max: u32,
    ) -> Result<C::Entry, WalError> {
        let rec = read_record(self.file.as_ref(), pos.offset, self.len, record_max)
            .map_err(|reason| {
                WalError::corrupt(
                    &self.path,
                    pos.offset,
                    format!("reading entry {index}: {reason}"),
                )
            })?
            .map_err(WalError::Io)?;
        if rec.kind != RecordKind::Entry as u8 || rec.payload.len() != pos.len as usize {
            return Err(WalError::corrupt(
                &self.path,
                pos.offset,
                format!("entry {index}: record is not the entry indexed"),
            ));
        }
        let entry: C::Entry = codec::decode(&rec.payload).map_err(|e| {
            WalError::corrupt(
                &self.path,
                pos.offset,
                format!("entry {index} does not decode: {e}"),
            )
        })?;
        let got = entry.log_id_parts().1;
        if got != index {
            return Err(WalError::corrupt(
                &self.path,
                pos.offset,
                format!("record holds entry {got}, expected {index}"),
            ));
        }
        Ok(entry)
    }
}

/// A record read back whole with a matching checksum.
pub(crate) struct Record {
    pub kind: u8,
    pub payload: Vec<u8>,
}

/// Reads the record at `offset` in a file of `file_len` bytes.
///
/// The outer `Err` is a reason the bytes are not a valid record (cut short, length over the
/// limit, checksum mismatch) — a torn tail or corruption, for the caller to decide. The inner
/// `Err` is an I/O failure. The payload buffer is allocated only after its length has been
/// checked against `record_max` and the file length.
pub(crate) fn read_record(
    file: &dyn WalFile,
    offset: u64,
    file_len: u64,
    record_max: u32,
) -> Result<io::Result<Record>, String> {
    let left = file_len.saturating_sub(offset);
    if left < RECORD_HEADER_BYTES as u64 {
        return Err(format!(
            "record header cut short: {left} bytes left in the file"
        ));
    }
    let mut h = [0u8; RECORD_HEADER_BYTES];
    if let Err(e) = file.read_exact_at(&mut h, offset) {
        return Ok(Err(e));
    }
    let header = format::decode_record_header(&h);
    if header.len > record_max {
        return Err(format!(
            "record length {} over record_bytes_max {record_max}",
            header.len
        ));
    }
    if RECORD_HEADER_BYTES as u64 + u64::from(header.len) > left {
        return Err(format!(
            "record of {} bytes runs past the end of the file ({file_len} bytes)",
            header.len
        ));
    }
    let mut payload = vec![0u8; header.len as usize];
    if let Err(e) = file.read_exact_at(&mut payload, offset + RECORD_HEADER_BYTES as u64) {
        return Ok(Err(e));
    }
    if !format::record_crc_ok(&header, &payload) {
        return Err("record checksum mismatch".to_string());
    }
    Ok(Ok(Record {
        kind: header.kind,
        payload,
    }))
}

/// What scanning one segment found.
pub(crate) struct Scan<C: RaftTypeConfig> {
    pub positions: Vec<Pos>,
    pub committed: Option<LogIdOf<C>>,
    /// End of the last valid record.
    pub end: u64,
    /// Bad bytes judged a torn tail: offset and reason. Only ever set for the last segment.
    pub torn: Option<(u64, String)>,
}

/// Scans a segment on recovery: checks its header and every record, and indexes its entries.
///
/// In a segment that is not the last, any bad record is corruption. In the last segment, bad bytes
/// are a torn tail only if they lie past every offset proven synced — by the batch records before
/// them, or by any valid batch record after them (found by searching the bytes that follow).
pub(crate) fn scan<C: RaftTypeConfig>(
    file: &dyn WalFile,
    path: &Path,
    first_index: u64,
    is_last: bool,
    record_max: u32,
) -> Result<Scan<C>, WalError> {
    let file_len = file.len()?;
    if file_len < SEGMENT_HEADER_BYTES {
        return Err(WalError::corrupt(
            path,
            0,
            format!("file is {file_len} bytes, shorter than the segment header"),
        ));
    }
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    file.read_exact_at(&mut h, 0)?;
    let header_first =
        format::decode_segment_header(&h).map_err(|e| WalError::corrupt(path, 0, e.to_string()))?;
    if header_first != first_index {
        return Err(WalError::corrupt(
            path,
            0,
            format!("header says first index {header_first}, file name says {first_index}"),
        ));
    }
    let mut scan = Scan {
        positions: Vec::new(),
        committed: None,
        end: SEGMENT_HEADER_BYTES,
        torn: None,
    };
    let mut proven = SEGMENT_HEADER_BYTES;
    let mut offset = SEGMENT_HEADER_BYTES;
    while offset < file_len {
        let rec = match read_record(file, offset, file_len, record_max) {
            Ok(rec) => rec?,
            Err(reason) => {
                if offset < proven {
                    return Err(WalError::corrupt(
                        path,
                        offset,
                        format!("{reason}, inside the range proven synced up to {proven}"),
                    ));
                }
                if zero_to_end(file, offset, file_len)? {
                    // The preallocated, never-written tail.
                    break;
                }
                if !is_last {
                    return Err(WalError::corrupt(
                        path,
                        offset,
                        format!("{reason} (not the last segment)"),
                    ));
                }
                if let Some((at, upto)) = find_later_batch(file, offset, file_len)? {
                    return Err(WalError::corrupt(
                        path,
                        offset,
                        format!(
                            "{reason}; the batch record at offset {at} proves bytes up to {upto} were synced"
                        ),
                    ));
                }
                scan.torn = Some((offset, reason));
                break;
            }
        };
        let bad = |reason: String| WalError::corrupt(path, offset, reason);
        match RecordKind::from_byte(rec.kind) {
            Some(RecordKind::Entry) => {
                let entry: C::Entry = codec::decode(&rec.payload)
                    .map_err(|e| bad(format!("entry does not decode: {e}")))?;
                let index = entry.log_id_parts().1;
                let expected = first_index + scan.positions.len() as u64;
                if index != expected {
                    return Err(bad(format!("entry has index {index}, expected {expected}")));
                }
                scan.positions.push(Pos {
                    offset,
                    len: rec.payload.len() as u32,
                });
            }
            Some(RecordKind::Batch) => {
                let synced: [u8; 8] = rec
                    .payload
                    .as_slice()
                    .try_into()
                    .map_err(|_| bad("batch record payload is not 8 bytes".into()))?;
                let synced = u64::from_le_bytes(synced);
                if synced > offset {
                    return Err(bad(format!(
                        "batch record claims {synced} bytes synced, past its own offset"
                    )));
                }
                proven = proven.max(synced);
            }
            Some(RecordKind::Committed) => {
                let committed: Option<LogIdOf<C>> = codec::decode(&rec.payload)
                    .map_err(|e| bad(format!("committed record does not decode: {e}")))?;
                scan.committed = scan.committed.max(committed);
            }
            None => return Err(bad(format!("unknown record kind {}", rec.kind))),
        }
        offset += RECORD_HEADER_BYTES as u64 + rec.payload.len() as u64;
        scan.end = offset;
    }
    Ok(scan)
}

/// The zeros [`zero_fill`] writes from (zero-initialised, so it costs no binary size).
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// Writes zeros to `file[from..to]` in 1 MiB pieces. The spare thread calls it one synced
/// piece at a time (`super::spare`).
pub(crate) fn zero_fill(file: &mut dyn WalFile, from: u64, to: u64, path: &Path) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..n as usize], at)
            .map_err(|e| io_context(e, "preallocate", path))?;
        at += n;
    }
    Ok(())
}

/// True when every byte of `file[from..file_len]` is zero. Reads in bounded chunks.
fn zero_to_end(file: &dyn WalFile, from: u64, file_len: u64) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = from;
    while at < file_len {
        let n = ((file_len - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(false);
        }
        at += n as u64;
    }
    Ok(true)
}

/// Searches `file[from+1..]` for a valid batch record claiming more than `from` bytes synced:
/// proof that the bad bytes at `from` were once durable. Reads in bounded chunks.
fn find_later_batch(
    file: &dyn WalFile,
    from: u64,
    file_len: u64,
) -> io::Result<Option<(u64, u64)>> {
    const RECORD: usize = RECORD_HEADER_BYTES + format::BATCH_PAYLOAD_BYTES;
    const CHUNK: usize = 64 * 1024;
    let mut buf = vec![0u8; CHUNK + RECORD];
    let mut start = from + 1;
    while start + RECORD as u64 <= file_len {
        let n = ((file_len - start) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], start)?;
        for i in 0..=(n - RECORD) {
            let r = &buf[i..i + RECORD];
            if r[0..4] != (format::BATCH_PAYLOAD_BYTES as u32).to_le_bytes()
                || r[8] != RecordKind::Batch as u8
            {
                continue;
            }
            let header =
                format::decode_record_header(r[..RECORD_HEADER_BYTES].try_into().expect("9 bytes"));
            let payload = &r[RECORD_HEADER_BYTES..];
            let synced = u64::from_le_bytes(payload.try_into().expect("8 bytes"));
            let at = start + i as u64;
            if format::record_crc_ok(&header, payload) && synced > from && synced <= at {
                return Ok(Some((at, synced)));
            }
        }
        if n < buf.len() {
            break;
        }
        start += (n - RECORD + 1) as u64;
    }
    Ok(None)
}
