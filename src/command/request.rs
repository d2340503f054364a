//! The replicated command (what a Raft entry carries) and the apply result (what it returns).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::graph::{LABELS_MAX, PROPERTIES_MAX, Properties, Value, validate_name};
use crate::auth::{Credential, Role, Scope, TokenInfo, id_hex};
use crate::tenant::{
    QuotaExceeded, Quotas, RateLimits, Sealed, TenantConfig, TenantError, TenantInfo,
};

/// Operations in one write request.
pub const OPERATIONS_MAX: usize = 10_000;
/// Preconditions in one write request.
pub const PRECONDITIONS_MAX: usize = 1_000;

/// One client request, as proposed to Raft. `timestamp_micros` and `fingerprint` are stamped by
/// the member that makes the request (the leader), so every replica applies the same time and
/// compares a repeat against the same fingerprint. Make one with [`Request::new`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client; a client id has at most one request outstanding.
    pub client_id: u64,
    /// 1, 2, 3, … per client id (below [`RESENT`]); a retry reuses its sequence. The top bit,
    /// [`RESENT`], marks a request the client sent before without an answer: see
    /// [`Request::resent`]. Read it with [`Request::seq`].
    pub sequence: u64,
    pub timestamp_micros: i64,
    /// [`fingerprint`] of `command`. A repeat of a sequence must be the same request: apply
    /// compares this with the fingerprint its session stored. Computed once, where the request
    /// is made, so no replica encodes and hashes the command again at apply (BENCHMARKS.md
    /// measures what that cost followers).
    ///
    /// Encoded as one byte string (a plain array is 32 one-byte fields to encode and decode).
    #[serde(with = "serde_bytes")]
    pub fingerprint: Fingerprint,
    pub command: Command,
    /// The credential the member that made the request authenticated it by. The request's
    /// session is that credential's: `(owner, client_id)` names it, so one principal cannot
    /// read, advance or evict another's sessions. Apply checks a token owner again (it must
    /// still exist, be unexpired at `timestamp_micros` and allow the command).
    pub owner: Credential,
}

/// BLAKE3 of a command's encoding.
pub type Fingerprint = [u8; 32];

/// The top bit of [`Request::sequence`]: the client sent this request before and had no
/// answer, so an earlier attempt may have applied. Carried in the sequence so the log's
/// encoding is unchanged: entries written before it have the bit clear, which means what it
/// meant then (not known to be resent).
pub const RESENT: u64 = 1 << 63;

/// BLAKE3 of `command`'s encoding. The timestamp is left out: the leader stamps a retry anew.
pub fn fingerprint(command: &Command) -> Result<Fingerprint, crate::codec::CodecError> {
    Ok(*blake3::hash(&crate::codec::encode(command)?).as_bytes())
}

impl Request {
    /// A request with its command's fingerprint. Fails only if the command cannot be encoded.
    pub fn new(
        client_id: u64,
        sequence: u64,
        timestamp_micros: i64,
        command: Command,
    ) -> Result<Request, crate::codec::CodecError> {
        Ok(Request {
            client_id,
            sequence,
            timestamp_micros,
            fingerprint: fingerprint(&command)?,
            command,
            owner: Credential::Open,
        })
    }

    /// The client's sequence number, without the [`RESENT`] mark.
    pub fn seq(&self) -> u64 {
        self.sequence & !RESENT
    }

    /// Whether the client sent this request before without an answer. A session's first
    /// request (sequence 1) so marked is refused as session-expired when it finds no session
    /// and its owner had sessions evicted recently (within ten minutes of it, by the stamped
    /// times): its first attempt may have applied and its session been evicted since, so
    /// applying it now could apply it twice.
    pub fn resent(&self) -> bool {
        self.sequence & RESENT != 0
    }

    /// The request as made by `owner` (a new request is [`Credential::Open`]'s).
    pub fn by(mut self, owner: Credential) -> Request {
        self.owner = owner;
        self
    }
}

/// What a command needs of the principal that sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need<'a> {
    /// `role` (or a higher one) in `tenant`.
    Tenant(&'a str, Role),
    /// A cluster administrator.
    Cluster,
}

