//! The Raft log as raftgraph's write-ahead log: segmented, checksummed, group-committed files.
//!
//! [`Wal`] implements openraft's `RaftLogStorage` / `RaftLogReader`. It is raftgraph's only
//! durability point: a write is acknowledged once a quorum has its entry here, synced.
//!
//! # Design
//!
//! - **Files.** Segment files named by their first log index hold framed, CRC32C-checked records
//!   (the format is documented in `format.rs`, beside its constants). `wal.meta`, replaced
//!   atomically, holds the vote, the purge point, a committed id and any pending truncation.
//! - **One I/O task** owns the files ([`IoRuntime`]: a dedicated thread in production, an inline
//!   task in the simulation) and applies operations strictly in submission order.
//! - **Group commit.** `append` encodes and caches its entries (readable at once) and queues them;
//!   the I/O task writes everything queued as one batch and syncs it once, then fires the flush
//!   callbacks in log order. Each batch begins with a record of where the previous sync ended.
//! - **Preallocation.** A new segment is zero-filled to `segment_bytes` before use, so appends
//!   overwrite allocated blocks and `fdatasync` need not journal a size change, which makes
//!   each sync cheaper (BENCHMARKS.md). Recovery reads zeros reaching the end of a file as its
//!   unused tail; zeros followed by anything else are judged like any other bad bytes. With
//!   `spare_segment` (on, except under `IoRuntime::Inline`) a background thread zero-fills the
//!   next segment's file as `spare.wal.tmp` while the active one fills; rotation then writes
//!   its header, syncs and renames it. Recovery removes a leftover spare like any `.tmp` file.
//!   The thread runs at nice 19, writes and syncs 1 MiB at a time, and keeps only as far ahead
//!   as the active segment requires (`spare.rs`), so its writes do not queue in front of the
//!   WAL's syncs in one burst per rotation.
//! - **Truncate** cuts the active segment with one synced length change; when whole segments go,
//!   the intent is first recorded in `wal.meta`, so recovery finishes it. **Purge** records the
//!   purge point in `wal.meta` first, then deletes whole segments it covers.
//! - **Recovery** scans every segment: a bad record in any but the last segment, or inside the
//!   range proven synced in the last one, is an error naming file and offset; bad bytes past that
//!   range are a torn tail, cut off and logged.
//!
//! # Invariants
//!
//! - Entries on disk are contiguous: segment `k+1` starts at segment `k`'s last index + 1, and no
//!   entry is ever skipped or invented by recovery.
//! - A flush callback fires only after the entry's bytes, and every byte before them, are synced.
//! - `save_vote` returns only after the vote is durable.
//! - The committed id stored never runs past the log tail stored before it.
//! - Vote, append, truncate and purge take effect on disk in the order they were called.
//! - No allocation is sized by unchecked input: record lengths are checked against
//!   `record_bytes_max` and the file length before the payload buffer exists.
//! - After any failed write or sync the WAL acknowledges nothing more: later calls fail.
//!
//! # Caveats
//!
//! - Bytes of the *last* batch in the last segment are proven synced by nothing that follows
//!   them, so corruption there is indistinguishable from a torn write and is cut as one (etcd's
//!   WAL has the same blind spot). A `wal.meta` committed id past the cut turns this into an
//!   error, as it proves entries were lost.
//! - A group that crosses `segment_bytes` finishes in the old segment: segments can exceed the
//!   target by up to one group (`batch_bytes_max`).
//! - Without a spare (simulation, or the spare thread could not start or failed), rotation
//!   zero-fills the next segment on the I/O task: a stall of one `segment_bytes` write (64 MiB
//!   by default) every `segment_bytes` of log. If the log fills a segment faster than the spare
//!   thread fills the next, rotation waits for that thread (which then stops pacing) instead.
//! - Entries not yet durable are held in memory until synced; openraft bounds how many are in
//!   flight.

mod config;
mod disk;
mod error;
mod format;
mod fs;
mod memfs;
mod runtime;
mod segment;
mod shared;
mod spare;
mod store;
mod worker;

pub mod bench;

pub use config::WalConfig;
pub use error::WalError;
pub use fs::{StdFs, WalFile, WalFs};
pub use memfs::{Fate, IoCall, MemFs, PendingWrite};
pub use runtime::IoRuntime;
pub use shared::WalStats;
pub use store::{Wal, WalReader};

/// File-format constants and helpers, public for tests that corrupt files on purpose.
#[doc(hidden)]
pub mod layout {
    pub use super::format::{
        RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES, decode_record_header, parse_segment_file_name,
        segment_file_name,
    };
}
