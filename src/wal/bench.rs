//! `raftgraph wal-bench`: group-commit throughput of the WAL, driven as openraft drives it.
//!
//! openraft calls `append` with one batch at a time and moves on before the flush callback fires,
//! keeping several flushes in flight. The bench appends one entry of `value_bytes` per call and
//! lets up to `pending` callbacks be outstanding (waiting on the oldest when the window is full),
//! on real files with `fdatasync`. Beside it, in the same run and directory, it measures a plain
//! "write one record, fdatasync" loop: the one-fsync-per-entry baseline.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::type_config::alias::{EntryOf, LeaderIdOf, LogIdOf};
use openraft::vote::RaftLeaderIdExt;
use tokio::time::Instant;

use super::{IoRuntime, StdFs, Wal, WalConfig, WalFile, WalFs};

openraft::declare_raft_types!(
    /// Type configuration used by the WAL benchmark (string payloads).
    pub BenchConfig
);

type Entry = EntryOf<BenchConfig>;

/// One measured configuration.
#[derive(Debug, Clone)]
pub struct BenchRow {
    /// What was measured.
    pub mode: String,
    /// Flush callbacks allowed in flight (0 for the raw fsync loop).
    pub pending: usize,
    pub entries: u64,
    pub seconds: f64,
    pub fsyncs: u64,
}

impl BenchRow {
    pub fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.seconds
    }
    pub fn entries_per_fsync(&self) -> f64 {
        self.entries as f64 / self.fsyncs.max(1) as f64
    }
}

/// Counts `sync_data` calls on the files it opens.
struct CountingFs {
    inner: StdFs,
    syncs: Arc<AtomicU64>,
}

struct CountingFile {
    inner: Box<dyn WalFile>,
    syncs: Arc<AtomicU64>,
}

impl WalFile for CountingFile {
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.inner.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.inner.write_all_at(buf, offset)
    }
    fn sync_data(&mut self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_data()
    }
    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.inner.set_len(len)
    }
}

impl WalFs for CountingFs {
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.inner.create_dir_all(dir)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.inner.list(dir)
    }
    fn open(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        Ok(Box::new(CountingFile {
            inner: self.inner.open(path)?,
            syncs: self.syncs.clone(),
        }))
    }
    fn create(&self, path: &Path) -> io::Result<Box<dyn WalFile>> {
        Ok(Box::new(CountingFile {
            inner: self.inner.create(path)?,
            syncs: self.syncs.clone(),
        }))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.inner.rename(from, to)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.inner.sync_dir(dir)
    }
}

fn entry(index: u64, value: &str) -> Entry {
    let leader = LeaderIdOf::<BenchConfig>::new_committed(1, 0);
    Entry::new_normal(
        LogIdOf::<BenchConfig>::new(leader, index),
        value.to_string(),
    )
}

/// Appends `entries` entries with up to `pending` flushes in flight, in a fresh WAL in `dir`.
pub async fn run_wal(
    dir: &Path,
    entries: u64,
    pending: usize,
    value_bytes: usize,
) -> anyhow::Result<BenchRow> {
    let syncs = Arc::new(AtomicU64::new(0));
    let fs = Arc::new(CountingFs {
        inner: StdFs,
        syncs: syncs.clone(),
    });
    let mut wal = Wal::<BenchConfig>::open(WalConfig::new(dir), fs, IoRuntime::Thread).await?;
    let value = "x".repeat(value_bytes);
    let before = syncs.load(Ordering::Relaxed);
    let start = Instant::now();
    let mut window = VecDeque::with_capacity(pending);
    for index in 0..entries {
        if window.len() >= pending.max(1) {
            let rx: tokio::sync::oneshot::Receiver<io::Result<()>> =
                window.pop_front().expect("window is full");
            rx.await??;
        }
        let (tx, rx) = BenchConfig::oneshot();
        wal.append([entry(index, &value)], IOFlushed::signal(tx))
            .await?;
        window.push_back(rx);
    }
    for rx in window {
        rx.await??;
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(BenchRow {
        mode: "wal append".into(),
        pending,
        entries,
        seconds,
        fsyncs: syncs.load(Ordering::Relaxed) - before,
    })
}

/// The baseline: one record-sized write and one `fdatasync` per entry, on a plain file.
pub fn run_fsync_per_entry(
    dir: &Path,
    entries: u64,
    value_bytes: usize,
) -> anyhow::Result<BenchRow> {
    let path = dir.join("fsync-per-entry.dat");
    let mut file = StdFs.create(&path)?;
    let record = vec![b'x'; value_bytes + 32];
    let start = Instant::now();
    for i in 0..entries {
        file.write_all_at(&record, i * record.len() as u64)?;
        file.sync_data()?;
    }
    let seconds = start.elapsed().as_secs_f64();
    StdFs.remove(&path)?;
    Ok(BenchRow {
        mode: "write+fdatasync".into(),
        pending: 1,
        entries,
        seconds,
        fsyncs: entries,
    })
}

/// Runs the baseline and the WAL at each window size, each in a fresh subdirectory of `dir`.
pub async fn run_all(
    dir: &Path,
    entries: u64,
    pendings: &[usize],
    value_bytes: usize,
) -> anyhow::Result<Vec<BenchRow>> {
    std::fs::create_dir_all(dir)?;
    let baseline_entries = entries.min(5_000);
    let mut rows = vec![run_fsync_per_entry(dir, baseline_entries, value_bytes)?];
    for &pending in pendings {
        let sub: PathBuf = dir.join(format!("wal-pending-{pending}"));
        if sub.exists() {
            std::fs::remove_dir_all(&sub)?;
        }
        let n = if pending <= 1 {
            baseline_entries
        } else {
            entries
        };
        rows.push(run_wal(&sub, n, pending, value_bytes).await?);
        std::fs::remove_dir_all(&sub)?;
    }
    Ok(rows)
}

/// Formats rows as a Markdown table, with each row's speed-up over the first (the baseline).
pub fn table(rows: &[BenchRow]) -> String {
    let base = rows.first().map(|r| r.entries_per_sec()).unwrap_or(1.0);
    let mut out = String::from(
        "| mode | pending flushes | entries | seconds | entries/s | fsyncs | entries/fsync | × baseline |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.0} | {} | {:.1} | {:.1} |\n",
            r.mode,
            r.pending,
            r.entries,
            r.seconds,
            r.entries_per_sec(),
            r.fsyncs,
            r.entries_per_fsync(),
            r.entries_per_sec() / base
        ));
    }
    out
}
