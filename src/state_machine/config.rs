//! State machine configuration (per server; nothing here changes what apply decides).

use std::io;
use std::path::PathBuf;
#[cfg(feature = "testing")]
use std::sync::Arc;

/// Where blocking RocksDB work (checkpoint, snapshot stream, ingest) runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Blocking {
    /// On tokio's blocking pool, off the async workers (production).
    #[default]
    Pool,
    /// Inline on the calling task (simulation: nothing may wait on an OS thread).
    Inline,
}

impl Blocking {
    /// Runs `f` where this seam says. A panic inside `f` resumes on the caller.
    pub async fn run<T, F>(self, f: F) -> T
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self {
            Blocking::Inline => f(),
            Blocking::Pool => match tokio::task::spawn_blocking(f).await {
                Ok(v) => v,
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            },
        }
    }
}

/// Bugs planted in apply, to show the simulation catches them; only the `testing` feature sets
/// any (see `StateMachineConfig::planted_*`).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct ApplyBugs {
    /// A repeated (client_id, sequence) is applied again instead of answered from the session.
    pub skip_session_dedup: bool,
    /// A write may take a tenant one node past its node quota.
    pub quota_off_by_one: bool,
}

/// Server-local settings of the state machine.
#[derive(Clone, Debug)]
pub struct StateMachineConfig {
    /// Directory holding `CURRENT`, the database directories and snapshots.
    pub dir: PathBuf,
    /// Memtable budget shared by every column family together. Default 64 MiB; 1 MiB..=16 GiB.
    pub write_buffer_bytes: usize,
    /// Memtable size of one column family before it flushes. Default 16 MiB; at most
    /// `write_buffer_bytes`.
    pub cf_write_buffer_bytes: usize,
    /// Block cache shared by every column family. Default 64 MiB; 1 MiB..=64 GiB.
    pub block_cache_bytes: usize,
    /// Target size of one SST file written while installing a snapshot. Default 64 MiB;
    /// 64 KiB..=1 GiB.
    pub install_sst_bytes: u64,
    pub blocking: Blocking,
    /// Refuse (fatally) an entry whose index is not exactly the applied index + 1. Default
    /// true. Off (the `testing` feature only) for openraft's conformance suite, whose fixtures
    /// apply entries with gaps; an index at or below the applied one is refused either way.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub check_apply_order: bool,
    /// Planted bug (the `testing` feature only; no config file or flag reaches it): apply a
    /// repeated (client_id, sequence) again instead of answering from the session.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub planted_skip_session_dedup: bool,
    /// Planted bug (the `testing` feature only): a write may take a tenant one node past its
    /// node quota.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub planted_quota_off_by_one: bool,
    /// Planted bug (the `testing` feature only): a snapshot install switches `CURRENT` to the
    /// new database before its files are synced.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub planted_pointer_before_sync: bool,
    /// Planted bug (the `testing` feature only): apply writes an entry's applied id in a batch
    /// of its own, before the batch with the entry's effects.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub planted_applied_id_apart: bool,
    /// Planted bug (the `testing` feature only): a snapshot install returns before the
    /// pointer's switch is durable (its directory is not synced): the old database is then
    /// removed, and the log purged up to the snapshot, while a power loss can still bring back
    /// a `CURRENT` naming the old database.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub planted_pointer_not_durable: bool,
    /// Told of every entry applied (the `testing` feature only): the simulation compares what
    /// each member applied at each index.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub on_apply: Option<ApplyObserver>,
    /// Told of every step the state machine takes on its own files, before it happens (the
    /// `testing` feature only): the simulation cuts the power at one of them.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub on_disk: Option<super::disk::DiskHook>,
}

/// Called with each applied entry's index, term and a fingerprint of the whole entry (the
/// `testing` feature only).
#[cfg(feature = "testing")]
#[doc(hidden)]
#[derive(Clone)]
pub struct ApplyObserver(pub Arc<dyn Fn(u64, u64, u64) + Send + Sync>);

#[cfg(feature = "testing")]
impl std::fmt::Debug for ApplyObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApplyObserver")
    }
}

