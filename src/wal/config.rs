//! WAL configuration.

use std::path::PathBuf;

use super::error::WalError;
use crate::wire::{DECODE_BYTES_MAX, WAL_RECORD_BYTES};

/// How the WAL lays out and batches its files. Defaults suit a production server; tests shrink
/// `segment_bytes` to exercise rotation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalConfig {
    /// Directory holding the segment files and `wal.meta`. Owned by the WAL alone.
    pub dir: PathBuf,
    /// A segment is closed, and the next batch starts a new one, once it has reached this many
    /// bytes; the batch that crosses the mark finishes in the old segment. Default 64 MiB;
    /// valid 256 B ..= 1 GiB (small values are for tests).
    pub segment_bytes: u64,
    /// The largest encoded log entry accepted. Larger entries are refused by `append` (the server
    /// must reject such writes before they are proposed). Default 16 MiB; valid 64 B ..= 64 MiB.
    pub record_bytes_max: u32,
    /// Encoded bytes of already-durable entries kept in memory to serve reads without touching
    /// files. Entries not yet durable are always kept. The entries are held decoded, which for
    /// small writes is several times their encoded size, so resident memory is a multiple of
    /// this budget (BENCHMARKS.md). Followers read entries a few milliseconds after
    /// they are appended, so a small cache serves them. Default 8 MiB; 0 disables the cache.
    pub cache_bytes_max: u64,
    /// A group commit syncs once it has gathered this many bytes, even if more appends are
    /// queued. Default 8 MiB; valid 4 KiB ..= 1 GiB.
    pub batch_bytes_max: u64,
    /// Zero-fill each new segment to `segment_bytes` before use, so appends overwrite allocated
    /// blocks and a sync need not journal a file-size change, which makes each sync cheaper
    /// (BENCHMARKS.md, WAL group commit). Costs one
    /// `segment_bytes` write per rotation. Default true.
    pub preallocate: bool,
    /// With `preallocate`, zero-fill the next segment's file on a background thread while the
    /// active one fills, so a rotation costs a header write and three syncs instead of a
    /// `segment_bytes` write and sync in the write path, which stalls every write once per
    /// segment. The thread is paced by the active segment's
    /// progress and runs at the lowest CPU priority (see `spare.rs`). [`super::Wal::open`]
    /// turns it off under [`super::IoRuntime::Inline`]: the simulation must not depend on an
    /// OS thread's timing. Default true.
    pub spare_segment: bool,
    /// Planted bug (the `testing` feature only; no config file or flag reaches it): appends
    /// are written and acknowledged without `fdatasync`, so a power loss can lose acknowledged
    /// entries.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub planted_ack_before_sync: bool,
    /// Planted bug (the `testing` feature only): a vote is acknowledged without being written,
    /// so a restart can forget it and vote twice in one term.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub planted_vote_not_persisted: bool,
}

impl WalConfig {
    /// A configuration with the defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            segment_bytes: 64 << 20,
            record_bytes_max: WAL_RECORD_BYTES as u32,
            cache_bytes_max: 8 << 20,
            batch_bytes_max: 8 << 20,
            preallocate: true,
            spare_segment: true,
            #[cfg(feature = "testing")]
            planted_ack_before_sync: false,
            #[cfg(feature = "testing")]
            planted_vote_not_persisted: false,
        }
    }

    /// Whether an append is synced before it is acknowledged: always, unless a test planted
    /// the bug.
    pub(crate) fn sync_appends(&self) -> bool {
        #[cfg(feature = "testing")]
        if self.planted_ack_before_sync {
            return false;
        }
        true
    }

    /// Whether a vote is written before it is acknowledged: always, unless a test planted the
    /// bug.
    pub(crate) fn persists_votes(&self) -> bool {
        #[cfg(feature = "testing")]
        if self.planted_vote_not_persisted {
            return false;
        }
        true
    }

    /// Rejects values outside their documented ranges, naming the field and the value.
    pub fn validate(&self) -> Result<(), WalError> {
        let bad = |field: &str, value: u64, range: &str| {
            Err(WalError::Config(format!(
                "{field} = {value} is outside {range}"
            )))
        };
        if !(256..=1 << 30).contains(&self.segment_bytes) {
            return bad("segment_bytes", self.segment_bytes, "256 ..= 1073741824");
        }
        if !(64..=DECODE_BYTES_MAX as u32).contains(&self.record_bytes_max) {
            return bad(
                "record_bytes_max",
                self.record_bytes_max.into(),
                "64 ..= 67108864",
            );
        }
        if !(4096..=1 << 30).contains(&self.batch_bytes_max) {
            return bad(
                "batch_bytes_max",
                self.batch_bytes_max,
                "4096 ..= 1073741824",
            );
        }
        if self.dir.as_os_str().is_empty() {
            return Err(WalError::Config("dir is empty".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_out_of_range_values_are_named() {
        WalConfig::new("/tmp/x").validate().unwrap();
        let mut c = WalConfig::new("/tmp/x");
        c.record_bytes_max = 65 << 20;
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("record_bytes_max = 68157440"), "{msg}");
        let mut c = WalConfig::new("/tmp/x");
        c.segment_bytes = 10;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("segment_bytes = 10")
        );
        let mut c = WalConfig::new("");
        c.batch_bytes_max = 1 << 20;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("dir is empty")
        );
    }
}
