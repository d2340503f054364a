//! Admission control: a server holds at most `limit` proposals in flight (writes and admin
//! commands from the moment they are admitted until their answer is sent, including calls it
//! forwards to the leader). Past the limit a call is refused at once with UNAVAILABLE and a
//! retry hint (`grpc-retry-pushback-ms`), so overload costs the client a retry instead of the
//! server unbounded memory. Nothing refused here reached the log: a retry is always safe.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::wire::RETRY_PUSHBACK_HEADER;

/// How long a refused client is asked to wait before retrying.
pub const RETRY_PUSHBACK_MS: u64 = 50;

/// The in-flight proposal budget of one server, shared by every service that proposes.
#[derive(Clone, Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: usize,
}

impl Admission {
    /// A budget of `limit` proposals in flight (at least 1).
    pub fn new(limit: usize) -> Self {
        let limit = limit.max(1);
        Admission {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }

    /// A permit for one proposal, held until the answer is sent; UNAVAILABLE when the server is
    /// at its limit.
    pub fn admit(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.permits.clone().try_acquire_owned().map_err(|_| {
            let mut s = Status::unavailable(format!(
                "node overloaded: {} proposals in flight (limit proposals_in_flight_max = {}); \
                 nothing was applied, retry after {RETRY_PUSHBACK_MS} ms",
                self.limit, self.limit
            ));
            s.metadata_mut().insert(
                RETRY_PUSHBACK_HEADER,
                RETRY_PUSHBACK_MS.to_string().parse().expect("ASCII digits"),
            );
            s
        })
    }

    /// Proposals in flight now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.permits.available_permits()
    }
}

impl Default for Admission {
    /// 4,096 proposals: at the 15 MiB proposal limit that bounds buffered requests, but in
    /// practice entries are small and the bound is what keeps a flood from queueing forever.
    fn default() -> Self {
        Admission::new(4096)
    }
}
