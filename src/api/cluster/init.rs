//! `Init`: bootstrapping a new cluster, and its first cluster-admin token (made on the member
//! asked, once it leads).

use std::collections::BTreeMap;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{InitializeError, RaftError};
use tonic::{Request, Response, Status};

use super::{ClusterApi, MEMBERS_MAX, member};
use crate::api::auth::audit;
use crate::api::route;
use crate::api::status::invalid;
use crate::api::token::{Made, Tokens};
use crate::auth::{AuthMode, Credential, Scope, id_hex};
use crate::proto::v1 as pb;

/// How long `Init` waits for a leader to store the first cluster-admin token.
pub const INIT_TOKEN_WAIT: Duration = Duration::from_secs(10);

impl ClusterApi {
    pub(super) async fn do_init(
        &self,
        request: Request<pb::InitRequest>,
    ) -> Result<Response<pb::InitResponse>, Status> {
        let me = self.raft.metrics().borrow_watched().id;
        // Only whoever holds a member's key may initialise (and so get the first admin token):
        // with authentication off, anyone.
        let (caller, tokens) = match &self.auth {
            Some((auth, tokens)) if auth.mode() == AuthMode::On => {
                if self.init_needs_certificate && auth.member_of(&request).is_none() {
                    return Err(Status::unauthenticated(
                        "unauthenticated: cluster init needs a member's certificate from the \
                         cluster's CA (raftgraph --client-cert <member>.pem --client-key \
                         <member>.key, over TLS)",
                    ));
                }
                let caller = auth.caller(&request).ok();
                (caller, Some(tokens))
            }
            Some((auth, _)) => (Some(auth.caller(&request)?), None),
            None => {
                return Err(Status::unauthenticated(
                    "unauthenticated: this server was built without an authenticator",
                ));
            }
        };
        let msg = request.into_inner();
        if msg.members.len() > MEMBERS_MAX {
            return Err(invalid(
                "members",
                format!("{} members, limit {MEMBERS_MAX}", msg.members.len()),
            ));
        }
        let mut members = BTreeMap::new();
        for (i, m) in msg.members.into_iter().enumerate() {
            let (id, node) = member(&format!("members[{i}]"), Some(m))?;
            if members.insert(id, node).is_some() {
                return Err(invalid(
                    &format!("members[{i}].id"),
                    format!("node {id} named twice"),
                ));
            }
        }
        if members.is_empty() {
            return Err(invalid(
                "members",
                "empty; name every initial voter, this node included",
            ));
        }
        if !members.contains_key(&me) {
            return Err(invalid(
                "members",
                format!("must include the node asked (node {me})"),
            ));
        }
        let initialized = self.raft.initialize(members).await;
        if let Some(c) = &caller {
            audit(
                c,
                "init",
                &initialized
                    .as_ref()
                    .map_err(|e| Status::unknown(e.to_string())),
            );
        }
        match initialized {
            Ok(()) => Ok(Response::new(match tokens {
                Some(t) => self.first_admin_token(t).await,
                None => pb::InitResponse::default(),
            })),
            Err(RaftError::APIError(InitializeError::NotAllowed(e))) => {
                Err(Status::failed_precondition(format!(
                    "node {me} already belongs to a cluster ({e}); init runs once, on a new \
                     cluster"
                )))
            }
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(invalid("members", e.to_string()))
            }
            Err(e) => Err(Status::unavailable(format!("init: {e}"))),
        }
    }

    /// The first cluster-admin token, made once the cluster has a leader: here (a member that
    /// was just initialised leads first: the others do not know the membership yet).
    async fn first_admin_token(&self, tokens: &Tokens) -> pb::InitResponse {
        let failed = |why: String| pb::InitResponse {
            admin_token_error: format!(
                "{why}; the cluster is initialised: make a cluster-admin token with a member's \
                 certificate (raftgraph tenant token create --role cluster-admin \
                 --client-cert <member>.pem --client-key <member>.key)"
            ),
            ..Default::default()
        };
        let me = self.raft.metrics().borrow_watched().id;
        let leading = self
            .raft
            .wait(Some(INIT_TOKEN_WAIT))
            .metrics(|m| m.current_leader.is_some(), "a leader after init")
            .await;
        match leading {
            Ok(m) if m.current_leader == Some(me) => {}
            Ok(m) => {
                return failed(format!(
                    "member {:?} leads, not member {me}, which was asked",
                    m.current_leader
                ));
            }
            Err(_) => return failed(format!("no leader within {INIT_TOKEN_WAIT:?}")),
        }
        // A new leader may refuse proposals for a moment (until it has committed its first
        // entry): retried until the wait is over.
        let deadline = tokio::time::Instant::now() + INIT_TOKEN_WAIT;
        loop {
            match tokens
                .create(Scope::Cluster, 0, Credential::Member(me), true)
                .await
            {
                Ok(Made::Token(token, info)) => {
                    return pb::InitResponse {
                        admin_token: token.expose(),
                        admin_token_id: id_hex(info.id),
                        admin_token_error: String::new(),
                    };
                }
                Ok(Made::Forward(leader)) => {
                    return failed(format!(
                        "leadership moved to {} before the token was stored",
                        leader.api_addr
                    ));
                }
                // Refused before anything was proposed (not "outcome unknown", which would
                // leave a token no one saw): retried.
                Err(s)
                    if s.code() == tonic::Code::Unavailable
                        && s.message().starts_with(route::NO_LEADER)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(s) => return failed(format!("the token was not stored: {}", s.message())),
            }
        }
    }
}