impl StateMachineConfig {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        StateMachineConfig {
            dir: dir.into(),
            write_buffer_bytes: 64 << 20,
            cf_write_buffer_bytes: 16 << 20,
            block_cache_bytes: 64 << 20,
            install_sst_bytes: 64 << 20,
            blocking: Blocking::Pool,
            #[cfg(feature = "testing")]
            check_apply_order: true,
            #[cfg(feature = "testing")]
            planted_skip_session_dedup: false,
            #[cfg(feature = "testing")]
            planted_quota_off_by_one: false,
            #[cfg(feature = "testing")]
            planted_pointer_before_sync: false,
            #[cfg(feature = "testing")]
            planted_applied_id_apart: false,
            #[cfg(feature = "testing")]
            planted_pointer_not_durable: false,
            #[cfg(feature = "testing")]
            on_apply: None,
            #[cfg(feature = "testing")]
            on_disk: None,
        }
    }

    /// The state machine's file operations in `phase`.
    pub(crate) fn disk(&self, phase: super::disk::Phase) -> super::disk::SmDisk {
        #[cfg(feature = "testing")]
        return super::disk::SmDisk::new(phase, self.on_disk.clone());
        #[cfg(not(feature = "testing"))]
        super::disk::SmDisk::new(phase)
    }

    /// Whether an entry may follow the applied one with a gap (never, outside openraft's
    /// conformance suite).
    pub(crate) fn apply_gaps_allowed(&self) -> bool {
        #[cfg(feature = "testing")]
        if !self.check_apply_order {
            return true;
        }
        false
    }

    /// The bugs planted in apply (all off outside tests).
    pub(crate) fn apply_bugs(&self) -> ApplyBugs {
        #[cfg(feature = "testing")]
        return ApplyBugs {
            skip_session_dedup: self.planted_skip_session_dedup,
            quota_off_by_one: self.planted_quota_off_by_one,
        };
        #[cfg(not(feature = "testing"))]
        ApplyBugs::default()
    }

    /// Whether the planted "pointer before sync" bug is on (never outside tests).
    pub(crate) fn planted_pointer_before_sync(&self) -> bool {
        #[cfg(feature = "testing")]
        return self.planted_pointer_before_sync;
        #[cfg(not(feature = "testing"))]
        false
    }

    /// Whether the planted "pointer not durable" bug is on (never outside tests).
    pub(crate) fn planted_pointer_not_durable(&self) -> bool {
        #[cfg(feature = "testing")]
        return self.planted_pointer_not_durable;
        #[cfg(not(feature = "testing"))]
        false
    }

    /// Whether the planted "applied id apart" bug is on (never outside tests).
    pub(crate) fn planted_applied_id_apart(&self) -> bool {
        #[cfg(feature = "testing")]
        return self.planted_applied_id_apart;
        #[cfg(not(feature = "testing"))]
        false
    }

    /// Tells the observer, if any, that `entry` was applied.
    #[cfg_attr(not(feature = "testing"), allow(unused_variables))]
    pub(crate) fn observe_apply(&self, entry: &crate::raft::Entry) {
        #[cfg(feature = "testing")]
        if let Some(observe) = &self.on_apply {
            use openraft::entry::RaftEntry;
            use std::hash::{Hash, Hasher};
            let log_id = entry.log_id();
            // The same bytes the WAL stores: equal fingerprints mean equal entries.
            let bytes = crate::codec::encode(entry).unwrap_or_default();
            let mut h = std::hash::DefaultHasher::new();
            bytes.hash(&mut h);
            (observe.0)(log_id.index, log_id.committed_leader_id().term, h.finish());
        }
    }

    pub fn validate(&self) -> io::Result<()> {
        let bad = |msg: String| Err(io::Error::new(io::ErrorKind::InvalidInput, msg));
        if !(1 << 20..=16 << 30).contains(&self.write_buffer_bytes) {
            return bad(format!(
                "write_buffer_bytes {} outside 1 MiB..=16 GiB",
                self.write_buffer_bytes
            ));
        }
        if self.cf_write_buffer_bytes < 64 << 10
            || self.cf_write_buffer_bytes > self.write_buffer_bytes
        {
            return bad(format!(
                "cf_write_buffer_bytes {} outside 64 KiB..=write_buffer_bytes ({})",
                self.cf_write_buffer_bytes, self.write_buffer_bytes
            ));
        }
        if !(1 << 20..=64 << 30).contains(&self.block_cache_bytes) {
            return bad(format!(
                "block_cache_bytes {} outside 1 MiB..=64 GiB",
                self.block_cache_bytes
            ));
        }
        if !(64 << 10..=1 << 30).contains(&self.install_sst_bytes) {
            return bad(format!(
                "install_sst_bytes {} outside 64 KiB..=1 GiB",
                self.install_sst_bytes
            ));
        }
        Ok(())
    }
}
