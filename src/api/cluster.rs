//! The cluster service: bootstrap, membership changes, leadership transfer, snapshots and the
//! member's view of the cluster. Membership changes and transfers run on the leader; a follower
//! forwards them once, like writes. `Status` answers from the server asked. The replicated
//! cluster limits are read and set here too ([`limits`]); `Init` and the first admin token are
//! in [`init`].

mod init;
mod limits;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, RaftError};
use openraft::{ChangeMembers, ServerState};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::auth::{Auth, audit};
use super::batch::BatchStats;
use super::route;
use super::sources::Clock;
use super::status::invalid;
use super::token::Tokens;
use crate::proto::v1 as pb;
use crate::proto::v1::cluster_service_client::ClusterServiceClient;
use crate::proto::v1::cluster_service_server::ClusterService;
use crate::raft::{LogId, Member, NodeId, StoredMembership};
use crate::state_machine::{GraphReader, Raft};
use crate::transport::check_addr;

/// The most members (voters and learners) a cluster may have, and so the most named in one
/// request: every membership entry lists them all and must stay far below a WAL record.
pub const MEMBERS_MAX: usize = 64;

/// The cluster service of one server.
pub struct ClusterApi {
    raft: Raft,
    cluster_id: String,
    /// This member's advertised client and peer addresses, reported by `Status`.
    me: Member,
    /// Why the last snapshot transfer to this member was refused, reported by `Status`.
    snapshot_refused: Arc<std::sync::Mutex<Option<String>>>,
    router: route::Router,
    /// The member's WAL counters, reported by `Status` (zero when not given).
    wal_stats: crate::wal::WalStats,
    /// The graph service's write batcher's counters, reported by `Status` (zero when not given).
    batch_stats: Arc<BatchStats>,
    /// Who may call; `None` until [`ClusterApi::with_auth`]: every call but `Status` is refused.
    auth: Option<(Auth, Tokens)>,
    /// Whether `Init` needs a member's certificate when authentication is on (it cannot have
    /// one on a plaintext listener, `tls = "off"`).
    init_needs_certificate: bool,
    /// The applied state (the cluster limits); `None` until [`ClusterApi::with_reader`].
    reader: Option<GraphReader>,
    /// Stamps the limits proposals.
    clock: Clock,
}

impl ClusterApi {
    pub fn new(raft: Raft, cluster_id: String) -> Self {
        ClusterApi {
            raft,
            cluster_id,
            me: Member::default(),
            snapshot_refused: Arc::default(),
            router: route::Router::default(),
            wal_stats: crate::wal::WalStats::default(),
            batch_stats: Arc::default(),
            auth: None,
            init_needs_certificate: true,
            reader: None,
            clock: Arc::new(|| 0),
        }
    }

    /// Reads the cluster limits from `reader`; stamps their changes with `clock`.
    pub fn with_reader(mut self, reader: GraphReader, clock: Clock) -> Self {
        self.reader = Some(reader);
        self.clock = clock;
        self
    }

    fn reader(&self) -> Result<&GraphReader, Status> {
        self.reader
            .as_ref()
            .ok_or_else(|| Status::unimplemented("this server does not serve the cluster limits"))
    }

    /// With `false` (a plaintext client listener), anyone may call `Init` first.
    pub fn with_init_certificate(mut self, needed: bool) -> Self {
        self.init_needs_certificate = needed;
        self
    }

    /// Authenticates calls with `auth`; `tokens` makes the first cluster-admin token at init.
    pub fn with_auth(mut self, auth: Auth, tokens: Tokens) -> Self {
        self.auth = Some((auth, tokens));
        self
    }

    /// The caller of a cluster call, refused unless a cluster administrator (logged).
    fn admin_caller<T>(&self, request: &Request<T>, what: &str) -> Result<super::Caller, Status> {
        let Some((auth, _)) = &self.auth else {
            return Err(Status::unauthenticated(
                "unauthenticated: this server was built without an authenticator",
            ));
        };
        auth.admin(request, what)
    }

    /// The membership this member knows now (the latest, committed or not).
    fn membership(&self) -> Arc<StoredMembership> {
        self.raft
            .metrics()
            .borrow_watched()
            .membership_config
            .clone()
    }

    /// Whether this member is in no membership yet (not initialised, nor added).
    fn unjoined(&self) -> bool {
        self.membership().membership().nodes().next().is_none()
    }

    /// Reports `me` (this member's advertised addresses) in `Status`.
    pub fn with_addresses(mut self, me: Member) -> Self {
        self.me = me;
        self
    }

