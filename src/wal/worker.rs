//! The I/O task: applies queued operations to the [`Disk`] in submission order, with group commit.
//!
//! It waits for one operation, then drains whatever else is already queued. Appends and committed
//! ids accumulate into one group, written and synced with a single `fdatasync` when the queue is
//! empty, when the group reaches `batch_bytes_max`, or before any operation that must see them on
//! disk first (vote, truncate, purge, sync barrier). Flush callbacks fire only after that sync, in
//! log order. Any failure stops the task's writing for good: the error is recorded in the shared
//! state, pending callbacks get it, and so does every later operation.

use std::io;
use std::sync::Arc;

use openraft::RaftTypeConfig;
use openraft::storage::IOFlushed;
use openraft::type_config::alias::{LogIdOf, VoteOf};
use tokio::sync::{mpsc, oneshot};

use super::disk::{Disk, EncodedEntry};
use super::error::WalError;
use super::shared::Shared;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, io::Error>>;

pub(crate) enum Op<C: RaftTypeConfig> {
    Append {
        entries: Vec<EncodedEntry>,
        seq: u64,
        callback: IOFlushed<C>,
    },
    Committed(Option<LogIdOf<C>>),
    Vote(VoteOf<C>, Reply<()>),
    Truncate(Option<u64>),
    Purge(LogIdOf<C>),
    Read {
        start: u64,
        end: u64,
        reply: Reply<Vec<C::Entry>>,
    },
    Sync(Reply<()>),
}

struct Group<C: RaftTypeConfig> {
    entries: Vec<EncodedEntry>,
    bytes: u64,
    committed: Option<Option<LogIdOf<C>>>,
    last_seq: u64,
    callbacks: Vec<IOFlushed<C>>,
    barriers: Vec<Reply<()>>,
}

impl<C: RaftTypeConfig> Default for Group<C> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            bytes: 0,
            committed: None,
            last_seq: 0,
            callbacks: Vec::new(),
            barriers: Vec::new(),
        }
    }
}

pub(crate) struct Worker<C: RaftTypeConfig> {
    disk: Disk<C>,
    shared: Arc<Shared<C>>,
    group: Group<C>,
    batch_bytes_max: u64,
    fatal: Option<String>,
}

impl<C: RaftTypeConfig> Worker<C>
where
    C::Entry: Clone,
{
    pub fn new(disk: Disk<C>, shared: Arc<Shared<C>>, batch_bytes_max: u64) -> Self {
        Self {
            disk,
            shared,
            group: Group::default(),
            batch_bytes_max,
            fatal: None,
        }
    }

    /// Runs until every sender is gone.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op<C>>) {
        while let Some(op) = rx.recv().await {
            self.handle(op);
            while let Ok(op) = rx.try_recv() {
                self.handle(op);
                if self.group.bytes >= self.batch_bytes_max {
                    self.flush();
                }
            }
            self.flush();
        }
        self.flush_all();
    }

    fn stopped(&self) -> io::Error {
        let why = self.fatal.clone().unwrap_or_default();
        WalError::Stopped(why).into()
    }

    fn handle(&mut self, op: Op<C>) {
        if self.fatal.is_some() {
            return self.refuse(op);
        }
        match op {
            Op::Append {
                entries,
                seq,
                callback,
            } => {
                self.group.bytes += entries.iter().map(|e| e.bytes.len() as u64).sum::<u64>();
                self.group.entries.extend(entries);
                self.group.last_seq = seq;
                self.group.callbacks.push(callback);
            }
            Op::Committed(c) => self.group.committed = Some(c),
            Op::Sync(reply) => self.group.barriers.push(reply),
            Op::Vote(vote, reply) => {
                self.flush_all();
                let r = self.guard(|d| d.save_vote(vote));
                let _ = reply.send(r);
            }
            Op::Truncate(last_kept) => {
                self.flush_all();
                let _ = self.guard(|d| d.truncate_after(last_kept));
            }
            Op::Purge(upto) => {
                self.flush_all();
                let _ = self.guard(|d| d.purge(upto));
            }
            Op::Read { start, end, reply } => {
                // Reads target entries already durable (the cache holds the rest): no flush needed.
                let r = self.disk.read(start, end).map_err(io::Error::from);
                let _ = reply.send(r);
            }
        }
    }

    /// Runs a disk operation; a failure makes the WAL stop.
    fn guard<T>(
        &mut self,
        f: impl FnOnce(&mut Disk<C>) -> Result<T, WalError>,
    ) -> Result<T, io::Error> {
        if self.fatal.is_some() {
            return Err(self.stopped());
        }
        f(&mut self.disk).map_err(|e| self.fail(e))
    }

    fn fail(&mut self, e: WalError) -> io::Error {
        let msg = e.to_string();
        tracing::error!(error = %msg, "WAL write failed; the WAL stops accepting writes");
        self.fatal = Some(msg.clone());
        self.shared.lock().fatal = Some(msg);
        e.into()
    }

    fn refuse(&mut self, op: Op<C>) {
        let err = self.stopped();
        match op {
            Op::Append { callback, .. } => callback.io_completed(Err(err)),
            Op::Vote(_, reply) | Op::Sync(reply) => {
                let _ = reply.send(Err(err));
            }
            Op::Read { reply, .. } => {
                let _ = reply.send(Err(err));
            }
            Op::Committed(_) | Op::Truncate(_) | Op::Purge(_) => {}
        }
    }

    /// Writes and syncs the pending group, then acknowledges it in order — unless all it
    /// holds is a committed id: that rides with the next group instead of costing an
    /// fdatasync of its own (one per write, on every member, otherwise). A committed id is a
    /// hint for recovery: a stored one that lags only means less is re-applied from the log
    /// before the member rejoins, never that anything is lost. That holds because a restarted
    /// leader does not restore its leadership (`enable_leader_restore` is off in
    /// `ServerConfig::raft_config`): a leader must win a new term, whose first entry every read
    /// index then covers, instead of serving reads at the lagging id it read back.
    fn flush(&mut self) {
        if self.group.entries.is_empty() && self.group.barriers.is_empty() {
            return;
        }
        self.flush_all();
    }

    /// Writes and syncs the pending group, a lone committed id included.
    fn flush_all(&mut self) {
        let group = std::mem::take(&mut self.group);
        if group.entries.is_empty() && group.committed.is_none() && group.barriers.is_empty() {
            return;
        }
        let result = if group.entries.is_empty() && group.committed.is_none() {
            Ok(())
        } else {
            let Group {
                entries, committed, ..
            } = &group;
            self.guard(|d| d.write_group(entries, committed.clone()))
        };
        match result {
            Ok(()) => {
                if !group.entries.is_empty() || group.committed.is_some() {
                    self.shared.stats.group_committed(group.entries.len());
                }
                if group.last_seq > 0 {
                    self.shared.lock().flushed(group.last_seq);
                }
                for cb in group.callbacks {
                    cb.io_completed(Ok(()));
                }
                for b in group.barriers {
                    let _ = b.send(Ok(()));
                }
            }
            Err(_) => {
                for cb in group.callbacks {
                    cb.io_completed(Err(self.stopped()));
                }
                for b in group.barriers {
                    let _ = b.send(Err(self.stopped()));
                }
            }
        }
    }
}
