//! The token service: create, revoke and list bearer tokens (see [`crate::auth`]).
//!
//! A token is made by the leader that proposes it (a follower forwards the request): the log
//! carries its hash, the answer the token, once. Token commands are not deduplicated by a
//! client's request id (a retry would make another token, with another hash): each runs in a
//! session of its own, so a retry after an unknown outcome may leave an unused token behind,
//! which `ListTokens` shows and `RevokeToken` removes; no one ever saw its secret.

use prost::Message;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::admission::Admission;
use super::auth::{Auth, Caller, audit, need_cluster_admin, need_tenant, shown};
use super::route::{self, Proposed};
use super::sources::{Clock, Random};
use super::status::{apply_error, invalid, read_error};
use crate::auth::{Credential, EXPIRY_SECS_MAX, Role, Scope, Token, TokenInfo, id_hex, parse_id};
use crate::command::{Command, NewToken, Outcome};
use crate::proto::v1 as pb;
use crate::proto::v1::token_service_client::TokenServiceClient;
use crate::proto::v1::token_service_server::TokenService;
use crate::raft::Member;
use crate::state_machine::{GraphReader, Raft};
use crate::wire::{CLIENT_ANSWER_BYTES_MAX, CLIENT_REQUEST_BYTES_MAX};

/// What making a token needs: the Raft handle to propose it, the time, randomness.
#[derive(Clone)]
pub struct Tokens {
    pub raft: Raft,
    pub clock: Clock,
    pub random: Random,
}

/// A token made and stored, or the leader to ask instead.
pub enum Made {
    Token(Token, TokenInfo),
    Forward(Member),
}

impl Tokens {
    /// Proposes `command`, made by `owner`, in a session of its own (see the module docs).
    async fn propose(
        &self,
        command: Command,
        owner: Credential,
        forwarded: bool,
    ) -> Result<Proposed, Status> {
        let mut id = [0u8; 8];
        (self.random)(&mut id);
        let req = crate::command::Request::new(u64::from_be_bytes(id), 1, (self.clock)(), command)
            .map_err(|e| Status::internal(format!("encoding a token command: {e}")))?
            .by(owner);
        route::propose(&self.raft, req, forwarded).await
    }

    /// Makes a token of `scope`, valid for `expires_in_seconds` (0: forever), and stores its
    /// hash through the log, at `owner`'s request.
    pub async fn create(
        &self,
        scope: Scope,
        expires_in_seconds: u64,
        owner: Credential,
        forwarded: bool,
    ) -> Result<Made, Status> {
        if expires_in_seconds > EXPIRY_SECS_MAX {
            return Err(invalid(
                "expires_in_seconds",
                format!("{expires_in_seconds} s, at most {EXPIRY_SECS_MAX} s (ten years)"),
            ));
        }
        let expires_micros = (expires_in_seconds > 0)
            .then(|| (self.clock)().saturating_add(expires_in_seconds as i64 * 1_000_000));
        let token = Token::generate(&*self.random);
        let new = NewToken {
            id: token.id,
            scope,
            hash: token.hash(),
            expires_micros,
            last4: token.last4(),
        };
        match self
            .propose(Command::CreateToken(new), owner, forwarded)
            .await?
        {
            Proposed::Applied(Ok(Outcome::Token(info))) => Ok(Made::Token(token, info)),
            Proposed::Applied(Ok(other)) => Err(Status::internal(format!(
                "create token answered with {other:?}"
            ))),
            Proposed::Applied(Err(e)) => Err(apply_error(&e)),
            Proposed::Forward(leader) => Ok(Made::Forward(leader)),
        }
    }
}

/// A token's listing on the wire.
pub fn info_to_proto(i: &TokenInfo) -> pb::TokenInfo {
    let (tenant, role) = match &i.scope {
        Scope::Cluster => (String::new(), pb::Role::ClusterAdmin),
        Scope::Tenant { tenant, role } => (
            tenant.clone(),
            match role {
                Role::Read => pb::Role::Read,
                Role::Write => pb::Role::Write,
                Role::Admin => pb::Role::Admin,
            },
        ),
    };
    pb::TokenInfo {
        id: id_hex(i.id),
        tenant,
        role: role as i32,
        created_micros: i.created_micros,
        expires_micros: i.expires_micros.unwrap_or(0),
        last4: i.last4.clone(),
    }
}

