//! Authentication and authorization at the edge: every graph, tenant, token and cluster call
//! starts here (the standard health service and server reflection are open).
//!
//! **Who.** [`Auth::caller`] takes the bearer token (`authorization: Bearer <token>`), looks its
//! id up in the replicated token records of this member's state machine and compares hashes in
//! constant time; without a token, a client certificate from the cluster's CA that names a
//! member of this cluster makes the caller a cluster administrator (see [`crate::auth`]).
//! UNAUTHENTICATED for a missing, malformed, unknown, revoked or expired token. A stream's
//! token is checked again before each of its calls ([`Auth::recheck`]), so a revoked token
//! stops a stream that is already open at its next call.
//!
//! **What.** [`need_tenant`] and [`need_cluster_admin`] answer PERMISSION_DENIED from the
//! principal alone, before anything is read: the answer for another tenant is the same whether
//! it exists or not, in code, message and the work done.
//!
//! **Forwards.** A follower passes the caller's `authorization` on with a call it forwards; the
//! leader checks it again. A call authenticated by a member's certificate is forwarded under the
//! forwarding member's own certificate, the same scope.
//!
//! **Audit.** [`audit`] logs every admin action (tenant lifecycle, quotas, configs, tokens,
//! membership) with the principal, the action and the outcome, at target `raftgraph::audit`.
//! Tokens never appear: principals are shown by token id.

use std::sync::Arc;

use tonic::metadata::AsciiMetadataValue;
use tonic::{Request, Status};

use super::sources::Clock;
use crate::auth::{AuthMode, Credential, Principal, Role, Scope, Token, id_hex};
use crate::state_machine::{GraphReader, Raft};
use crate::tls::ConnInfo;
use crate::wire::{AUTHORIZATION_HEADER, FORWARDED_HEADER, MEMBER_CALLER_HEADER};
use openraft::async_runtime::WatchReceiver;

/// Who made a call, and what to check again before each call of its stream. `Debug` shows the
/// principal only.
#[derive(Clone)]
pub struct Caller {
    pub principal: Principal,
    token: Option<Token>,
    /// The `authorization` value received (marked sensitive), passed on when the call is
    /// forwarded.
    pub header: Option<AsciiMetadataValue>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Caller({})", self.principal)
    }
}

impl Caller {
    /// Whether the caller authenticated with a member's certificate (a forward says so).
    pub fn by_member(&self) -> bool {
        matches!(self.principal.via, Credential::Member(_))
    }
}

/// The client listener's authenticator (cheap to clone).
#[derive(Clone)]
pub struct Auth {
    reader: GraphReader,
    clock: Clock,
    mode: AuthMode,
    cluster_id: Arc<str>,
    /// Whose membership a member certificate must be in; `None`: no certificate is a principal.
    raft: Option<Raft>,
}

fn unauthenticated(why: impl std::fmt::Display) -> Status {
    Status::unauthenticated(format!("unauthenticated: {why}"))
}

/// The header value as a token: `Bearer <token>` (the scheme in any case, RFC 6750).
fn bearer(v: &AsciiMetadataValue) -> Result<Token, Status> {
    let v = v
        .to_str()
        .map_err(|_| unauthenticated("the authorization header is not visible ASCII"))?;
    let token = match v.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => {
            return Err(unauthenticated(
                "the authorization header must be `Bearer <token>`",
            ));
        }
    };
    Token::parse(token).map_err(unauthenticated)
}

impl Auth {
    pub fn new(reader: GraphReader, clock: Clock, mode: AuthMode, cluster_id: &str) -> Auth {
        if mode == AuthMode::Off {
            tracing::warn!(
                "auth = \"off\": every caller that reaches the client listener may read, write \
                 and administer everything. For local experiments only."
            );
        }
        Auth {
            reader,
            clock,
            mode,
            cluster_id: cluster_id.into(),
            raft: None,
        }
    }

