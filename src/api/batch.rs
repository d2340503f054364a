//! Write batching on the leader: client writes that arrive together become one Raft entry (one
//! openraft entry, one WAL record, one replication slot, one state-machine batch), each keeping
//! its own session, preconditions, quota check and response.
//!
//! At most [`IN_FLIGHT`] batches are proposed at once. While they are, arriving writes queue,
//! and the next batch takes everything queued (up to [`BATCH_REQUESTS_MAX`] requests and
//! [`BATCH_BYTES_MAX`] encoded bytes): a lone client pays no wait, a busy leader makes large
//! entries. A write that deletes nodes (its cascade has no small bound) goes in an entry of
//! its own, as do tenant and limit commands, which do not come through here.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::Status;

use super::route::{self, Proposed};
use crate::command::{Command, Op, Proposal, Request};
use crate::state_machine::Raft;
use crate::wire::{BATCH_BYTES_MAX, BATCH_REQUESTS_MAX};

/// Batches proposed at once. Two keep the log busy (one being replicated and synced while the
/// next fills) without splitting a burst into many small entries.
pub const IN_FLIGHT: usize = 2;

/// Counters of the batcher's entries that were applied (on a follower, whose proposals are
/// refused and forwarded, they stay at zero).
#[derive(Debug, Default)]
pub struct BatchStats {
    /// Entries proposed here and applied.
    pub entries: AtomicU64,
    /// Client writes in them.
    pub requests: AtomicU64,
}

struct Pending {
    req: Request,
    bytes: usize,
    alone: bool,
    was_forwarded: bool,
    reply: oneshot::Sender<Result<Proposed, Status>>,
}

/// Whether the request came forwarded from a follower, and where its answer goes.
type Waiter = (bool, oneshot::Sender<Result<Proposed, Status>>);

impl Pending {
    fn split_into(self, requests: &mut Vec<Request>, waiters: &mut Vec<Waiter>) {
        requests.push(self.req);
        waiters.push((self.was_forwarded, self.reply));
    }
}

/// The handle services propose writes through (cheap to clone).
#[derive(Clone, Debug)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Pending>,
    stats: Arc<BatchStats>,
}

impl Batcher {
    /// Starts the batching task of `raft` on the current runtime; it ends when every handle
    /// is dropped.
    pub fn spawn(raft: Raft) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(BatchStats::default());
        tokio::spawn(run(raft, rx, stats.clone()));
        Batcher { tx, stats }
    }

    pub fn stats(&self) -> &Arc<BatchStats> {
        &self.stats
    }

    /// Proposes `req` (a client write) in the next batch and waits until it is applied. The
    /// queue is bounded by the server's admission control, which every caller passes first.
    ///
    /// The request is queued at the call; the future only holds the answer's receiver, so a
    /// write's task stays small to create and move.
    pub fn propose(
        &self,
        req: Request,
        was_forwarded: bool,
    ) -> impl Future<Output = Result<Proposed, Status>> + use<> {
        let queued = self.queue(req, was_forwarded);
        async move {
            queued?.await.unwrap_or_else(|_| {
                Err(Status::unavailable(
                    "outcome unknown (the node stopped proposing); retry with the same request id",
                ))
            })
        }
    }

    /// Queues `req` for the next batch: the receiver of its answer.
    fn queue(
        &self,
        req: Request,
        was_forwarded: bool,
    ) -> Result<oneshot::Receiver<Result<Proposed, Status>>, Status> {
        let bytes = route::check_size(&req)?;
        let alone = match &req.command {
            Command::Write(w) => w
                .operations
                .iter()
                .any(|op| matches!(op, Op::DeleteNode { .. })),
            _ => true,
        };
        let (reply, answer) = oneshot::channel();
        let pending = Pending {
            req,
            bytes,
            alone,
            was_forwarded,
            reply,
        };
        if self.tx.send(pending).is_err() {
            return Err(Status::unavailable("the node is shutting down; retry"));
        }
        Ok(answer)
    }
}

async fn run(raft: Raft, mut rx: mpsc::UnboundedReceiver<Pending>, stats: Arc<BatchStats>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carry: Option<Pending> = None;
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let first = match carry.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Requests and their waiters go straight into the vectors the proposal and the
        // answers use: a request is a few hundred bytes, and every extra move of a batch
        // (growing one vector, splitting it into two) showed as memcpy in the leader's profile.
        let alone = first.alone;
        let mut bytes = first.bytes;
        let room = if alone {
            1
        } else {
            (rx.len() + 1).min(BATCH_REQUESTS_MAX)
        };
        let mut requests = Vec::with_capacity(room);
        let mut waiters = Vec::with_capacity(room);
        first.split_into(&mut requests, &mut waiters);
        while !alone && requests.len() < BATCH_REQUESTS_MAX {
            match rx.try_recv() {
                Ok(p) if !p.alone && bytes + p.bytes <= BATCH_BYTES_MAX => {
                    bytes += p.bytes;
                    p.split_into(&mut requests, &mut waiters);
                }
                Ok(p) => {
                    carry = Some(p);
                    break;
                }
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        let stats = stats.clone();
        tokio::spawn(async move {
            let _slot = slot;
            answer(&raft, requests, waiters, &stats).await;
        });
    }
}

/// Proposes one batch and hands each request its own answer; counts it if it was applied.
async fn answer(raft: &Raft, requests: Vec<Request>, waiters: Vec<Waiter>, stats: &BatchStats) {
    let n = requests.len();
    match route::propose_all(
        raft,
        Proposal {
            requests: requests.into(),
        },
    )
    .await
    {
        Ok(Ok(responses)) if responses.len() == n => {
            stats.entries.fetch_add(1, Ordering::Relaxed);
            stats.requests.fetch_add(n as u64, Ordering::Relaxed);
            for ((_, reply), r) in waiters.into_iter().zip(responses) {
                // A caller that went away (deadline) no longer needs its answer.
                let _ = reply.send(Ok(Proposed::Applied(r.outcome)));
            }
        }
        Ok(Ok(responses)) => {
            let msg = format!("{} responses to {n} requests", responses.len());
            for (_, reply) in waiters {
                let _ = reply.send(Err(Status::internal(msg.clone())));
            }
        }
        Ok(Err(forward)) => {
            for (was_forwarded, reply) in waiters {
                let _ =
                    reply.send(route::leader_of(&forward, was_forwarded).map(Proposed::Forward));
            }
        }
        Err(status) => {
            for (_, reply) in waiters {
                let _ = reply.send(Err(status.clone()));
            }
        }
    }
}