/// The scope a request names: a tenant role with a tenant, or cluster-admin without one.
fn scope_of(tenant: &str, role: i32) -> Result<Scope, Status> {
    let tenant_role = match pb::Role::try_from(role) {
        Ok(pb::Role::ClusterAdmin) if tenant.is_empty() => return Ok(Scope::Cluster),
        Ok(pb::Role::ClusterAdmin) => {
            return Err(invalid(
                "tenant",
                "must be empty for ROLE_CLUSTER_ADMIN (a cluster admin is no tenant's)",
            ));
        }
        Ok(pb::Role::Read) => Role::Read,
        Ok(pb::Role::Write) => Role::Write,
        Ok(pb::Role::Admin) => Role::Admin,
        Ok(pb::Role::Unspecified) | Err(_) => {
            return Err(invalid(
                "role",
                format!("{role}: one of ROLE_READ, ROLE_WRITE, ROLE_ADMIN, ROLE_CLUSTER_ADMIN"),
            ));
        }
    };
    if tenant.is_empty() {
        return Err(invalid("tenant", "missing: the tenant the token is for"));
    }
    Ok(Scope::Tenant {
        tenant: tenant.to_string(),
        role: tenant_role,
    })
}

/// The token service of one server.
pub struct TokenApi {
    tokens: Tokens,
    reader: GraphReader,
    auth: Auth,
    admission: Admission,
    router: route::Router,
}

impl TokenApi {
    pub fn new(tokens: Tokens, reader: GraphReader, auth: Auth) -> Self {
        TokenApi {
            tokens,
            reader,
            auth,
            admission: Admission::default(),
            router: route::Router::default(),
        }
    }

    /// Shares `admission` (the server's in-flight proposal budget) instead of a private default.
    pub fn with_admission(mut self, admission: Admission) -> Self {
        self.admission = admission;
        self
    }

    /// Reaches the leader through `router` (the server's dialer) instead of a private TCP one.
    pub fn with_router(mut self, router: route::Router) -> Self {
        self.router = router;
        self
    }

