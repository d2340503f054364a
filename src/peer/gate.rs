//! Who may call the peer service: [`PeerGate`].
//!
//! A caller must present the identity of a member of this cluster ([`ConnInfo`]: on the TLS
//! peer listener, the member its verified certificate names) that is in the membership this
//! member knows (any member of the cluster while this member knows none yet: a new learner
//! first hears from the leader that added it). Otherwise UNAUTHENTICATED, before the message
//! body is read or a payload decoded.
//!
//! **A member that missed a membership change.** Its own membership can be older than the
//! cluster's: a member that was down or cut off while another was added (or removed and added
//! back) does not know that one, and would refuse it on the peer plane — for as long as it
//! leads, the stale member could never catch up. So a refusal of a member of this cluster
//! also asks the members this one does know ([`Asker`], at most one round a second) for their
//! committed membership: a member named in the committed membership of one of them whose log id
//! is newer than this member's own membership is admitted ("vouched for") for [`VOUCH_TTL`],
//! while the one that vouched is still in this member's membership and this member's log has
//! not reached that membership (from then on its own membership decides again). Later rounds
//! renew it while it is still refused. A member this one knows can already send it entries under
//! a higher vote, so while it stays a member its word adds little; the time limit bounds what
//! its word is worth once it is removed. A member removed for good is in no newer committed
//! membership and stays refused.
//!
//! **`Membership` is answered to any member of this cluster**, in this member's membership or
//! not: the asking member is the one whose view is stale, so the member it asks may well not
//! know it (it was removed and added back meanwhile, or a snapshot took its membership back to
//! an older one). The answer is the committed membership's log id and member ids, nothing more.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tokio::sync::mpsc;
use tonic::{Request, Status};

use crate::codec;
use crate::proto::v1::PeerMembershipRequest;
use crate::proto::v1::raft_service_client::RaftServiceClient;
use crate::raft::{LogId, NodeId, TypeConfig};
use crate::state_machine::Raft;
use crate::tls::{ConnInfo, member_name};
use crate::transport::Dialer;
use crate::wire::PEER_MESSAGE_BYTES_MAX;

type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

/// A member's answer to `RaftService/Membership`: the log id of its committed membership and
/// the ids it names, voters and learners.
pub type PeerMembership = (Option<LogId>, Vec<NodeId>);

/// The committed membership `m` holds, as [`PeerMembership`].
pub fn membership_of(m: &RaftMetrics) -> PeerMembership {
    let c = &m.committed_membership_config;
    (
        *c.log_id(),
        c.membership().nodes().map(|(id, _)| *id).collect(),
    )
}

/// The least time between two rounds of asking.
const ASK_INTERVAL: Duration = Duration::from_secs(1);
/// How long one member's answer is waited for.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);
/// Refused members waiting to be asked about; more are dropped until a round has run.
const ASKS_QUEUED_MAX: usize = 64;
/// The most members vouched for at once (each answer names at most the cluster's members).
const VOUCHED_MAX: usize = 1024;
/// How long one vouch admits a member.
pub const VOUCH_TTL: Duration = Duration::from_secs(10);
/// The largest answer to `Membership` read (ids and a log id: a few bytes per member).
const MEMBERSHIP_ANSWER_BYTES_MAX: usize = 64 << 10;

/// Why a member not in this one's membership is admitted.
#[derive(Clone, Copy, Debug)]
struct Vouch {
    /// The committed membership that names it, on the member that vouched.
    log_id: LogId,
    /// The member that vouched: the vouch holds only while it is in this member's membership.
    by: NodeId,
    until: tokio::time::Instant,
}

/// Members vouched for, by id (see [`Vouch`]).
type Vouched = Arc<Mutex<BTreeMap<NodeId, Vouch>>>;

/// Who may call the peer service (see the module docs).
#[derive(Clone)]
pub struct PeerGate {
    raft: Raft,
    cluster_id: String,
    vouched: Vouched,
    asks: mpsc::Sender<NodeId>,
}

impl PeerGate {
    /// The gate for `raft`'s member of cluster `cluster_id`, and the asker that must run beside
    /// it (on the server's runtime) for members this one does not know to be vouched for.
    pub fn new(raft: Raft, cluster_id: &str, dialer: Dialer) -> (PeerGate, Asker) {
        let (asks, queue) = mpsc::channel(ASKS_QUEUED_MAX);
        let vouched = Vouched::default();
        let asker = Asker {
            metrics: raft.metrics(),
            cluster_id: cluster_id.into(),
            dialer,
            vouched: vouched.clone(),
            queue,
        };
        let gate = PeerGate {
            raft,
            cluster_id: cluster_id.into(),
            vouched,
            asks,
        };
        (gate, asker)
    }

