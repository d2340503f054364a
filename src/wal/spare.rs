//! The next segment's file, zero-filled by a background thread while the active segment fills.
//!
//! Zero-filling a whole segment at once queues a segment's worth of writes ahead of the WAL's
//! own `fdatasync`s; the members of a cluster hold the same log, so they rotate, and fill,
//! together, and writes stall until the queue drains (BENCHMARKS.md). So the filler
//! - runs at the lowest CPU priority (nice 19), on time the threads that answer clients leave;
//! - writes and syncs one [`CHUNK`] at a time, so at most one chunk of zeros is ever queued in
//!   front of a WAL sync;
//! - keeps only as far ahead as it needs: the fill may reach `2 × active + segment / 8` bytes,
//!   where `active` is how far the active segment has been written. It is done when the active
//!   segment is half full, at about twice the rate the log is written, and never idles waiting
//!   for a rotation that is near: past three quarters of the active segment, or when rotation
//!   (or shutdown) asks for the file, it finishes at full speed.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use super::fs::{WalFile, WalFs, io_context};
use super::segment::zero_fill;

/// Bytes written and synced per step.
const CHUNK: u64 = 1 << 20;
/// How long the filler waits before looking at the active segment again when it is as far
/// ahead as it needs to be. [`SpareFill::finish`] wakes it at once.
const IDLE: Duration = Duration::from_millis(50);

/// What the filler reads to pace itself; the I/O task writes it.
#[derive(Debug, Default)]
pub(crate) struct Pace {
    /// Bytes written to the active segment so far (its length).
    active: AtomicU64,
    /// Set when the file is wanted now: fill the rest without pausing.
    hurry: AtomicBool,
}

impl Pace {
    /// Records how far the active segment has been written.
    pub fn set_active(&self, len: u64) {
        self.active.store(len, Ordering::Relaxed);
    }

    /// How many bytes of a `total`-byte spare may be filled now.
    fn allowed(&self, total: u64) -> u64 {
        let active = self.active.load(Ordering::Relaxed);
        if self.hurry.load(Ordering::Acquire) || active >= total / 4 * 3 {
            return total;
        }
        active
            .saturating_mul(2)
            .saturating_add(total / 8)
            .min(total)
    }
}

/// A spare being filled on its own thread.
pub(crate) struct SpareFill {
    handle: JoinHandle<io::Result<Box<dyn WalFile>>>,
    pace: Arc<Pace>,
}

impl SpareFill {
    /// Starts filling `path` (a `.tmp` name, so recovery removes a leftover one) with `bytes`
    /// zeros, paced by `pace`.
    pub fn start(
        fs: Arc<dyn WalFs>,
        path: PathBuf,
        bytes: u64,
        pace: Arc<Pace>,
    ) -> io::Result<SpareFill> {
        pace.hurry.store(false, Ordering::Relaxed);
        let p = pace.clone();
        let handle = std::thread::Builder::new()
            .name("raftgraph-wal-spare".into())
            .spawn(move || {
                lower_priority();
                // Waits on the OS clock: spares exist only under `IoRuntime::Thread`; the
                // simulation runs without them (`Wal::open`).
                fill(fs.as_ref(), &path, bytes, &p, &mut || {
                    std::thread::park_timeout(IDLE)
                })
            })?;
        Ok(SpareFill { handle, pace })
    }

    /// The filled, synced file: finishes the fill at full speed if it is not done.
    pub fn finish(self) -> io::Result<Box<dyn WalFile>> {
        self.pace.hurry.store(true, Ordering::Release);
        self.handle.thread().unpark();
        self.handle
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the spare segment thread panicked")))
    }
}