impl fmt::Display for Need<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Need::Tenant(t, Role::Read) => write!(f, "read tenant {t:?}"),
            Need::Tenant(t, Role::Write) => write!(f, "write to tenant {t:?}"),
            Need::Tenant(t, Role::Admin) => write!(f, "administer tenant {t:?}"),
            Need::Cluster => f.write_str("do what needs a cluster-admin token"),
        }
    }
}

impl Command {
    /// What the sender of this command must be allowed. The API checks the same before it
    /// proposes; apply checks it again against the replicated token records.
    pub fn needs(&self) -> Need<'_> {
        match self {
            Command::Write(w) => Need::Tenant(&w.tenant, Role::Write),
            Command::CreateToken(t) => match &t.scope {
                Scope::Cluster => Need::Cluster,
                Scope::Tenant { tenant, .. } => Need::Tenant(tenant, Role::Admin),
            },
            Command::RevokeToken {
                tenant: Some(t), ..
            } => Need::Tenant(t, Role::Admin),
            Command::RevokeToken { tenant: None, .. }
            | Command::CreateTenant { .. }
            | Command::UpdateQuotas { .. }
            | Command::SetRateLimits { .. }
            | Command::SetTenantEnabled { .. }
            | Command::SetTenantConfig { .. }
            | Command::DeleteTenant { .. }
            | Command::SetLimits(_)
            | Command::UpdateLimits(_)
            | Command::ResealSecrets { .. } => Need::Cluster,
        }
    }
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resent = if self.resent() { " (resent)" } else { "" };
        write!(f, "client {} seq {}{resent}: ", self.client_id, self.seq())?;
        match &self.command {
            Command::Write(w) => write!(
                f,
                "write tenant {} ({} ops, {} preconditions)",
                w.tenant,
                w.operations.len(),
                w.preconditions.len()
            ),
            Command::CreateTenant { tenant, .. } => write!(f, "create tenant {tenant}"),
            Command::UpdateQuotas { tenant, .. } => write!(f, "update quotas of {tenant}"),
            Command::SetTenantEnabled { tenant, enabled } => {
                write!(f, "set tenant {tenant} enabled={enabled}")
            }
            Command::SetTenantConfig { tenant, .. } => write!(f, "set config of {tenant}"),
            Command::DeleteTenant { tenant } => write!(f, "delete tenant {tenant}"),
            Command::SetLimits(l) => write!(f, "set limits {l:?}"),
            Command::CreateToken(t) => write!(f, "create token {} ({})", id_hex(t.id), t.scope),
            Command::RevokeToken { id, .. } => write!(f, "revoke token {}", id_hex(*id)),
            Command::ResealSecrets { tenant, secrets } => {
                write!(f, "reseal {} secrets of {tenant}", secrets.len())
            }
            Command::UpdateLimits(c) => write!(f, "update limits {c:?}"),
            Command::SetRateLimits { tenant, limits } => {
                write!(f, "set rate limits of {tenant} to {limits:?}")
            }
        }
    }
}

/// What a request does.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    Write(WriteRequest),
    CreateTenant {
        tenant: String,
        quotas: Quotas,
        config: TenantConfig,
    },
    UpdateQuotas {
        tenant: String,
        quotas: Quotas,
    },
    SetTenantEnabled {
        tenant: String,
        enabled: bool,
    },
    SetTenantConfig {
        tenant: String,
        config: TenantConfig,
    },
    DeleteTenant {
        tenant: String,
    },
    SetLimits(ClusterLimits),
    /// A new bearer token (its hash: the token itself never reaches the log). Appended after
    /// the variants above: bincode names a variant by its position.
    CreateToken(NewToken),
    /// Revokes token `id`; with `tenant`, only if it is a token of that tenant (a tenant
    /// admin's revoke).
    RevokeToken {
        id: u64,
        tenant: Option<String>,
    },
    /// Replaces sealed secrets of `tenant`'s config by the same secrets sealed under another
    /// key (`raftgraph secrets rotate`). A secret changed since it was read (it no longer
    /// equals its `old`) is left as it is.
    ResealSecrets {
        tenant: String,
        secrets: Vec<Resealed>,
    },
    /// Changes the limits it names; the others keep their values. Merged at apply, so a retry
    /// is the same request whatever was set in between (`SetLimits` / `raftgraph cluster
    /// limits set`).
    UpdateLimits(LimitChanges),
    /// Sets `tenant`'s throughput limits (all of them: an absent one becomes unlimited).
    /// Stored apart from the tenant record (meta key `r`), so records, answers and sessions
    /// written before it existed still decode.
    SetRateLimits {
        tenant: String,
        limits: RateLimits,
    },
}