    /// The member the connection's identity ([`ConnInfo`]) names if it is a member of this
    /// cluster (not necessarily in the membership this member knows: see [`PeerGate::check`]);
    /// otherwise UNAUTHENTICATED saying why not.
    pub fn check_cluster(&self, extensions: &http::Extensions) -> Result<u64, Status> {
        let Some((cluster, id)) = extensions.get::<ConnInfo>().and_then(|i| i.member.as_ref())
        else {
            return Err(Status::unauthenticated(
                "the peer plane needs a member certificate of this cluster's CA (mutual TLS)",
            ));
        };
        if *cluster != self.cluster_id {
            return Err(Status::unauthenticated(format!(
                "the caller's certificate names cluster {cluster:?}; this is cluster {:?}",
                self.cluster_id
            )));
        }
        Ok(*id)
    }

    /// The caller's member id if it may call this member's Raft RPCs (see the module docs);
    /// otherwise UNAUTHENTICATED saying why not.
    pub fn check(&self, extensions: &http::Extensions) -> Result<u64, Status> {
        let id = &self.check_cluster(extensions)?;
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        let known = &m.membership_config;
        if known.membership().nodes().next().is_none() || known.membership().get_node(id).is_some()
        {
            return Ok(*id);
        }
        let vouched = self.vouched.lock().expect("vouched").get(id).copied();
        if vouched.is_some_and(|v| {
            Some(v.log_id) > *known.log_id()
                && known.membership().get_node(&v.by).is_some()
                && tokio::time::Instant::now() < v.until
        }) {
            return Ok(*id);
        }
        // Full: a round is due anyway, and it asks for the whole membership.
        let _ = self.asks.try_send(*id);
        Err(Status::unauthenticated(format!(
            "member {id} is not in this cluster's membership as this member knows it (log id \
             {:?}); asking the members it knows whether it was added",
            known.log_id()
        )))
    }
}

/// The path of `RaftService/Membership`, answered to any member of the cluster.
const MEMBERSHIP_PATH: &str = "/raftgraph.v1.RaftService/Membership";
/// The most request bytes a `Membership` call may send (its message is empty): a member outside
/// the membership gets no more than that read.
const MEMBERSHIP_REQUEST_BYTES_MAX: usize = 64;

/// A request body refused past `left` more bytes.
struct Capped<B> {
    inner: B,
    left: usize,
}

impl<B> http_body::Body for Capped<B>
where
    B: http_body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Data = bytes::Bytes;
    type Error = tonic::codegen::StdError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let frame = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll_frame(cx));
        let frame = match frame {
            Some(Ok(f)) => f,
            Some(Err(e)) => return std::task::Poll::Ready(Some(Err(e.into()))),
            None => return std::task::Poll::Ready(None),
        };
        if let Some(data) = frame.data_ref() {
            if data.len() > self.left {
                let refused = Status::invalid_argument(format!(
                    "a Membership request is empty; more than {MEMBERSHIP_REQUEST_BYTES_MAX} \
                     bytes refused"
                ));
                return std::task::Poll::Ready(Some(Err(Box::new(refused))));
            }
            self.left -= data.len();
        }
        std::task::Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

/// A service behind a [`PeerGate`]: each call is checked on its headers, before its body is
/// read; a refused one is answered UNAUTHENTICATED and never reaches `S`.
#[derive(Clone)]
pub struct Gated<S> {
    inner: S,
    gate: PeerGate,
}

impl<S> Gated<S> {
    pub fn new(inner: S, gate: PeerGate) -> Self {
        Gated { inner, gate }
    }
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for Gated<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> tower::Service<http::Request<B>> for Gated<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    B: http_body::Body<Data = bytes::Bytes> + Unpin + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let membership = request.uri().path() == MEMBERSHIP_PATH;
        let checked = if membership {
            self.gate.check_cluster(request.extensions())
        } else {
            self.gate.check(request.extensions())
        };
        if let Err(refused) = checked {
            return Box::pin(std::future::ready(Ok(refused.into_http())));
        }
        let request = if membership {
            request.map(|inner| {
                tonic::body::Body::new(Capped {
                    inner,
                    left: MEMBERSHIP_REQUEST_BYTES_MAX,
                })
            })
        } else {
            request.map(tonic::body::Body::new)
        };
        Box::pin(self.inner.call(request))
    }
}

/// Asks the members this one knows for their membership when the gate refused a member of the
/// cluster (see the module docs). Ends when every [`PeerGate`] is gone or Raft stops.
pub struct Asker {
    metrics: openraft::type_config::alias::WatchReceiverOf<TypeConfig, RaftMetrics>,
    cluster_id: String,
    dialer: Dialer,
    vouched: Vouched,
    queue: mpsc::Receiver<NodeId>,
}