    /// Reports the reason `refused` holds (the peer service's last refused snapshot transfer)
    /// in `Status`.
    pub fn with_snapshot_refusals(
        mut self,
        refused: Arc<std::sync::Mutex<Option<String>>>,
    ) -> Self {
        self.snapshot_refused = refused;
        self
    }

    /// Reports `stats` (the graph service's write batcher) in `Status`.
    pub fn with_batch_stats(mut self, stats: Arc<BatchStats>) -> Self {
        self.batch_stats = stats;
        self
    }

    /// Reports `stats` (the member's WAL) in `Status`.
    pub fn with_wal_stats(mut self, stats: crate::wal::WalStats) -> Self {
        self.wal_stats = stats;
        self
    }

    /// Reaches the leader through `router` (the server's dialer) instead of a private TCP one.
    pub fn with_router(mut self, router: route::Router) -> Self {
        self.router = router;
        self
    }

    /// `None` when this member leads (membership checks then run on the leader's view);
    /// otherwise the leader to forward to ([`route::leader_elsewhere`]).
    fn leader_elsewhere(&self, was_forwarded: bool) -> Result<Option<Member>, Status> {
        route::leader_elsewhere(&self.raft, was_forwarded)
    }

    /// The membership as this member knows it now.
    fn current(&self) -> pb::MembershipResponse {
        pb::MembershipResponse {
            membership: Some(membership_to_proto(
                &self.raft.metrics().borrow_watched().membership_config,
            )),
        }
    }
}

/// How long `AddLearner { wait: true }` waits for the learner to catch up.
pub const LEARNER_WAIT: Duration = Duration::from_secs(60);

async fn client(
    router: &route::Router,
    node: &Member,
) -> Result<ClusterServiceClient<Channel>, Status> {
    Ok(ClusterServiceClient::new(router.channel(node)?))
}

/// Checks a member from the wire: a non-zero id, and `host:port` client and peer addresses.
pub fn member(field: &str, m: Option<pb::Member>) -> Result<(NodeId, Member), Status> {
    let m = m.ok_or_else(|| invalid(field, "missing"))?;
    if m.id == 0 {
        return Err(invalid(&format!("{field}.id"), "member ids start at 1"));
    }
    check_addr(&m.addr).map_err(|e| invalid(&format!("{field}.addr"), e))?;
    if m.peer_addr.is_empty() {
        return Err(invalid(
            &format!("{field}.peer_addr"),
            "missing: the member's peer address (its peer_advertise)",
        ));
    }
    check_addr(&m.peer_addr).map_err(|e| invalid(&format!("{field}.peer_addr"), e))?;
    Ok((m.id, Member::new(m.peer_addr, m.addr)))
}

fn ids(field: &str, ids: &[u64]) -> Result<BTreeSet<NodeId>, Status> {
    if ids.is_empty() {
        return Err(invalid(field, "no node ids given"));
    }
    if ids.len() > MEMBERS_MAX {
        return Err(invalid(
            field,
            format!("{} ids, limit {MEMBERS_MAX}", ids.len()),
        ));
    }
    Ok(ids.iter().copied().collect())
}

fn membership_to_proto(m: &StoredMembership) -> pb::Membership {
    let m = m.membership();
    let voters: BTreeSet<NodeId> = m.voter_ids().collect();
    let mut out = pb::Membership::default();
    for (id, node) in m.nodes() {
        let member = pb::Member {
            id: *id,
            addr: node.api_addr.clone(),
            peer_addr: node.peer_addr.clone(),
        };
        if voters.contains(id) {
            out.voters.push(member);
        } else {
            out.learners.push(member);
        }
    }
    out
}

fn position(l: Option<&LogId>) -> Option<pb::LogPosition> {
    l.map(|l| pb::LogPosition {
        term: l.committed_leader_id().term,
        index: l.index,
    })
}

/// A membership change's result: the new membership and its log index, or a forward.
enum Changed {
    Done(pb::MembershipResponse, u64),
    Forward(Member),
}