/// Writes `bytes` zeros into a new file at `path`, one synced [`CHUNK`] at a time, no further
/// ahead than `pace` allows; `idle` waits a while when it is that far ahead.
fn fill(
    fs: &dyn WalFs,
    path: &Path,
    bytes: u64,
    pace: &Pace,
    idle: &mut dyn FnMut(),
) -> io::Result<Box<dyn WalFile>> {
    let mut file = fs.create(path).map_err(|e| io_context(e, "create", path))?;
    let mut at = 0;
    while at < bytes {
        if at >= pace.allowed(bytes) {
            idle();
            continue;
        }
        let end = bytes.min(at + CHUNK);
        zero_fill(file.as_mut(), at, end, path)?;
        file.sync_data().map_err(|e| io_context(e, "sync", path))?;
        at = end;
    }
    Ok(file)
}

/// Moves the calling thread to nice 19 (Linux sets niceness per thread). Best effort: on
/// failure the fill runs at normal priority.
fn lower_priority() {
    // SAFETY: gettid and setpriority take no pointers and only change this thread's priority.
    let r = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19)
    };
    if r != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "could not lower the WAL spare thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::{MemFs, StdFs};

    #[test]
    fn the_fill_keeps_ahead_of_the_active_segment_and_finishes_when_asked() {
        let total = 64 << 20;
        let pace = Pace::default();
        pace.set_active(24);
        assert_eq!(pace.allowed(total), 24 * 2 + total / 8);
        pace.set_active(total / 4);
        assert_eq!(pace.allowed(total), total / 2 + total / 8);
        pace.set_active(total / 4 * 3);
        assert_eq!(pace.allowed(total), total, "near rotation: everything");
        pace.set_active(total * 2);
        assert_eq!(pace.allowed(total), total, "never past the spare's size");
        pace.set_active(0);
        pace.hurry.store(true, Ordering::Relaxed);
        assert_eq!(
            pace.allowed(total),
            total,
            "rotation is waiting: everything"
        );
    }

    #[test]
    fn the_fill_waits_for_the_active_segment_and_leaves_nothing_unsynced() {
        let fs = MemFs::new();
        let dir = Path::new("/wal");
        fs.create_dir_all(dir).unwrap();
        let path = dir.join("spare.wal.tmp");
        let bytes = 16 * CHUNK;
        let pace = Pace::default();
        let mut synced_at_waits = Vec::new();
        let file = fill(&fs, &path, bytes, &pace, &mut || {
            // Each wait releases the fill by one more chunk of progress in the active segment.
            synced_at_waits.push(fs.sync_count());
            pace.set_active(pace.active.load(Ordering::Relaxed) + CHUNK / 2);
        })
        .unwrap();
        // With the active segment empty, only `bytes / 8` (two chunks) may be filled; then each
        // half chunk written to the active segment allows one more, until three quarters of
        // a segment's length has been written there and the rest follows at once.
        assert_eq!(synced_at_waits[0], 2, "waits: {synced_at_waits:?}");
        assert!(
            synced_at_waits.windows(2).all(|w| w[1] == w[0] + 1),
            "{synced_at_waits:?}"
        );
        assert_eq!(fs.sync_count(), 16, "one sync per chunk");
        assert!(fs.pending_writes().is_empty(), "every chunk synced");
        assert_eq!(file.len().unwrap(), bytes);
        let data = fs.read_file(&path).unwrap();
        assert_eq!(data.len() as u64, bytes);
        assert!(data.iter().all(|b| *b == 0));
    }

    #[test]
    fn finishing_a_spare_fills_the_rest_without_waiting_for_the_active_segment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spare.wal.tmp");
        let pace = Arc::new(Pace::default());
        let bytes = 3 * CHUNK + 100;
        // The active segment stays empty: without `finish` the fill would stop at `bytes / 8`.
        let spare = SpareFill::start(Arc::new(StdFs), path.clone(), bytes, pace).unwrap();
        let file = spare.finish().unwrap();
        assert_eq!(file.len().unwrap(), bytes);
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len() as u64, bytes);
        assert!(data.iter().all(|b| *b == 0));
    }
}