impl Asker {
    pub async fn run(mut self) {
        loop {
            let first = tokio::select! {
                id = self.queue.recv() => id,
                // Raft stopped (the server shut down): its metrics channel closed.
                changed = self.metrics.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => None,
                },
            };
            let Some(first) = first else { return };
            let mut refused = BTreeSet::from([first]);
            while let Ok(id) = self.queue.try_recv() {
                refused.insert(id);
            }
            self.round(&refused).await;
            tokio::time::sleep(ASK_INTERVAL).await;
        }
    }

    /// Asks every member this one knows, but itself and the refused ones, at once.
    async fn round(&self, refused: &BTreeSet<NodeId>) {
        let (me, known, mine) = {
            let m = self.metrics.borrow_watched();
            let c = &m.membership_config;
            let peers: Vec<(NodeId, String)> = c
                .membership()
                .nodes()
                .filter(|(id, _)| **id != m.id && !refused.contains(id))
                .map(|(id, node)| (*id, node.peer_addr.clone()))
                .collect();
            (m.id, peers, *c.log_id())
        };
        let answers = futures::future::join_all(
            known
                .iter()
                .map(|(id, addr)| async move { (*id, self.ask(*id, addr).await) }),
        )
        .await;
        let now = tokio::time::Instant::now();
        let mut vouched = self.vouched.lock().expect("vouched");
        vouched.retain(|_, v| Some(v.log_id) > mine && now < v.until);
        for (by, answer) in answers {
            let (log_id, members) = match answer {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(member = me, asked = by, error = %e, "membership not learned");
                    continue;
                }
            };
            let Some(log_id) = log_id.filter(|l| Some(*l) > mine) else {
                continue;
            };
            for id in members.into_iter().filter(|id| refused.contains(id)) {
                if vouched.len() >= VOUCHED_MAX && !vouched.contains_key(&id) {
                    break;
                }
                vouched.insert(
                    id,
                    Vouch {
                        log_id,
                        by,
                        until: now + VOUCH_TTL,
                    },
                );
                tracing::info!(
                    member = me,
                    admitted = id,
                    by,
                    their_membership = %log_id,
                    ours = ?mine,
                    "a member this one did not know is in a newer membership of a member it \
                     knows: admitted on the peer plane until this member's log reaches it"
                );
            }
        }
    }

    /// Member `id`'s membership, asked at `addr` (verifying its certificate names it).
    async fn ask(&self, id: NodeId, addr: &str) -> Result<PeerMembership, String> {
        let name = member_name(&self.cluster_id, id);
        let channel = self
            .dialer
            .channel_named(addr, Some(&name))
            .map_err(|e| format!("{addr}: {e}"))?;
        let mut client = RaftServiceClient::new(channel)
            .max_decoding_message_size(MEMBERSHIP_ANSWER_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);
        let mut req = Request::new(PeerMembershipRequest {});
        req.set_timeout(ASK_TIMEOUT);
        let answer = match tokio::time::timeout(ASK_TIMEOUT, client.membership(req)).await {
            Ok(Ok(a)) => a,
            Ok(Err(s)) => {
                if matches!(
                    s.code(),
                    tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ) {
                    self.dialer.forget_named(addr, Some(&name));
                }
                return Err(format!("{:?}: {}", s.code(), s.message()));
            }
            Err(_) => {
                // A stalled connection may never recover by itself: dial afresh next time.
                self.dialer.forget_named(addr, Some(&name));
                return Err(format!("no answer within {ASK_TIMEOUT:?}"));
            }
        };
        let r: Result<PeerMembership, String> =
            codec::decode(&answer.into_inner().data).map_err(|e| format!("undecodable: {e}"))?;
        r
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;

    /// A body of one chunk.
    struct Once(Option<bytes::Bytes>);

    impl http_body::Body for Once {
        type Data = bytes::Bytes;
        type Error = Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
            Poll::Ready(self.0.take().map(|b| Ok(http_body::Frame::data(b))))
        }
    }

    /// What a `Membership` call's body of `n` bytes reads as: its length, or the refusal.
    fn read(n: usize) -> Result<usize, String> {
        let mut body = Capped {
            inner: Once(Some(bytes::Bytes::from(vec![0; n]))),
            left: MEMBERSHIP_REQUEST_BYTES_MAX,
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match http_body::Body::poll_frame(Pin::new(&mut body), &mut cx) {
            Poll::Ready(Some(Ok(frame))) => Ok(frame.into_data().map_or(0, |d| d.len())),
            Poll::Ready(Some(Err(e))) => Err(e.to_string()),
            other => panic!("{:?}", other.map(|o| o.map(|r| r.is_ok()))),
        }
    }

    #[test]
    fn a_membership_request_past_its_few_bytes_is_refused() {
        // An empty message is its 5-byte gRPC header.
        assert_eq!(read(5), Ok(5));
        assert_eq!(
            read(MEMBERSHIP_REQUEST_BYTES_MAX),
            Ok(MEMBERSHIP_REQUEST_BYTES_MAX)
        );
        let refused = read(MEMBERSHIP_REQUEST_BYTES_MAX + 1).unwrap_err();
        assert!(refused.contains("more than 64 bytes refused"), "{refused}");
    }
}