fn changed(
    r: Result<
        openraft::raft::ClientWriteResponse<crate::raft::TypeConfig>,
        RaftError<crate::raft::TypeConfig, ClientWriteError<crate::raft::TypeConfig>>,
    >,
    was_forwarded: bool,
) -> Result<Changed, Status> {
    match r {
        Ok(r) => Ok(Changed::Done(
            pb::MembershipResponse {
                membership: r.membership().as_ref().map(|m| {
                    membership_to_proto(&openraft::StoredMembership::new(Some(r.log_id), m.clone()))
                }),
            },
            r.log_id.index,
        )),
        Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
            route::leader_of(&f, was_forwarded).map(Changed::Forward)
        }
        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
            use openraft::errors::ChangeMembershipError as E;
            Err(match e {
                E::InProgress(_) => Status::unavailable(format!(
                    "another membership change is in progress ({e}); retry"
                )),
                E::LearnerNotFound(_) => Status::not_found(format!("membership change: {e}")),
                _ => Status::failed_precondition(format!("membership change: {e}")),
            })
        }
        Err(e) => Err(Status::unavailable(format!(
            "membership change outcome unknown, check status and retry: {e}"
        ))),
    }
}

/// The calls themselves; the trait below authorizes and audits them.
impl ClusterApi {
    async fn do_add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let via = route::Via::of(&request);
        let was_forwarded = via.forwarded;
        let msg = request.into_inner();
        let (id, node) = member("member", msg.member.clone())?;
        if let Some(leader) = self.leader_elsewhere(was_forwarded)? {
            let mut req = via.forward(msg);
            // Catching up may take a while; the leader bounds its own wait.
            req.set_timeout(LEARNER_WAIT + Duration::from_secs(10));
            return client(&self.router, &leader)
                .await?
                .add_learner(req)
                .await
                .map_err(route::forwarded_outcome);
        }
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        if membership.voter_ids().any(|v| v == id) {
            return Err(Status::already_exists(format!(
                "node {id} is already a voter"
            )));
        }
        let index = match membership.get_node(&id) {
            Some(present) if present != &node => {
                return Err(Status::already_exists(format!(
                    "member {id} is already a learner at {} (peer {}), not {} (peer {}); remove \
                     it first to change its addresses",
                    present.api_addr, present.peer_addr, node.api_addr, node.peer_addr
                )));
            }
            // Already a learner at this address: nothing to change (a retry lands here).
            Some(_) => m.last_log_index.unwrap_or(0),
            None if membership.nodes().count() >= MEMBERS_MAX => {
                return Err(Status::failed_precondition(format!(
                    "the cluster has {} members (voters and learners), limit {MEMBERS_MAX}; \
                     remove one first",
                    membership.nodes().count()
                )));
            }
            None => {
                let r = self.raft.add_learner(id, node, false).await;
                match changed(r, was_forwarded)? {
                    Changed::Forward(leader) => {
                        let mut req = via.forward(msg);
                        req.set_timeout(LEARNER_WAIT + Duration::from_secs(10));
                        return client(&self.router, &leader)
                            .await?
                            .add_learner(req)
                            .await
                            .map_err(route::forwarded_outcome);
                    }
                    Changed::Done(_, index) => index,
                }
            }
        };
        if msg.wait {
            let caught_up = |m: &openraft::RaftMetrics<crate::raft::TypeConfig>| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .is_some_and(|l| l.index >= index)
            };
            self.raft
                .wait(Some(LEARNER_WAIT))
                .metrics(caught_up, "learner caught up")
                .await
                .map_err(|_| {
                    Status::deadline_exceeded(format!(
                        "node {id} was added as a learner but has not replicated index {index} \
                         within {LEARNER_WAIT:?}; it keeps catching up (see cluster status)"
                    ))
                })?;
        }
        Ok(Response::new(self.current()))
    }

    async fn do_promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let via = route::Via::of(&request);
        let was_forwarded = via.forwarded;
        let msg = request.into_inner();
        let ids = ids("ids", &msg.ids)?;
        if let Some(leader) = self.leader_elsewhere(was_forwarded)? {
            return client(&self.router, &leader)
                .await?
                .promote(via.forward(msg))
                .await
                .map_err(route::forwarded_outcome);
        }
        let m = self.membership();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        for id in &ids {
            if m.membership().get_node(id).is_none() {
                return Err(Status::not_found(format!(
                    "node {id} is not a member; add it as a learner first"
                )));
            }
        }
        // Voters already: nothing to do for them (a retry lands here).
        let ids: BTreeSet<NodeId> = ids.into_iter().filter(|i| !voters.contains(i)).collect();
        if ids.is_empty() {
            return Ok(Response::new(self.current()));
        }
        let r = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(ids), false)
            .await;
        match changed(r, was_forwarded)? {
            Changed::Done(r, _) => Ok(Response::new(r)),
            Changed::Forward(leader) => client(&self.router, &leader)
                .await?
                .promote(via.forward(msg))
                .await
                .map_err(route::forwarded_outcome),
        }
    }

    async fn do_remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let via = route::Via::of(&request);
        let was_forwarded = via.forwarded;
        let msg = request.into_inner();
        let ids = ids("ids", &msg.ids)?;
        if let Some(leader) = self.leader_elsewhere(was_forwarded)? {
            return client(&self.router, &leader)
                .await?
                .remove(via.forward(msg))
                .await
                .map_err(route::forwarded_outcome);
        }
        let m = self.membership();
        let voters: BTreeSet<NodeId> = m.membership().voter_ids().collect();
        // Members already gone are skipped: a retry of a remove that went through succeeds.
        let (remove_voters, remove_learners): (BTreeSet<_>, BTreeSet<_>) = ids
            .into_iter()
            .filter(|id| m.membership().get_node(id).is_some())
            .partition(|id| voters.contains(id));
        let mut last = None;
        // Voters, then learners: two membership changes. If the first removes this member (the
        // leader), the second is forwarded to the new leader, which skips the voters gone.
        let changes = [
            // `retain = false`: a removed voter leaves the cluster instead of staying a learner.
            (
                remove_voters.is_empty(),
                ChangeMembers::RemoveVoters(remove_voters),
            ),
            (
                remove_learners.is_empty(),
                ChangeMembers::RemoveNodes(remove_learners),
            ),
        ];
        for (empty, change) in changes {
            if empty {
                continue;
            }
            let r = self.raft.change_membership(change, false).await;
            match changed(r, was_forwarded)? {
                Changed::Done(r, _) => last = Some(r),
                Changed::Forward(leader) => {
                    return client(&self.router, &leader)
                        .await?
                        .remove(via.forward(msg))
                        .await
                        .map_err(route::forwarded_outcome);
                }
            }
        }
        Ok(Response::new(last.unwrap_or_else(|| self.current())))
    }

    async fn do_transfer_leadership(
        &self,
        request: Request<pb::TransferLeadershipRequest>,
    ) -> Result<Response<pb::TransferLeadershipResponse>, Status> {
        let via = route::Via::of(&request);
        let was_forwarded = via.forwarded;
        let msg = request.into_inner();
        if let Some(leader) = self.leader_elsewhere(was_forwarded)? {
            return client(&self.router, &leader)
                .await?
                .transfer_leadership(via.forward(msg))
                .await
                .map_err(route::forwarded_outcome);
        }
        let m = self.raft.metrics().borrow_watched().clone();
        if !m
            .membership_config
            .membership()
            .voter_ids()
            .any(|v| v == msg.to)
        {
            return Err(Status::not_found(format!(
                "node {} is not a voter; only a voter can lead",
                msg.to
            )));
        }
        if msg.to == m.id {
            return Ok(Response::new(pb::TransferLeadershipResponse {}));
        }
        self.raft
            .trigger()
            .transfer_leader(msg.to)
            .await
            .map_err(|e| Status::unavailable(format!("transfer: {e}")))?;
        Ok(Response::new(pb::TransferLeadershipResponse {}))
    }

    async fn do_trigger_snapshot(
        &self,
        _request: Request<pb::TriggerSnapshotRequest>,
    ) -> Result<Response<pb::TriggerSnapshotResponse>, Status> {
        self.raft
            .trigger()
            .snapshot()
            .await
            .map_err(|e| Status::unavailable(format!("snapshot: {e}")))?;
        Ok(Response::new(pb::TriggerSnapshotResponse {}))
    }

    async fn do_status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let m = self.raft.metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let state = match m.state {
            ServerState::Leader => "leader",
            ServerState::Follower => "follower",
            ServerState::Candidate => "candidate",
            ServerState::Learner => "learner",
            ServerState::Shutdown => "shutdown",
        };
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l))
            .map(|n| n.api_addr.clone())
            .unwrap_or_default();
        let replication = m
            .replication
            .iter()
            .flatten()
            .filter_map(|(id, l)| l.as_ref().map(|l| (*id, l.index)))
            .collect();
        Ok(Response::new(pb::StatusResponse {
            member_id: m.id,
            cluster_id: self.cluster_id.clone(),
            state: state.into(),
            term: m.current_term,
            leader_id: m.current_leader,
            leader_addr,
            last_log_index: m.last_log_index,
            applied: position(m.last_applied.as_ref()),
            snapshot: position(m.snapshot.as_ref()),
            purged: position(m.purged.as_ref()),
            membership: Some(membership_to_proto(&m.membership_config)),
            replication,
            wal_group_commits: self.wal_stats.group_commits(),
            wal_entries_synced: self.wal_stats.entries(),
            batched_writes: self.batch_stats.requests.load(Ordering::Relaxed),
            batched_entries: self.batch_stats.entries.load(Ordering::Relaxed),
            addr: self.me.api_addr.clone(),
            peer_addr: self.me.peer_addr.clone(),
            snapshot_refused: self
                .snapshot_refused
                .lock()
                .expect("refusal")
                .clone()
                .unwrap_or_default(),
        }))
    }
}