/// Cluster limits to change; `None` keeps the value in force.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitChanges {
    pub tenants_max: Option<u64>,
    pub sessions_per_principal_max: Option<u64>,
    pub session_bytes_per_principal_max: Option<u64>,
    pub cascade_edges_max: Option<u64>,
    pub entry_write_bytes_max: Option<u64>,
}

impl LimitChanges {
    /// `limits` with these changes.
    pub fn applied_to(&self, mut limits: ClusterLimits) -> ClusterLimits {
        let set = |field: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut limits.tenants_max, self.tenants_max);
        set(
            &mut limits.sessions_per_principal_max,
            self.sessions_per_principal_max,
        );
        set(
            &mut limits.session_bytes_per_principal_max,
            self.session_bytes_per_principal_max,
        );
        set(&mut limits.cascade_edges_max, self.cascade_edges_max);
        set(
            &mut limits.entry_write_bytes_max,
            self.entry_write_bytes_max,
        );
        limits
    }
}

/// One secret sealed again: at `field` of the config, `old` becomes `new`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Resealed {
    pub field: String,
    pub old: Sealed,
    pub new: Sealed,
}

/// Most secrets one `ResealSecrets` names (a config holds at most 68).
pub const RESEALED_MAX: usize = 128;

/// A token to store: made and hashed by the member that serves the request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewToken {
    pub id: u64,
    pub scope: Scope,
    #[serde(with = "serde_bytes")]
    pub hash: [u8; 32],
    pub expires_micros: Option<i64>,
    pub last4: String,
}

/// Cluster-wide limits. Replicated (set through the log) rather than per-server configuration, so
/// every replica makes the same decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterLimits {
    /// Tenants that may exist at once (each is a column family). Default 256.
    pub tenants_max: u64,
    /// Client sessions one principal (a token, a member's certificate, or everyone when
    /// authentication is off) keeps for exactly-once; past it, that principal's least recently
    /// written session is evicted, never another's. Default 10,000.
    pub sessions_per_principal_max: u64,
    /// Bytes of session records (keys and values) one principal keeps; past it, as above.
    /// Default 16 MiB.
    pub session_bytes_per_principal_max: u64,
    /// Edges the node deletes of one entry may cascade to, together. Default 100,000.
    pub cascade_edges_max: u64,
    /// Bytes one entry may write (keys + values put, keys deleted; rewrites of a record count
    /// each time), bounding every replica's memory for one apply. Default 64 MiB.
    pub entry_write_bytes_max: u64,
}

impl Default for ClusterLimits {
    fn default() -> Self {
        ClusterLimits {
            tenants_max: 256,
            sessions_per_principal_max: 10_000,
            session_bytes_per_principal_max: 16 << 20,
            cascade_edges_max: 100_000,
            entry_write_bytes_max: 64 << 20,
        }
    }
}

/// An atomic batch of graph operations on one tenant, guarded by preconditions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WriteRequest {
    pub tenant: String,
    pub preconditions: Vec<Precondition>,
    pub operations: Vec<Op>,
}

/// A node named by id, or by the index of an earlier `CreateNode` in the same request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeRef {
    Id(u64),
    Created(u32),
}

/// One graph operation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Op {
    CreateNode {
        labels: BTreeSet<String>,
        properties: Properties,
    },
    /// Sets `set` then removes `remove`.
    UpdateNode {
        node: NodeRef,
        set: Properties,
        remove: BTreeSet<String>,
    },
    AddLabels {
        node: NodeRef,
        labels: BTreeSet<String>,
    },
    RemoveLabels {
        node: NodeRef,
        labels: BTreeSet<String>,
    },
    /// Deletes the node and every edge into or out of it.
    DeleteNode {
        node: NodeRef,
    },
    CreateEdge {
        source: NodeRef,
        target: NodeRef,
        edge_type: String,
        properties: Properties,
    },
    UpdateEdge {
        edge: u64,
        set: Properties,
        remove: BTreeSet<String>,
    },
    DeleteEdge {
        edge: u64,
    },
}

