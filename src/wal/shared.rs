//! The WAL's in-memory state, shared by the storage handle, its readers and the I/O task.
//!
//! It always reflects every call *submitted* (appends, truncations, purges), whether or not the
//! I/O task has reached it yet, so a reader sees an entry as soon as `append` returns. Entries stay
//! cached here until they are durable; after that they are evicted oldest-first once the cache
//! is over its byte budget, and reads of evicted entries go to the I/O task.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::RaftTypeConfig;
use openraft::type_config::alias::{LogIdOf, VoteOf};

struct Cached<C: RaftTypeConfig> {
    entry: C::Entry,
    bytes: u64,
    /// The append call that submitted it; durable once `flushed_seq` reaches it.
    seq: u64,
}

pub(crate) struct State<C: RaftTypeConfig> {
    pub vote: Option<VoteOf<C>>,
    pub committed: Option<LogIdOf<C>>,
    pub purged: Option<LogIdOf<C>>,
    /// Last entry's id, or the purge point when the log holds no entry past it.
    pub last: Option<LogIdOf<C>>,
    /// Index of the first entry present (meaningful when the log holds any entry).
    log_start: u64,
    /// Entries `cache_first ..= last`, contiguous.
    cache: VecDeque<Cached<C>>,
    cache_first: u64,
    cache_bytes: u64,
    cache_bytes_max: u64,
    flushed_seq: u64,
    next_seq: u64,
    /// Set once the I/O task failed; every later call reports it.
    pub fatal: Option<String>,
}

pub(crate) struct Shared<C: RaftTypeConfig> {
    state: Mutex<State<C>>,
    pub stats: WalStats,
}

/// What the WAL's I/O task has done since the log was opened; cheap to clone, read at any time.
#[derive(Clone, Debug, Default)]
pub struct WalStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    group_commits: AtomicU64,
    entries: AtomicU64,
}

impl WalStats {
    /// Groups written and made durable, each with one `fdatasync` (segment rotation,
    /// truncation and purge sync too, and are not counted here).
    pub fn group_commits(&self) -> u64 {
        self.0.group_commits.load(Ordering::Relaxed)
    }

    /// Entries made durable by those groups.
    pub fn entries(&self) -> u64 {
        self.0.entries.load(Ordering::Relaxed)
    }

    pub(crate) fn group_committed(&self, entries: usize) {
        self.0.group_commits.fetch_add(1, Ordering::Relaxed);
        self.0.entries.fetch_add(entries as u64, Ordering::Relaxed);
    }
}

fn index<C: RaftTypeConfig>(id: &Option<LogIdOf<C>>) -> Option<u64> {
    id.as_ref().map(|id| id.index())
}

impl<C: RaftTypeConfig> Shared<C>
where
    C::Entry: Clone,
{
    pub fn new(
        vote: Option<VoteOf<C>>,
        committed: Option<LogIdOf<C>>,
        purged: Option<LogIdOf<C>>,
        last: Option<LogIdOf<C>>,
        log_start: u64,
        cache_bytes_max: u64,
    ) -> Self {
        let cache_first = index::<C>(&last).map_or(0, |i| i + 1);
        Self {
            state: Mutex::new(State {
                vote,
                committed,
                purged,
                last,
                log_start,
                cache: VecDeque::new(),
                cache_first,
                cache_bytes: 0,
                cache_bytes_max,
                flushed_seq: 0,
                next_seq: 1,
                fatal: None,
            }),
            stats: WalStats::default(),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, State<C>> {
        // Only plain data lives behind this lock and no code panics while holding it mid-update;
        // recover the guard rather than poison every later caller.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<C: RaftTypeConfig> State<C>
where
    C::Entry: Clone,
{
    /// The index the next appended entry must have; `None` for an empty, never-purged log.
    pub fn next_index(&self) -> Option<u64> {
        index::<C>(&self.last).map(|i| i + 1)
    }

    /// Starts a new append call; its entries are tagged with the returned sequence number.
    pub fn begin_append(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    pub fn push(&mut self, entry: C::Entry, log_id: LogIdOf<C>, bytes: u64, seq: u64) {
        if index::<C>(&self.last) == index::<C>(&self.purged) {
            // The log holds no entry: this one starts it.
            self.log_start = log_id.index();
        }
        if self.cache.is_empty() {
            self.cache_first = log_id.index();
        }
        self.cache.push_back(Cached { entry, bytes, seq });
        self.cache_bytes += bytes;
        self.last = Some(log_id);
    }

    /// Drops entries after `last_kept`.
    pub fn truncate(&mut self, last_kept: Option<LogIdOf<C>>) {
        let keep = index::<C>(&last_kept).map_or(0, |i| i + 1);
        while self.cache_first + self.cache.len() as u64 > keep {
            let Some(c) = self.cache.pop_back() else {
                break;
            };
            self.cache_bytes -= c.bytes;
        }
        self.last = last_kept.or_else(|| self.purged.clone());
        if self.cache.is_empty() {
            self.cache_first = self.next_index().unwrap_or(0);
        }
    }

    /// Drops entries up to `upto`.
    pub fn purge(&mut self, upto: LogIdOf<C>) {
        while self.cache_first <= upto.index() {
            let Some(c) = self.cache.pop_front() else {
                break;
            };
            self.cache_bytes -= c.bytes;
            self.cache_first += 1;
        }
        if index::<C>(&self.last) < Some(upto.index()) {
            self.last = Some(upto.clone());
        }
        if self.cache.is_empty() {
            // Entries between the purge point and the old cache start are still on disk.
            self.cache_first = self.cache_first.max(upto.index() + 1);
        }
        self.log_start = self.log_start.max(upto.index() + 1);
        self.purged = Some(upto);
    }

    /// Records that every append up to `seq` is durable, and trims the cache to its budget.
    pub fn flushed(&mut self, seq: u64) {
        self.flushed_seq = self.flushed_seq.max(seq);
        while self.cache_bytes > self.cache_bytes_max {
            match self.cache.front() {
                Some(c) if c.seq <= self.flushed_seq => {
                    self.cache_bytes -= c.bytes;
                    self.cache.pop_front();
                    self.cache_first += 1;
                }
                _ => break,
            }
        }
    }

    /// The readable range `start..end` clipped to the live log, split into the part that must
    /// come from disk (`start..cache_first`) and the cached entries from `cache_first` on.
    pub fn read(&self, start: u64, end: u64) -> (std::ops::Range<u64>, Vec<C::Entry>) {
        let first_live = self
            .log_start
            .max(index::<C>(&self.purged).map_or(0, |p| p + 1));
        let end = end.min(self.next_index().unwrap_or(0));
        let start = start.max(first_live);
        if start >= end {
            return (start..start, Vec::new());
        }
        let disk = start..end.min(self.cache_first).max(start);
        let from = start.max(self.cache_first);
        let cached = (from..end)
            .map(|i| self.cache[(i - self.cache_first) as usize].entry.clone())
            .collect();
        (disk, cached)
    }
}