    async fn create(
        &self,
        caller: &Caller,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<pb::CreateTokenResponse, Status> {
        let via = route::Via::of(&request);
        let msg = request.into_inner();
        let scope = scope_of(&msg.tenant, msg.role)?;
        match &scope {
            Scope::Cluster => need_cluster_admin(caller, "create cluster-admin tokens")?,
            Scope::Tenant { tenant, .. } => need_tenant(caller, tenant, Role::Admin)?,
        }
        let _permit = self.admission.admit(msg.encoded_len())?;
        match self
            .tokens
            .create(
                scope,
                msg.expires_in_seconds,
                caller.principal.via,
                via.forwarded,
            )
            .await?
        {
            Made::Token(token, info) => Ok(pb::CreateTokenResponse {
                token: token.expose(),
                info: Some(info_to_proto(&info)),
            }),
            Made::Forward(leader) => client(&self.router, &leader)
                .await?
                .create_token(via.forward(msg))
                .await
                .map(Response::into_inner)
                .map_err(route::forwarded_outcome),
        }
    }

    async fn revoke(
        &self,
        caller: &Caller,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<pb::RevokeTokenResponse, Status> {
        let via = route::Via::of(&request);
        let msg = request.into_inner();
        let id = parse_id(&msg.id).ok_or_else(|| invalid("id", "not 16 hex digits"))?;
        // A tenant admin revokes its own tenant's tokens only; apply checks the record's scope.
        let tenant = match &caller.principal.scope {
            Scope::Cluster => None,
            Scope::Tenant { tenant, .. } => {
                need_tenant(caller, tenant, Role::Admin)?;
                Some(tenant.clone())
            }
        };
        let _permit = self.admission.admit(msg.encoded_len())?;
        match self
            .tokens
            .propose(
                Command::RevokeToken { id, tenant },
                caller.principal.via,
                via.forwarded,
            )
            .await?
        {
            Proposed::Applied(Ok(Outcome::Deleted)) => Ok(pb::RevokeTokenResponse {}),
            Proposed::Applied(Ok(other)) => Err(Status::internal(format!(
                "revoke token answered with {other:?}"
            ))),
            Proposed::Applied(Err(e)) => Err(apply_error(&e)),
            Proposed::Forward(leader) => client(&self.router, &leader)
                .await?
                .revoke_token(via.forward(msg))
                .await
                .map(Response::into_inner)
                .map_err(route::forwarded_outcome),
        }
    }
}

async fn client(
    router: &route::Router,
    node: &Member,
) -> Result<TokenServiceClient<Channel>, Status> {
    Ok(TokenServiceClient::new(router.channel(node)?)
        .max_decoding_message_size(CLIENT_ANSWER_BYTES_MAX)
        .max_encoding_message_size(CLIENT_REQUEST_BYTES_MAX))
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        let action = format!(
            "create token (tenant {:?}, role {})",
            shown(&request.get_ref().tenant),
            request.get_ref().role
        );
        let result = self.create(&caller, request).await;
        match &result {
            Ok(r) => audit(
                &caller,
                &format!(
                    "{action}: token {}",
                    r.info.as_ref().map_or("?", |i| i.id.as_str())
                ),
                &Ok::<(), Status>(()),
            ),
            Err(_) => audit(&caller, &action, &result),
        }
        result.map(Response::new)
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        let action = format!("revoke token {:?}", shown(&request.get_ref().id));
        let result = self.revoke(&caller, request).await;
        audit(&caller, &action, &result);
        result.map(Response::new)
    }

    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let caller = self.auth.caller(&request)?;
        let via = route::Via::of(&request);
        let msg = request.into_inner();
        let tenant = match (&caller.principal.scope, msg.tenant.is_empty()) {
            (Scope::Cluster, true) => None,
            (Scope::Cluster, false) => Some(msg.tenant.clone()),
            (Scope::Tenant { tenant, .. }, true) => Some(tenant.clone()),
            (Scope::Tenant { .. }, false) => Some(msg.tenant.clone()),
        };
        if let Some(t) = &tenant {
            need_tenant(&caller, t, Role::Admin)?;
        } else {
            need_cluster_admin(&caller, "list every tenant's tokens")?;
        }
        let after = match msg.after.as_str() {
            "" => None,
            a => Some(parse_id(a).ok_or_else(|| invalid("after", "not 16 hex digits"))?),
        };
        if let Some(leader) = route::read_route(
            &self.tokens.raft,
            &self.router,
            msg.consistency,
            via.forwarded,
        )
        .await?
        {
            return client(&self.router, &leader)
                .await?
                .list_tokens(via.forward(msg))
                .await;
        }
        let page = self
            .reader
            .tokens(tenant.as_deref(), after, route::limit(msg.limit))
            .map_err(|e| read_error(&e))?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: page.items.iter().map(info_to_proto).collect(),
            next: page
                .next
                .and_then(|n| <[u8; 8]>::try_from(n).ok())
                .map(|n| id_hex(u64::from_be_bytes(n)))
                .unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_need_a_tenant_exactly_when_they_are_a_tenants() {
        let t = |r: pb::Role| r as i32;
        assert_eq!(
            scope_of("", t(pb::Role::ClusterAdmin)).unwrap(),
            Scope::Cluster
        );
        assert!(scope_of("a", t(pb::Role::ClusterAdmin)).is_err());
        assert!(scope_of("", t(pb::Role::Read)).is_err());
        assert!(scope_of("a", t(pb::Role::Unspecified)).is_err());
        assert!(scope_of("a", 99).is_err());
        assert_eq!(
            scope_of("a", t(pb::Role::Write)).unwrap(),
            Scope::Tenant {
                tenant: "a".into(),
                role: Role::Write
            }
        );
    }
}
