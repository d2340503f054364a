//! Helpers shared by the WAL tests: a type config, entry builders, acknowledged appends, reads.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use openraft::type_config::alias::{EntryOf, LogIdOf};
use openraft::vote::RaftLeaderIdExt;
use openraft::{EntryPayload, RaftLogReader};
use raftgraph::wal::{IoRuntime, MemFs, Wal, WalConfig, WalError};

openraft::declare_raft_types!(pub TC);

pub type Entry = EntryOf<TC>;

pub const DIR: &str = "/wal";

pub fn log_id(term: u64, index: u64) -> LogIdOf<TC> {
    LogIdOf::<TC>::new(
        openraft::type_config::alias::LeaderIdOf::<TC>::new_committed(term, 0),
        index,
    )
}

/// An entry whose payload names its index and term, padded to vary sizes.
pub fn ent(term: u64, index: u64) -> Entry {
    let pad = "p".repeat((index as usize * 7) % 40);
    Entry::new_normal(log_id(term, index), format!("t{term}-i{index}-{pad}"))
}

/// (index, term, payload) — what a test compares.
pub fn key(e: &Entry) -> (u64, u64, String) {
    let id = e.log_id();
    let payload = match &e.payload {
        EntryPayload::Normal(s) => s.clone(),
        other => format!("{other:?}"),
    };
    (id.index(), id.committed_leader_id().term, payload)
}

/// A config without preallocation: file lengths then equal the bytes written, which the tests
/// that compute offsets from file lengths rely on. `cfg_prealloc` turns it on.
pub fn cfg(segment_bytes: u64) -> WalConfig {
    let mut c = WalConfig::new(DIR);
    c.segment_bytes = segment_bytes;
    c.preallocate = false;
    c
}

pub fn cfg_prealloc(segment_bytes: u64, preallocate: bool) -> WalConfig {
    let mut c = cfg(segment_bytes);
    c.preallocate = preallocate;
    c
}

pub async fn open(fs: &MemFs, c: &WalConfig) -> Result<Wal<TC>, WalError> {
    Wal::open(c.clone(), Arc::new(fs.clone()), IoRuntime::Inline).await
}

/// Appends and waits for the flush callback.
pub async fn append_acked(wal: &mut Wal<TC>, entries: Vec<Entry>) -> io::Result<()> {
    let (tx, rx) = TC::oneshot();
    wal.append(entries, IOFlushed::signal(tx)).await?;
    rx.await.map_err(|_| io::Error::other("callback dropped"))?
}

/// Everything readable, as keys.
pub async fn read_all(wal: &mut Wal<TC>) -> Vec<(u64, u64, String)> {
    let mut r = wal.get_log_reader().await;
    r.try_get_log_entries(0..u64::MAX)
        .await
        .unwrap()
        .iter()
        .map(key)
        .collect()
}

pub fn segment_paths(fs: &MemFs) -> Vec<PathBuf> {
    fs.paths()
        .into_iter()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(raftgraph::wal::layout::parse_segment_file_name)
                .is_some()
        })
        .collect()
}

/// Asserts `got` is `written[..k]` for some `k >= acked`: a prefix containing every acknowledged
/// entry, nothing invented, nothing skipped.
pub fn assert_prefix(
    got: &[(u64, u64, String)],
    written: &[(u64, u64, String)],
    acked: usize,
    ctx: &str,
) {
    assert!(
        got.len() <= written.len(),
        "{ctx}: recovered {} entries, only {} written",
        got.len(),
        written.len()
    );
    assert_eq!(
        got,
        &written[..got.len()],
        "{ctx}: recovered log is not a prefix of what was written"
    );
    assert!(
        got.len() >= acked,
        "{ctx}: lost acknowledged entries: recovered {}, acknowledged {acked}",
        got.len()
    );
}

pub async fn read_vote(wal: &mut Wal<TC>) -> Option<openraft::type_config::alias::VoteOf<TC>> {
    wal.get_log_reader().await.read_vote().await.unwrap()
}

/// A separate file system holding durable copies of every file of `fs`.
pub fn copy_of(fs: &MemFs) -> MemFs {
    let copy = MemFs::new();
    for p in fs.paths() {
        copy.write_file_durable(&p, fs.read_file(&p).unwrap());
    }
    copy
}
