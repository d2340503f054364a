//! [`Wal`]: openraft's `RaftLogStorage` and `RaftLogReader` on top of the WAL files.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::type_config::alias::{LogIdOf, VoteOf};
use openraft::{OptionalSend, RaftLogReader, RaftTypeConfig};
use tokio::sync::{mpsc, oneshot};

use super::config::WalConfig;
use super::disk::{Disk, EncodedEntry};
use super::error::WalError;
use super::fs::WalFs;
use super::runtime::IoRuntime;
use super::shared::Shared;
use super::worker::{Op, Worker};
use crate::codec;
use crate::wire::REPLICATION_BATCH_BYTES_MAX;

struct Inner<C: RaftTypeConfig> {
    shared: Arc<Shared<C>>,
    tx: mpsc::UnboundedSender<Op<C>>,
    record_bytes_max: u32,
}

/// The Raft log storage. Cheap to clone; all clones share one log. The I/O task ends when the
/// last handle (including readers) is dropped.
pub struct Wal<C: RaftTypeConfig> {
    inner: Arc<Inner<C>>,
}

impl<C: RaftTypeConfig> Clone for Wal<C> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

/// A reader of the log, for replication tasks.
pub struct WalReader<C: RaftTypeConfig> {
    inner: Arc<Inner<C>>,
}

fn stopped(why: &str) -> io::Error {
    WalError::Stopped(why.to_string()).into()
}

impl<C: RaftTypeConfig> Inner<C>
where
    C::Entry: Clone,
{
    fn send(&self, op: Op<C>) -> io::Result<()> {
        self.tx
            .send(op)
            .map_err(|_| stopped("the WAL I/O task has exited"))
    }

    fn check(&self) -> io::Result<()> {
        match &self.shared.lock().fatal {
            Some(why) => Err(stopped(why)),
            None => Ok(()),
        }
    }

    async fn call<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<io::Result<T>>) -> Op<C>,
    ) -> io::Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(op(tx))?;
        rx.await
            .map_err(|_| stopped("the WAL I/O task has exited"))?
    }

    async fn read(&self, start: u64, end: u64) -> io::Result<Vec<C::Entry>> {
        self.check()?;
        let (disk, cached) = self.shared.lock().read(start, end);
        if disk.is_empty() {
            return Ok(cached);
        }
        let mut entries = self
            .call(|reply| Op::Read {
                start: disk.start,
                end: disk.end,
                reply,
            })
            .await?;
        // A purge or truncation may have raced the read: return only a contiguous run.
        if entries.len() as u64 == disk.end - disk.start {
            entries.extend(cached);
        }
        Ok(entries)
    }
}