#[tonic::async_trait]
impl ClusterService for ClusterApi {
    async fn init(
        &self,
        request: Request<pb::InitRequest>,
    ) -> Result<Response<pb::InitResponse>, Status> {
        self.do_init(request).await
    }

    async fn add_learner(
        &self,
        request: Request<pb::AddLearnerRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = self.admin_caller(&request, "add learners")?;
        let action = format!(
            "add learner {:?}",
            request.get_ref().member.as_ref().map(|m| m.id)
        );
        let result = self.do_add_learner(request).await;
        audit(&caller, &action, &result);
        result
    }

    async fn promote(
        &self,
        request: Request<pb::PromoteRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = self.admin_caller(&request, "promote learners")?;
        let action = format!("promote {:?}", shown_ids(&request.get_ref().ids));
        let result = self.do_promote(request).await;
        audit(&caller, &action, &result);
        result
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveRequest>,
    ) -> Result<Response<pb::MembershipResponse>, Status> {
        let caller = self.admin_caller(&request, "remove members")?;
        let action = format!("remove {:?}", shown_ids(&request.get_ref().ids));
        let result = self.do_remove(request).await;
        audit(&caller, &action, &result);
        result
    }

    async fn transfer_leadership(
        &self,
        request: Request<pb::TransferLeadershipRequest>,
    ) -> Result<Response<pb::TransferLeadershipResponse>, Status> {
        let caller = self.admin_caller(&request, "transfer leadership")?;
        let action = format!("transfer leadership to {}", request.get_ref().to);
        let result = self.do_transfer_leadership(request).await;
        audit(&caller, &action, &result);
        result
    }

