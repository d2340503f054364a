//! Routing shared by the services: where a write or a linearizable read must go, the one
//! forward from a follower to the leader, follower reads by the leader's read index, and
//! proposing a command through Raft.

use std::time::Duration;

use crate::raft::Member;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, ForwardToLeader, LinearizableReadError, RaftError};
use openraft::raft::ReadPolicy;

use tonic::transport::Channel;
use tonic::{Request, Status};

use super::status::invalid;
use crate::command::{ApplyError, Outcome, Proposal, Response};
use crate::proto::v1 as pb;
use crate::proto::v1::raft_service_client::RaftServiceClient;
use crate::raft::{NodeId, TypeConfig};
use crate::state_machine::PAGE_ITEMS_MAX;
use crate::state_machine::Raft;
use crate::tls::member_name;
use crate::transport::Dialer;
use crate::wire::{
    AUTHORIZATION_HEADER, FORWARDED_HEADER, MEMBER_CALLER_HEADER, PROPOSAL_BYTES_MAX,
};
use tonic::metadata::AsciiMetadataValue;

/// Deadline of a forwarded call when the caller set none.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a request must go instead: the leader's address, or UNAVAILABLE when no leader is
/// known or the request was already forwarded once.
pub fn leader_of(f: &ForwardToLeader<TypeConfig>, was_forwarded: bool) -> Result<Member, Status> {
    match (&f.leader_node, was_forwarded) {
        (Some(n), false) => Ok(n.clone()),
        (Some(n), true) => Err(Status::unavailable(format!(
            "leadership is moving (leader {:?} at {}); retry",
            f.leader_id, n.api_addr
        ))),
        (None, _) => Err(Status::unavailable(format!("{NO_LEADER}; retry"))),
    }
}

/// How a refusal for want of a leader starts: nothing was proposed.
pub const NO_LEADER: &str = "no leader is known";

/// What the services need to reach the leader: the server's dialers (one cached channel per
/// leader address, reconnecting by itself), and the planted bug only tests switch on.
#[derive(Clone, Debug, Default)]
pub struct Router {
    /// Client-plane channels: calls forwarded to the leader's client listener.
    pub dialer: Dialer,
    /// Peer-plane channels (mutual TLS in production): the leader's read index.
    pub peer_dialer: Dialer,
    /// The cluster whose member certificates the peer plane expects.
    pub cluster_id: String,
    /// Planted bug (the `testing` feature only; no config reaches it): a follower serves a
    /// "linearizable" read from its local state without asking the leader for a read index.
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub planted_stale_follower_reads: bool,
    /// Planted bug (the `testing` feature only): a member that believes it leads serves a
    /// "linearizable" read from its own state without confirming leadership (no read index).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub planted_leader_reads_unconfirmed: bool,
}

impl Router {
    /// The channel to `node` (the leader) for forwarded calls.
    pub fn channel(&self, node: &Member) -> Result<Channel, Status> {
        self.dialer
            .channel(&node.api_addr)
            .map_err(|e| Status::unavailable(format!("leader address {}: {e}", node.api_addr)))
    }

    /// The peer-plane channel to member `id` at `node`; its certificate must name it.
    fn peer_channel(&self, id: NodeId, node: &Member) -> Result<Channel, Status> {
        let name = member_name(&self.cluster_id, id);
        self.peer_dialer
            .channel_named(&node.peer_addr, Some(&name))
            .map_err(|e| {
                Status::unavailable(format!("leader peer address {}: {e}", node.peer_addr))
            })
    }
}

/// How long a follower waits for the leader's read index.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a follower waits for its own apply to reach the read index before forwarding the
/// read to the leader instead.
const FOLLOWER_APPLY_WAIT: Duration = Duration::from_secs(2);
/// A follower this many entries behind the read index forwards at once: it would not catch up
/// within the wait (e.g. a learner still installing a snapshot, or a removed member).
const FOLLOWER_LAG_MAX: u64 = 10_000;