/// A condition checked before any operation; one failing applies nothing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Precondition {
    NodeExists {
        node: u64,
        exists: bool,
    },
    EdgeExists {
        edge: u64,
        exists: bool,
    },
    /// `value: None` requires the property to be absent.
    NodePropertyEquals {
        node: u64,
        key: String,
        value: Option<Value>,
    },
    EdgePropertyEquals {
        edge: u64,
        key: String,
        value: Option<Value>,
    },
    NodeVersion {
        node: u64,
        version: u64,
    },
    EdgeVersion {
        edge: u64,
        version: u64,
    },
}

/// What one Raft entry carries: one request, or client writes the leader batched together.
/// They apply in order, each exactly as if it were alone (its own session, preconditions,
/// quota check and refusal), and land in one atomic batch with the entry's applied id.
/// Tenant and limit commands are always proposed alone.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Proposal {
    /// Shared: the log cache hands out an entry once per follower and once to apply, and
    /// each copy is then a reference count, not a deep copy. Encoded exactly as a `Vec`.
    /// An `Arc<Vec<_>>` rather than an `Arc<[_]>`: decoding or building a slice `Arc` copies
    /// every request once more into a new allocation, on every AppendEntries decode
    /// (BENCHMARKS.md).
    pub requests: Arc<Vec<Request>>,
}

impl From<Request> for Proposal {
    fn from(r: Request) -> Self {
        Proposal {
            requests: Arc::new(vec![r]),
        }
    }
}

impl fmt::Display for Proposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.requests[..] {
            [one] => write!(f, "{one}"),
            all => write!(f, "{} requests", all.len()),
        }
    }
}

/// The responses of one entry's requests, in order (none for blank and membership entries).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Responses {
    pub responses: Vec<Response>,
}

/// The result of applying one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub outcome: Result<Outcome, ApplyError>,
}

/// What a successful request produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// One result per operation, in order.
    Write(Vec<OpResult>),
    /// The tenant after an admin command (secrets redacted). Boxed: it is far larger than the
    /// other outcomes.
    Tenant(Box<TenantInfo>),
    Deleted,
    Limits(ClusterLimits),
    /// A token created (appended last: sessions store outcomes).
    Token(TokenInfo),
    /// How many secrets a `ResealSecrets` replaced.
    Resealed(u64),
    /// The tenant and the throughput limits a `SetRateLimits` left it with.
    RateLimits(Box<TenantInfo>, RateLimits),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    NodeCreated(u64),
    EdgeCreated(u64),
    /// The operation changed nothing visible beyond itself (update, delete).
    Done,
}