    async fn trigger_snapshot(
        &self,
        request: Request<pb::TriggerSnapshotRequest>,
    ) -> Result<Response<pb::TriggerSnapshotResponse>, Status> {
        let caller = self.admin_caller(&request, "trigger snapshots")?;
        let result = self.do_trigger_snapshot(request).await;
        audit(&caller, "trigger snapshot", &result);
        result
    }

    async fn get_limits(
        &self,
        request: Request<pb::GetLimitsRequest>,
    ) -> Result<Response<pb::ClusterLimits>, Status> {
        self.admin_caller(&request, "read the cluster limits")?;
        self.do_get_limits()
    }

    async fn set_limits(
        &self,
        request: Request<pb::SetLimitsRequest>,
    ) -> Result<Response<pb::ClusterLimits>, Status> {
        let caller = self.admin_caller(&request, "set the cluster limits")?;
        let result = self.do_set_limits(request, &caller).await;
        audit(&caller, "set cluster limits", &result);
        result
    }

    /// Open to every caller: clients learn the leader from it, and `cluster init` a member's
    /// peer address before any token exists. A cluster administrator gets the whole view;
    /// anyone else what routing needs (member, cluster, state, term, leader, addresses). A
    /// token that is sent must be valid, except on a member that is in no membership yet: it
    /// cannot know any token, and answers an operator adding it (whose client sends its
    /// token) with the routing view.
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let admin = match &self.auth {
            Some((auth, _)) => match auth.caller(&request) {
                Ok(c) => c.principal.is_cluster_admin(),
                Err(_) if self.unjoined() => false,
                Err(s)
                    if request
                        .metadata()
                        .contains_key(crate::wire::AUTHORIZATION_HEADER) =>
                {
                    return Err(s);
                }
                Err(_) => false,
            },
            None => false,
        };
        let full = self.do_status(request).await?.into_inner();
        if admin {
            return Ok(Response::new(full));
        }
        Ok(Response::new(pb::StatusResponse {
            member_id: full.member_id,
            cluster_id: full.cluster_id,
            state: full.state,
            term: full.term,
            leader_id: full.leader_id,
            leader_addr: full.leader_addr,
            addr: full.addr,
            peer_addr: full.peer_addr,
            ..Default::default()
        }))
    }
}

/// At most a few ids, for an audit line.
fn shown_ids(ids: &[u64]) -> &[u64] {
    &ids[..ids.len().min(MEMBERS_MAX)]
}