/// Follower read: asks the leader for a read index, then waits until this replica applied it.
/// `Ok(false)`: serve it on the leader instead (the leader could not be asked, or this replica
/// is too far behind); the leader checks again itself, so forwarding is always safe.
async fn follower_read_index(
    raft: &Raft,
    router: &Router,
    leader_id: NodeId,
    leader: &Member,
) -> Result<bool, Status> {
    #[cfg(feature = "testing")]
    if router.planted_stale_follower_reads {
        return Ok(true);
    }
    let mut peer = RaftServiceClient::new(router.peer_channel(leader_id, leader)?);
    let mut req = Request::new(pb::ReadIndexRequest {});
    req.set_timeout(READ_INDEX_TIMEOUT);
    let index = match peer.read_index(req).await {
        Ok(r) => r.into_inner().index,
        // The member we took for leader no longer leads: a forward would be refused there too.
        Err(s) if s.code() == tonic::Code::FailedPrecondition => {
            return Err(Status::unavailable(format!(
                "leadership is moving ({}); retry",
                s.message()
            )));
        }
        Err(s) => {
            // A stalled connection (no answer in time) may never recover by itself: dial
            // afresh next time.
            if matches!(
                s.code(),
                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
            ) {
                let name = member_name(&router.cluster_id, leader_id);
                router
                    .peer_dialer
                    .forget_named(&leader.peer_addr, Some(&name));
            }
            return Ok(false);
        }
    };
    let applied = raft
        .metrics()
        .borrow_watched()
        .last_applied
        .as_ref()
        .map_or(0, |l| l.index);
    if index.saturating_sub(applied) > FOLLOWER_LAG_MAX {
        return Ok(false);
    }
    Ok(raft
        .wait(Some(FOLLOWER_APPLY_WAIT))
        .applied_index_at_least(Some(index), "follower read index")
        .await
        .is_ok())
}

pub fn was_forwarded<T>(r: &Request<T>) -> bool {
    r.metadata().contains_key(FORWARDED_HEADER)
}

/// The longest deadline a forwarded call gets, whatever the caller asked.
const FORWARD_TIMEOUT_MAX: Duration = Duration::from_secs(300);

/// How a request arrived: whether a follower forwarded it, the caller's deadline
/// (`grpc-timeout`) and bearer token, which a forward keeps (the leader checks the token again).
/// (`Debug` shows the token as "Sensitive".)
#[derive(Clone, Debug)]
pub struct Via {
    pub forwarded: bool,
    pub deadline: Option<Duration>,
    pub authorization: Option<AsciiMetadataValue>,
    /// The caller authenticated with a member's certificate, not a token: a forward says so
    /// ([`MEMBER_CALLER_HEADER`]), and the leader takes the forwarding member's certificate.
    pub as_member: bool,
}

fn sensitive(v: &AsciiMetadataValue) -> AsciiMetadataValue {
    let mut v = v.clone();
    v.set_sensitive(true);
    v
}

impl Via {
    pub fn of<T>(r: &Request<T>) -> Via {
        let deadline = r
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout);
        let authorization = r.metadata().get(AUTHORIZATION_HEADER).map(sensitive);
        let by_certificate = r
            .extensions()
            .get::<crate::tls::ConnInfo>()
            .is_some_and(|c| c.member.is_some());
        Via {
            forwarded: was_forwarded(r),
            deadline,
            as_member: authorization.is_none() && by_certificate,
            authorization,
        }
    }

    /// How a stream call arrived: on a stream `forwarded` or not, with the call's own deadline
    /// in milliseconds (0: none), the stream's `authorization`, and whether its caller
    /// authenticated with a member's certificate.
    pub fn of_call(
        forwarded: bool,
        timeout_ms: u64,
        authorization: Option<AsciiMetadataValue>,
        as_member: bool,
    ) -> Via {
        Via {
            forwarded,
            deadline: (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms)),
            authorization,
            as_member,
        }
    }

    /// `msg` as a forwarded request: marked, with the caller's deadline (capped at 300 s) or,
    /// without one, the default forward deadline.
    pub fn forward<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(
            self.deadline
                .map_or(FORWARD_TIMEOUT, |d| d.min(FORWARD_TIMEOUT_MAX)),
        );
        r.metadata_mut()
            .insert(FORWARDED_HEADER, "1".parse().expect("an ASCII value"));
        if let Some(a) = &self.authorization {
            r.metadata_mut().insert(AUTHORIZATION_HEADER, a.clone());
        } else if self.as_member {
            r.metadata_mut()
                .insert(MEMBER_CALLER_HEADER, "1".parse().expect("an ASCII value"));
        }
        r
    }
}

/// A `grpc-timeout` header value: 1..=8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// A page size from the wire: 0 means the most a page may hold.
pub fn limit(l: u32) -> usize {
    if l == 0 { PAGE_ITEMS_MAX } else { l as usize }
}

/// The status of a forwarded write or admin call, as the client must read it: if the call did
/// not come back with an answer (deadline, reset, transport), its outcome is unknown, which is
/// UNAVAILABLE — retry with the same request id.
pub fn forwarded_outcome(s: Status) -> Status {
    use tonic::Code::*;
    match s.code() {
        DeadlineExceeded | Cancelled | Unknown | Unavailable => Status::unavailable(format!(
            "outcome unknown (forwarded to the leader: {}: {}); retry with the same request id",
            s.code(),
            s.message()
        )),
        _ => s,
    }
}