    /// Accepts certificates of members of `raft`'s membership as cluster admins (of any member
    /// of this cluster while the membership is empty: a server not yet initialised).
    pub fn with_members(mut self, raft: Raft) -> Auth {
        self.raft = Some(raft);
        self
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Whether `authorization` (the header's value) is a well-formed bearer token of which this
    /// member has no record (one made a moment ago and not applied here yet, or one that does
    /// not exist).
    pub fn token_unknown(&self, authorization: Option<&[u8]>) -> bool {
        if self.mode == AuthMode::Off {
            return false;
        }
        let Some(Ok(v)) = authorization.map(AsciiMetadataValue::try_from) else {
            return false;
        };
        match bearer(&v) {
            Ok(token) => matches!(self.reader.token(token.id), Ok(None)),
            Err(_) => false,
        }
    }

    /// Who made `request`: see the module docs.
    pub fn caller<T>(&self, request: &Request<T>) -> Result<Caller, Status> {
        let header = request
            .metadata()
            .get(AUTHORIZATION_HEADER)
            .cloned()
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        if self.mode == AuthMode::Off {
            return Ok(Caller {
                principal: Principal {
                    scope: Scope::Cluster,
                    via: Credential::Open,
                },
                token: None,
                header,
            });
        }
        if let Some(v) = header {
            let token = bearer(&v)?;
            let principal = self.check(&token)?;
            return Ok(Caller {
                principal,
                token: Some(token),
                header: Some(v),
            });
        }
        let forwarded = request.metadata().contains_key(FORWARDED_HEADER);
        if forwarded && !request.metadata().contains_key(MEMBER_CALLER_HEADER) {
            // The forwarding member's certificate is not the caller's credential.
            return Err(unauthenticated(
                "a forwarded call without the caller's credentials (the forwarding member does \
                 not authenticate its callers)",
            ));
        }
        match self.member_of(request) {
            Some(id) => Ok(Caller {
                principal: Principal {
                    scope: Scope::Cluster,
                    via: Credential::Member(id),
                },
                token: None,
                header: None,
            }),
            None => Err(unauthenticated(
                "no credentials: send `authorization: Bearer <token>` (raftgraph --token or \
                 RAFTGRAPH_TOKEN)",
            )),
        }
    }

    /// The member the caller's verified certificate names, if it is one of this cluster's
    /// membership as this server knows it (any member id of this cluster while it knows none).
    /// A removed member's certificate is no principal on a server that applied the removal.
    pub fn member_of<T>(&self, request: &Request<T>) -> Option<u64> {
        let info = request.extensions().get::<ConnInfo>()?;
        let (cluster, id) = info.member.as_ref()?;
        if **cluster != *self.cluster_id || self.raft.is_none() {
            return None;
        }
        self.in_membership(*id).then_some(*id)
    }

    /// The caller of an admin call, refused unless a cluster administrator (the refusal is
    /// audited; the caller audits the outcome of what it lets through).
    pub fn admin<T>(&self, request: &Request<T>, what: &str) -> Result<Caller, Status> {
        let caller = self.caller(request)?;
        let allowed = need_cluster_admin(&caller, what);
        if allowed.is_err() {
            audit(&caller, what, &allowed);
        }
        allowed.map(|()| caller)
    }

    /// Checks a stream's caller again before one of its calls: a token revoked or expired since
    /// the stream opened is refused.
    pub fn recheck(&self, caller: &Caller) -> Result<(), Status> {
        if self.mode == AuthMode::Off {
            return Ok(());
        }
        match (&caller.token, &caller.principal.via) {
            (Some(t), _) => self.check(t).map(|_| ()),
            (None, Credential::Member(id)) if !self.in_membership(*id) => Err(unauthenticated(
                format!("member {id} is no longer in the membership"),
            )),
            _ => Ok(()),
        }
    }

    /// Whether member `id` is in the membership this server knows (or it knows none yet).
    fn in_membership(&self, id: u64) -> bool {
        let Some(raft) = &self.raft else {
            return false;
        };
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        let membership = m.membership_config.membership();
        membership.nodes().next().is_none() || membership.get_node(&id).is_some()
    }

    fn check(&self, token: &Token) -> Result<Principal, Status> {
        let record = self
            .reader
            .token(token.id)
            .map_err(|e| Status::unavailable(format!("checking the token failed ({e}); retry")))?;
        // Unknown, revoked and wrong-secret tokens get one answer.
        let Some(record) = record.filter(|r| r.matches(token)) else {
            return Err(unauthenticated(format!(
                "token {} is unknown or revoked",
                id_hex(token.id)
            )));
        };
        if record.expired((self.clock)()) {
            return Err(unauthenticated(format!(
                "token {} expired (at {} µs since the Unix epoch); ask for a new one",
                id_hex(token.id),
                record.expires_micros.unwrap_or_default()
            )));
        }
        Ok(Principal {
            scope: record.scope.clone(),
            via: Credential::Token(record.id),
        })
    }
}

/// A name from the request, cut for a message or an audit line (tenant ids are validated later,
/// if at all).
pub(super) fn shown(name: &str) -> &str {
    match name.char_indices().nth(64) {
        Some((i, _)) => &name[..i],
        None => name,
    }
}

/// Refuses unless the caller may act on `tenant` as `role`.
pub fn need_tenant(caller: &Caller, tenant: &str, role: Role) -> Result<(), Status> {
    if caller.principal.may(tenant, role) {
        return Ok(());
    }
    let verb = match role {
        Role::Read => "read",
        Role::Write => "write to",
        Role::Admin => "administer",
    };
    Err(Status::permission_denied(format!(
        "permission denied: {} may not {verb} tenant {:?}",
        caller.principal,
        shown(tenant)
    )))
}

/// Refuses unless the caller is a cluster administrator.
pub fn need_cluster_admin(caller: &Caller, what: &str) -> Result<(), Status> {
    if caller.principal.is_cluster_admin() {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "permission denied: {} may not {what}; that needs a cluster-admin token",
        caller.principal
    )))
}

/// Logs an admin action with its principal and outcome (never a token).
pub fn audit<T>(caller: &Caller, action: &str, outcome: &Result<T, Status>) {
    match outcome {
        Ok(_) => tracing::info!(
            target: "raftgraph::audit",
            principal = %caller.principal,
            action,
            outcome = "ok",
            "admin action"
        ),
        Err(s) => tracing::info!(
            target: "raftgraph::audit",
            principal = %caller.principal,
            action,
            outcome = %s.code(),
            reason = s.message(),
            "admin action"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_required_and_matched_in_any_case() {
        let t = Token::generate(&|b: &mut [u8]| b.fill(7)).expose();
        for ok in [
            format!("Bearer {t}"),
            format!("bearer {t}"),
            format!("BEARER  {t}"),
        ] {
            assert!(bearer(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in [
            t.clone(),
            format!("Basic {t}"),
            "Bearer".into(),
            "Bearer x".into(),
        ] {
            let s = bearer(&bad.parse().unwrap()).unwrap_err();
            assert_eq!(s.code(), tonic::Code::Unauthenticated, "{bad}");
            assert!(!s.message().contains(&t[21..]), "{}", s.message());
        }
    }

    #[test]
    fn long_names_are_cut_in_messages() {
        let long = "é".repeat(100);
        assert_eq!(shown(&long).chars().count(), 64);
        assert_eq!(shown("abc"), "abc");
    }
}