impl<C: RaftTypeConfig> Wal<C>
where
    C::Entry: Clone,
{
    /// Opens (recovering if needed) the WAL in `cfg.dir`. Recovery runs on the I/O task.
    pub async fn open(cfg: WalConfig, fs: Arc<dyn WalFs>, io: IoRuntime) -> Result<Self, WalError> {
        cfg.validate()?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let record_bytes_max = cfg.record_bytes_max;
        let mut task_cfg = cfg.clone();
        task_cfg.spare_segment &= matches!(io, IoRuntime::Thread);
        io.spawn("raftgraph-wal", async move {
            let batch_bytes_max = task_cfg.batch_bytes_max;
            let cache_bytes_max = task_cfg.cache_bytes_max;
            match Disk::<C>::recover(fs, task_cfg) {
                Ok((disk, r)) => {
                    let shared = Arc::new(Shared::new(
                        r.vote,
                        r.committed,
                        r.purged,
                        r.last,
                        r.first,
                        cache_bytes_max,
                    ));
                    if ready_tx.send(Ok(shared.clone())).is_ok() {
                        Worker::new(disk, shared, batch_bytes_max).run(rx).await;
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })?;
        let shared = ready_rx
            .await
            .map_err(|_| WalError::Stopped("the WAL I/O task exited during recovery".into()))??;
        Ok(Self {
            inner: Arc::new(Inner {
                shared,
                tx,
                record_bytes_max,
            }),
        })
    }

    /// Waits until everything submitted so far is durable.
    pub async fn sync(&self) -> io::Result<()> {
        self.inner.check()?;
        self.inner.call(Op::Sync).await
    }

    /// Counters of the I/O task (group commits, entries made durable).
    pub fn stats(&self) -> super::WalStats {
        self.inner.shared.stats.clone()
    }

    /// The first fatal error, if the WAL has stopped.
    pub fn fatal_error(&self) -> Option<String> {
        self.inner.shared.lock().fatal.clone()
    }

    fn encode(&self, entry: &C::Entry) -> Result<EncodedEntry, WalError> {
        let index = entry.log_id_parts().1;
        let bytes = codec::encode(entry).map_err(|e| WalError::Encode {
            index,
            reason: e.to_string(),
        })?;
        let limit = self.inner.record_bytes_max;
        if bytes.len() > limit as usize {
            return Err(WalError::RecordTooLarge {
                index,
                bytes: bytes.len(),
                limit,
            });
        }
        Ok(EncodedEntry { index, bytes })
    }
}

fn range_to_start_end<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => e.saturating_add(1),
        Bound::Excluded(&e) => e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl<C: RaftTypeConfig> RaftLogReader<C> for WalReader<C>
where
    C::Entry: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let (start, end) = range_to_start_end(&range);
        self.inner.read(start, end).await
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(self.inner.shared.lock().vote.clone())
    }

    /// What replication reads: a prefix of `start..end` whose encoded entries add up to at most
    /// [`REPLICATION_BATCH_BYTES_MAX`] (always at least one entry), so one append message stays
    /// far below the gRPC and codec limits whatever `max_payload_entries` allows.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let mut entries = self.inner.read(start, end).await?;
        let mut total = 0usize;
        let mut keep = 0usize;
        for e in &entries {
            let bytes = codec::encoded_len(e).map_err(io::Error::other)?;
            if keep > 0 && total + bytes > REPLICATION_BATCH_BYTES_MAX {
                break;
            }
            total += bytes;
            keep += 1;
        }
        entries.truncate(keep);
        Ok(entries)
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for Wal<C>
where
    C::Entry: Clone,
{
    type LogReader = WalReader<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        self.inner.check()?;
        let s = self.inner.shared.lock();
        Ok(LogState {
            last_purged_log_id: s.purged.clone(),
            last_log_id: s.last.clone(),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        WalReader {
            inner: self.inner.clone(),
        }
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        self.inner.check()?;
        let v = vote.clone();
        self.inner.call(|reply| Op::Vote(v, reply)).await?;
        self.inner.shared.lock().vote = Some(vote.clone());
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        self.inner.check()?;
        let committed = {
            let mut s = self.inner.shared.lock();
            // The stored committed id never runs past the log's submitted tail; since records are
            // written in order, it then never runs past the durable tail either.
            let clamped = match (&committed, &s.last) {
                (Some(c), Some(last)) if c.index() > last.index() => Some(last.clone()),
                (Some(_), None) => None,
                _ => committed,
            };
            s.committed = clamped.clone();
            clamped
        };
        self.inner.send(Op::Committed(committed))
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.inner.shared.lock().committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        self.inner.check()?;
        let entries: Vec<C::Entry> = entries.into_iter().collect();
        let mut encoded = Vec::with_capacity(entries.len());
        for e in &entries {
            encoded.push(self.encode(e)?);
        }
        let seq = {
            let mut s = self.inner.shared.lock();
            let mut expected = s.next_index();
            for e in &encoded {
                if let Some(exp) = expected.filter(|x| *x != e.index) {
                    return Err(WalError::OutOfOrder {
                        got: e.index,
                        expected: exp,
                    }
                    .into());
                }
                expected = Some(e.index + 1);
            }
            let seq = s.begin_append();
            for (entry, enc) in entries.into_iter().zip(&encoded) {
                let (leader, index) = entry.log_id_parts();
                let log_id = LogIdOf::<C>::new(leader.clone(), index);
                s.push(entry, log_id, enc.bytes.len() as u64, seq);
            }
            seq
        };
        self.inner.send(Op::Append {
            entries: encoded,
            seq,
            callback,
        })
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        self.inner.check()?;
        {
            let mut s = self.inner.shared.lock();
            let at_or_past_end = match (&last_log_id, &s.last) {
                (Some(k), Some(last)) => k.index() >= last.index(),
                (_, None) => true,
                (None, Some(_)) => false,
            };
            if at_or_past_end {
                return Ok(());
            }
            s.truncate(last_log_id.clone());
        }
        self.inner
            .send(Op::Truncate(last_log_id.map(|id| id.index())))
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        self.inner.check()?;
        self.inner.shared.lock().purge(log_id.clone());
        self.inner.send(Op::Purge(log_id))
    }
}
