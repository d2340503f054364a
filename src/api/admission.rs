//! Admission control: a server holds at most `limit` proposals, and at most `bytes_limit`
//! encoded bytes of them, in flight (writes and admin commands from the moment they are
//! admitted until their answer is sent, including calls it forwards to the leader). Past
//! either limit a call is refused at once with UNAVAILABLE and a retry hint
//! (`grpc-retry-pushback-ms`), so overload costs the client a retry instead of the server
//! unbounded memory. Nothing refused here reached the log: a retry is always safe.
//!
//! **Caveat**: the bytes counted are the request's protobuf encoding; in memory a request
//! takes more (decoded values, the entry built from it), so the memory a budget of `B` bytes
//! stands for is a multiple of `B` (measured: a write of many small values about 17×).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

use crate::wire::{CLIENT_REQUEST_BYTES_MAX, RETRY_PUSHBACK_HEADER};

/// How long a refused client is asked to wait before retrying.
pub const RETRY_PUSHBACK_MS: u64 = 50;

/// The default byte budget: four of the largest requests at once, or thousands of ordinary
/// ones.
pub const PROPOSAL_BYTES_IN_FLIGHT_DEFAULT: usize = 64 << 20;

/// The in-flight proposal budget of one server, shared by every service that proposes.
#[derive(Clone, Debug)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: usize,
    bytes: Arc<Semaphore>,
    bytes_limit: usize,
}

/// What an admitted proposal holds until its answer is sent.
#[derive(Debug)]
pub struct Permit {
    _count: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

impl Admission {
    /// A budget of `limit` proposals (at least 1) and `bytes_limit` encoded bytes (at least
    /// one request of the largest size a client may send) in flight.
    pub fn new(limit: usize, bytes_limit: usize) -> Self {
        let limit = limit.max(1);
        let bytes_limit = bytes_limit.clamp(CLIENT_REQUEST_BYTES_MAX, Semaphore::MAX_PERMITS);
        Admission {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            bytes: Arc::new(Semaphore::new(bytes_limit)),
            bytes_limit,
        }
    }

    /// A permit for one proposal of `bytes` encoded bytes, held until the answer is sent;
    /// UNAVAILABLE when the server is at either limit.
    pub fn admit(&self, bytes: usize) -> Result<Permit, Status> {
        let count = self.permits.clone().try_acquire_owned().map_err(|_| {
            refusal(format!(
                "{} proposals in flight (limit proposals_in_flight_max = {})",
                self.limit, self.limit
            ))
        })?;
        // A zero-byte request still takes its count permit; the byte budget admits any
        // request the transport let through (at most CLIENT_REQUEST_BYTES_MAX, see `new`).
        let bytes = u32::try_from(bytes.min(self.bytes_limit)).unwrap_or(u32::MAX);
        let held = match bytes {
            0 => None,
            n => Some(self.bytes.clone().try_acquire_many_owned(n).map_err(|_| {
                refusal(format!(
                    "{} bytes of proposals in flight, {n} more asked (limit \
                     proposal_bytes_in_flight_max = {})",
                    self.bytes_in_flight(),
                    self.bytes_limit
                ))
            })?),
        };
        Ok(Permit {
            _count: count,
            _bytes: held,
        })
    }

    /// Proposals in flight now.
    pub fn in_flight(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    /// Encoded bytes of proposals in flight now.
    pub fn bytes_in_flight(&self) -> usize {
        self.bytes_limit - self.bytes.available_permits()
    }
}

fn refusal(what: String) -> Status {
    let mut s = Status::unavailable(format!(
        "node overloaded: {what}; nothing was applied, retry after {RETRY_PUSHBACK_MS} ms"
    ));
    s.metadata_mut().insert(
        RETRY_PUSHBACK_HEADER,
        RETRY_PUSHBACK_MS.to_string().parse().expect("ASCII digits"),
    );
    s
}

impl Default for Admission {
    /// 4,096 proposals and [`PROPOSAL_BYTES_IN_FLIGHT_DEFAULT`] bytes: entries are usually
    /// small and the count is what keeps a flood from queueing forever; the bytes keep a few
    /// large writes from holding gigabytes.
    fn default() -> Self {
        Admission::new(4096, PROPOSAL_BYTES_IN_FLIGHT_DEFAULT)
    }
}