/// `None`: serve the read here (after a read index when linearizable). `Some(leader)`: forward.
pub async fn read_route(
    raft: &Raft,
    router: &Router,
    consistency: i32,
    was_forwarded: bool,
) -> Result<Option<Member>, Status> {
    match pb::Consistency::try_from(consistency) {
        Ok(pb::Consistency::Serializable) => Ok(None),
        Ok(pb::Consistency::Linearizable) => {
            #[cfg(feature = "testing")]
            if router.planted_leader_reads_unconfirmed
                && raft.metrics().borrow_watched().state == openraft::ServerState::Leader
            {
                return Ok(None);
            }
            // Boxed: openraft's future is ~2.7 KB, and inline it would make every read's task
            // (serializable ones too) that much larger to create and move.
            match Box::pin(raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
                Ok(_) => Ok(None),
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                    let leader = leader_of(&f, was_forwarded)?;
                    let Some(leader_id) = f.leader_id else {
                        return Err(Status::unavailable("no leader is known; retry"));
                    };
                    // Served here once this replica has applied the leader's read index; the
                    // read is forwarded only when the leader cannot give one.
                    // Boxed: large, and only a follower's linearizable reads take it.
                    if Box::pin(follower_read_index(raft, router, leader_id, &leader)).await? {
                        Ok(None)
                    } else {
                        Ok(Some(leader))
                    }
                }
                Err(e) => Err(Status::unavailable(format!("read index: {e}"))),
            }
        }
        Err(_) => Err(invalid(
            "consistency",
            format!("unknown value {consistency}"),
        )),
    }
}

/// Whether this member leads, as far as it knows.
pub fn leads(raft: &Raft) -> bool {
    let m = raft.metrics();
    let m = m.borrow_watched();
    m.current_leader == Some(m.id)
}

/// `None` when this member leads; otherwise the leader to forward to, or UNAVAILABLE when none
/// is known or the request was forwarded already.
pub fn leader_elsewhere(raft: &Raft, was_forwarded: bool) -> Result<Option<Member>, Status> {
    let m = raft.metrics().borrow_watched().clone();
    if m.current_leader == Some(m.id) {
        return Ok(None);
    }
    let leader = m
        .current_leader
        .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
    match (leader, was_forwarded) {
        (Some(leader), false) => Ok(Some(leader)),
        (Some(leader), true) => Err(Status::unavailable(format!(
            "leadership is moving (leader at {}); retry",
            leader.api_addr
        ))),
        (None, _) => Err(Status::unavailable("no leader is known; retry")),
    }
}

/// What proposing a command led to.
pub enum Proposed {
    /// Applied: the state machine's answer.
    Applied(Result<Outcome, ApplyError>),
    /// Not the leader: forward to it.
    Forward(Member),
}

/// The encoded size of `req`, or INVALID_ARGUMENT past [`PROPOSAL_BYTES_MAX`].
pub fn check_size(req: &crate::command::Request) -> Result<usize, Status> {
    let bytes = crate::codec::encoded_len(req).map_err(|e| Status::internal(e.to_string()))?;
    if bytes > PROPOSAL_BYTES_MAX {
        return Err(invalid(
            "request",
            format!("{bytes} bytes encoded, limit {PROPOSAL_BYTES_MAX}; split it"),
        ));
    }
    Ok(bytes)
}

/// Proposes `req` alone and waits until it is applied. An unknown outcome (leadership changed
/// mid-proposal) is UNAVAILABLE: retrying with the same (client_id, sequence) applies it once.
pub async fn propose(
    raft: &Raft,
    req: crate::command::Request,
    was_forwarded: bool,
) -> Result<Proposed, Status> {
    check_size(&req)?;
    super::secrets::refuse_plain(&req)?;
    match propose_all(raft, req.into()).await? {
        Ok(responses) => match <[_; 1]>::try_from(responses) {
            Ok([r]) => Ok(Proposed::Applied(r.outcome)),
            Err(v) => Err(Status::internal(format!(
                "{} responses to one request",
                v.len()
            ))),
        },
        Err(f) => leader_of(&f, was_forwarded).map(Proposed::Forward),
    }
}

/// Proposes one entry and waits until it is applied: its responses, in order, or where to
/// forward (this member does not lead). Any other failure leaves the outcome unknown
/// (UNAVAILABLE; a retry with the same request ids applies each request once).
pub async fn propose_all(
    raft: &Raft,
    proposal: Proposal,
) -> Result<Result<Vec<Response>, ForwardToLeader<TypeConfig>>, Status> {
    match raft.client_write(proposal).await {
        Ok(r) => Ok(Ok(r.data.responses)),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => Ok(Err(f)),
        Err(e) => Err(Status::unavailable(format!("outcome unknown, retry: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_by_unit_and_refuse_garbage() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(
            parse_grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "5 S", "x5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }
}