/// A deterministic refusal: the same on every replica, returned to the client, never fatal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    #[error("invalid argument {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("tenant {tenant} not found")]
    TenantNotFound { tenant: String },
    #[error("tenant {tenant} already exists")]
    TenantExists { tenant: String },
    #[error("tenant {tenant} is disabled")]
    TenantDisabled { tenant: String },
    #[error("cannot create tenant {tenant}: {count} tenants exist, limit {limit}")]
    TooManyTenants {
        tenant: String,
        count: u64,
        limit: u64,
    },
    #[error("tenant {tenant}: node {node} not found")]
    NodeNotFound { tenant: String, node: u64 },
    #[error("tenant {tenant}: edge {edge} not found")]
    EdgeNotFound { tenant: String, edge: u64 },
    #[error("tenant {tenant}: precondition {index} failed: {reason}")]
    PreconditionFailed {
        tenant: String,
        index: usize,
        reason: String,
    },
    #[error(
        "tenant {tenant}: deleting node {node} would cascade to at least {edges} edges in this request, limit {limit} per request"
    )]
    CascadeTooLarge {
        tenant: String,
        node: u64,
        edges: u64,
        limit: u64,
    },
    #[error(
        "tenant {tenant}: request writes at least {written} bytes, limit {limit} per request; split it"
    )]
    RequestTooLarge {
        tenant: String,
        written: u64,
        limit: u64,
    },
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error(
        "client {client_id}: sequence {sequence} was already used for a different request; use the next sequence"
    )]
    SequenceReused { client_id: u64, sequence: u64 },
    #[error(
        "client {client_id}: session expired for sequence {sequence} (last applied sequence: {last:?}); start a new client id"
    )]
    SessionExpired {
        client_id: u64,
        sequence: u64,
        last: Option<u64>,
    },
    /// The entry this request arrived in had already buffered `earlier` bytes for the requests
    /// before it; with this request's `written` it passes the per-entry bound. (Appended last:
    /// sessions store responses, and bincode names a variant by its position.)
    #[error(
        "tenant {tenant}: this request writes at least {written} bytes after the {earlier} bytes of the requests batched before it in the same Raft entry, limit {limit} per entry; retry it with a new sequence"
    )]
    EntryTooLarge {
        tenant: String,
        earlier: u64,
        written: u64,
        limit: u64,
    },
    // Appended after the variants above (sessions store responses).
    #[error("token {} not found", id_hex(*id))]
    TokenNotFound { id: u64 },
    #[error("token {} already exists", id_hex(*id))]
    TokenExists { id: u64 },
    #[error("cannot create a token: {scope} has its limit of {limit} tokens; revoke unused ones")]
    TooManyTokens { scope: String, limit: u64 },
    /// The request's token was revoked or expired before the request applied. Nothing of it
    /// was applied and no session was recorded.
    #[error("unauthenticated: {reason}")]
    Unauthenticated { reason: String },
    /// The request's token does not allow the command (checked again at apply). Nothing of it
    /// was applied and no session was recorded.
    #[error("permission denied: {reason}")]
    PermissionDenied { reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ApplyError {
    ApplyError::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Field names are built only for an error: validation runs for every request on every
/// replica, and formatting them up front was a measurable share of apply.
fn check_names<'a>(
    field: impl Fn() -> String,
    names: impl IntoIterator<Item = &'a String>,
) -> Result<(), ApplyError> {
    names
        .into_iter()
        .try_for_each(|n| validate_name(n).map_err(|r| invalid(field(), r)))
}

fn check_properties(field: impl Fn() -> String, props: &Properties) -> Result<(), ApplyError> {
    if props.len() > PROPERTIES_MAX {
        let reason = format!("{} properties, limit {PROPERTIES_MAX}", props.len());
        return Err(invalid(field(), reason));
    }
    for (k, v) in props {
        validate_name(k).map_err(|r| invalid(field(), r))?;
        v.validate()
            .map_err(|r| invalid(format!("{}.{k}", field()), r))?;
    }
    Ok(())
}

impl WriteRequest {
    /// Checks every bound that does not need the database. The server calls this before
    /// proposing; apply calls it again (an entry is input too).
    pub fn validate(&self) -> Result<(), ApplyError> {
        crate::tenant::validate_tenant_id(&self.tenant)?;
        if self.operations.len() > OPERATIONS_MAX {
            let reason = format!(
                "{} operations, limit {OPERATIONS_MAX}",
                self.operations.len()
            );
            return Err(invalid(
                format!("tenant {}: operations", self.tenant),
                reason,
            ));
        }
        if self.preconditions.len() > PRECONDITIONS_MAX {
            let n = self.preconditions.len();
            return Err(invalid(
                format!("tenant {}: preconditions", self.tenant),
                format!("{n} preconditions, limit {PRECONDITIONS_MAX}"),
            ));
        }
        for (i, p) in self.preconditions.iter().enumerate() {
            let field = || format!("tenant {}: preconditions[{i}]", self.tenant);
            match p {
                Precondition::NodePropertyEquals { key, value, .. }
                | Precondition::EdgePropertyEquals { key, value, .. } => {
                    validate_name(key).map_err(|r| invalid(field(), r))?;
                    if let Some(v) = value {
                        v.validate().map_err(|r| invalid(field(), r))?;
                    }
                }
                _ => {}
            }
        }
        for (i, op) in self.operations.iter().enumerate() {
            self.validate_op(i, op)?;
        }
        Ok(())
    }

    fn validate_op(&self, i: usize, op: &Op) -> Result<(), ApplyError> {
        let field = || format!("tenant {}: operations[{i}]", self.tenant);
        let sub = |name: &'static str| move || format!("{}.{name}", field());
        let node_ref = |r: &NodeRef| match r {
            NodeRef::Created(j) if (*j as usize) >= i => Err(invalid(
                field(),
                format!("refers to operation {j}, which does not come before it"),
            )),
            NodeRef::Created(j) => match self.operations[*j as usize] {
                Op::CreateNode { .. } => Ok(()),
                _ => Err(invalid(
                    field(),
                    format!("operation {j} is not a node create"),
                )),
            },
            NodeRef::Id(_) => Ok(()),
        };
        let labels = |l: &BTreeSet<String>| {
            if l.len() > LABELS_MAX {
                return Err(invalid(
                    sub("labels")(),
                    format!("{} labels, limit {LABELS_MAX}", l.len()),
                ));
            }
            check_names(sub("labels"), l)
        };
        match op {
            Op::CreateNode {
                labels: l,
                properties,
            } => {
                labels(l)?;
                check_properties(sub("properties"), properties)
            }
            Op::UpdateNode { node, set, remove } => {
                node_ref(node)?;
                check_properties(sub("set"), set)?;
                check_names(sub("remove"), remove)
            }
            Op::AddLabels { node, labels: l } | Op::RemoveLabels { node, labels: l } => {
                node_ref(node)?;
                labels(l)
            }
            Op::DeleteNode { node } => node_ref(node),
            Op::CreateEdge {
                source,
                target,
                edge_type,
                properties,
            } => {
                node_ref(source)?;
                node_ref(target)?;
                validate_name(edge_type).map_err(|r| invalid(sub("edge_type")(), r))?;
                check_properties(sub("properties"), properties)
            }
            Op::UpdateEdge { set, remove, .. } => {
                check_properties(sub("set"), set)?;
                check_names(sub("remove"), remove)
            }
            Op::DeleteEdge { .. } => Ok(()),
        }
    }
}

impl Command {
    /// The tenant a command names, if any.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Command::Write(w) => Some(&w.tenant),
            Command::CreateTenant { tenant, .. }
            | Command::UpdateQuotas { tenant, .. }
            | Command::SetTenantEnabled { tenant, .. }
            | Command::SetTenantConfig { tenant, .. }
            | Command::DeleteTenant { tenant }
            | Command::ResealSecrets { tenant, .. }
            | Command::SetRateLimits { tenant, .. } => Some(tenant),
            Command::CreateToken(t) => t.scope.tenant(),
            Command::SetLimits(_) | Command::UpdateLimits(_) | Command::RevokeToken { .. } => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(ops: Vec<Op>) -> WriteRequest {
        WriteRequest {
            tenant: "t".into(),
            preconditions: vec![],
            operations: ops,
        }
    }

    #[test]
    fn fingerprint_covers_the_command_and_not_the_time() {
        let a = Command::Write(write(vec![]));
        let b = Command::DeleteTenant { tenant: "t".into() };
        let r1 = Request::new(1, 1, 10, a.clone()).unwrap();
        let r2 = Request::new(2, 9, 20, a.clone()).unwrap();
        assert_eq!(r1.fingerprint, r2.fingerprint);
        assert_eq!(r1.fingerprint, fingerprint(&a).unwrap());
        assert_ne!(
            r1.fingerprint,
            Request::new(1, 1, 10, b).unwrap().fingerprint
        );
    }

    #[test]
    fn references_must_point_back_at_a_create() {
        let create = Op::CreateNode {
            labels: BTreeSet::new(),
            properties: Properties::new(),
        };
        let del = |j| Op::DeleteNode {
            node: NodeRef::Created(j),
        };
        assert!(write(vec![create.clone(), del(0)]).validate().is_ok());
        let e = write(vec![del(0)]).validate().unwrap_err().to_string();
        assert!(
            e.contains("operations[0]") && e.contains("does not come before"),
            "{e}"
        );
        let e = write(vec![create, del(0), del(1)])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(e.contains("operation 1 is not a node create"), "{e}");
    }

    #[test]
    fn oversized_requests_name_the_limit() {
        let ops = vec![Op::DeleteEdge { edge: 1 }; OPERATIONS_MAX + 1];
        let e = write(ops).validate().unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid argument tenant t: operations: 10001 operations, limit 10000"
        );
        let mut w = write(vec![]);
        w.tenant = "Bad".into();
        assert!(matches!(w.validate(), Err(ApplyError::Tenant(_))));
    }
}
