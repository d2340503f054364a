//! Who may call what, tried from the caller's side: three in-process servers with TLS on both
//! listeners and authentication on, every call sent to a follower (so writes, admin calls and
//! forwards carry the token on to the leader).
//!
//! - Every RPC and every stream call kind × {no credentials, a malformed token, an unknown one,
//!   a revoked one, an expired one, another tenant's admin token, a `read`, `write` and `admin`
//!   token of the tenant named, a cluster-admin token, a member's certificate} answers the code
//!   the credentials deserve, never INTERNAL.
//! - A tenant token's answers about another tenant are byte-identical whether that tenant
//!   exists or not.
//! - A token revoked while its stream is open is refused at the stream's next call.
//! - `cluster init` needs a member's certificate; no token's secret reaches the data
//!   directories (WAL segments, RocksDB files).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use raftgraph::proto::v1 as pb;
use raftgraph::proto::v1::cluster_service_client::ClusterServiceClient;
use raftgraph::proto::v1::graph_service_client::GraphServiceClient;
use raftgraph::proto::v1::tenant_service_client::TenantServiceClient;
use raftgraph::proto::v1::token_service_client::TokenServiceClient;
use raftgraph::server::{Listeners, Server, ServerConfig};
use raftgraph::transport::Dialer;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request};

mod helpers;
use helpers::certs::TestCa;

const CLUSTER: &str = "auth";
const WAIT: Duration = Duration::from_secs(60);
/// One hour: the expiring token's lifetime. The servers' clock is moved past it.
const EXPIRES_IN: u64 = 3600;

/// The servers' clock: the system's plus an offset the test moves.
fn clock(offset: Arc<AtomicI64>) -> raftgraph::api::Clock {
    let system = raftgraph::server::system_clock();
    Arc::new(move || system() + offset.load(Ordering::SeqCst))
}

async fn start(ca: &TestCa, id: u64, dir: &Path, offset: Arc<AtomicI64>) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter("info,raftgraph=debug")
        .with_test_writer()
        .try_init();
    let api = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut c = ServerConfig::new(
        CLUSTER,
        id,
        api.local_addr().unwrap(),
        peer.local_addr().unwrap(),
        &dir.join(id.to_string()),
    );
    assert_eq!(c.auth, raftgraph::auth::AuthMode::On, "on by default");
    c.certs = Some(ca.member(id));
    c.raft.heartbeat_ms = 100;
    c.raft.election_timeout_min_ms = 1000;
    c.raft.election_timeout_max_ms = 2000;
    c.storage.write_buffer_bytes = 8 << 20;
    c.storage.block_cache_bytes = 8 << 20;
    c.storage.wal_segment_bytes = 8 << 20;
    c.secrets_key_file = Some(dir.join(KEYRING));
    Server::start_with_clock(c, Listeners { api, peer }, clock(offset))
        .await
        .unwrap()
}

/// The members' keyring file (one file: every member reads the same keys).
const KEYRING: &str = "secrets.keys";

/// Appends a key `id` to the keyring in `dir` (created with mode 0600).
fn add_key(dir: &Path, id: &str, byte: u8) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(dir.join(KEYRING))
        .unwrap();
    writeln!(f, "{id} {}", format!("{byte:02x}").repeat(32)).unwrap();
}

/// What a call is sent with.
#[derive(Clone, Debug)]
enum Cred {
    Nothing,
    /// The `authorization` header's value.
    Header(String),
    /// Member 1's certificate, no header.
    Member,
}

fn bearer(token: &str) -> Cred {
    Cred::Header(format!("Bearer {token}"))
}

/// Every RPC, and every kind of stream call, naming tenant `a` where it names one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Call {
    Write,
    WriteStream,
    GetNode,
    GetEdge,
    Neighbors,
    NodesByLabel,
    Scan,
    ReadStreamGetNode,
    ReadStreamGetEdge,
    ReadStreamNeighbors,
    ReadStreamNodesByLabel,
    GetTenant,
    ListTenants,
    CreateTenant,
    UpdateQuotas,
    SetRateLimits,
    SetTenantConfig,
    SetTenantEnabled,
    DeleteTenant,
    CreateTenantToken,
    CreateClusterToken,
    ListTenantTokens,
    ListAllTokens,
    RevokeTenantToken,
    Init,
    AddLearner,
    Promote,
    Remove,
    TransferLeadership,
    TriggerSnapshot,
    Status,
    GetLimits,
    SetLimits,
    RotateSecrets,
}

const CALLS: [Call; 34] = [
    Call::Write,
    Call::WriteStream,
    Call::GetNode,
    Call::GetEdge,
    Call::Neighbors,
    Call::NodesByLabel,
    Call::Scan,
    Call::ReadStreamGetNode,
    Call::ReadStreamGetEdge,
    Call::ReadStreamNeighbors,
    Call::ReadStreamNodesByLabel,
    Call::GetTenant,
    Call::ListTenants,
    Call::CreateTenant,
    Call::UpdateQuotas,
    Call::SetRateLimits,
    Call::SetTenantConfig,
    Call::SetTenantEnabled,
    Call::DeleteTenant,
    Call::CreateTenantToken,
    Call::CreateClusterToken,
    Call::ListTenantTokens,
    Call::ListAllTokens,
    Call::RevokeTenantToken,
    Call::Init,
    Call::AddLearner,
    Call::Promote,
    Call::Remove,
    Call::TransferLeadership,
    Call::TriggerSnapshot,
    Call::Status,
    Call::GetLimits,
    Call::SetLimits,
    Call::RotateSecrets,
];

/// What a call needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Needs {
    Read,
    Write,
    TenantAdmin,
    ClusterAdmin,
    /// Any authenticated caller.
    Anyone,
    /// A tenant admin (of its own tenant, the one an empty name means) or a cluster admin.
    AnyAdmin,
    /// Open to callers without credentials too (a sent token must be valid).
    Open,
    /// A member's certificate.
    MemberCertificate,
}

fn needs(c: Call) -> Needs {
    use Call::*;
    match c {
        Write | WriteStream => Needs::Write,
        GetNode
        | GetEdge
        | Neighbors
        | NodesByLabel
        | Scan
        | ReadStreamGetNode
        | ReadStreamGetEdge
        | ReadStreamNeighbors
        | ReadStreamNodesByLabel
        | GetTenant => Needs::Read,
        ListTenants => Needs::Anyone,
        CreateTenantToken | ListTenantTokens | RevokeTenantToken => Needs::TenantAdmin,
        // An empty tenant lists every token for a cluster admin, its own tenant's for a
        // tenant admin.
        ListAllTokens => Needs::AnyAdmin,
        CreateTenant | UpdateQuotas | SetRateLimits | SetTenantConfig | SetTenantEnabled
        | DeleteTenant | CreateClusterToken | AddLearner | Promote | Remove
        | TransferLeadership | TriggerSnapshot | GetLimits | SetLimits | RotateSecrets => {
            Needs::ClusterAdmin
        }
        Init => Needs::MemberCertificate,
        Status => Needs::Open,
    }
}

/// Who holds a credential, for the expectations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Holder {
    Nobody,
    Invalid,
    OtherTenantAdmin,
    Read,
    Write,
    TenantAdmin,
    ClusterAdmin,
    Member,
}

/// What a call answers, in classes: refused as unauthenticated, refused as not permitted,
/// exactly `NotFound` (another tenant's token id), or let through (any other code: the call
/// was judged on its merits, e.g. NOT_FOUND for a node that does not exist).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Answer {
    Unauthenticated,
    Denied,
    NotFound,
    Through,
}

fn expected(h: Holder, c: Call) -> Answer {
    use Answer::*;
    let n = needs(c);
    match (h, n) {
        (Holder::Invalid, _) => Unauthenticated,
        (Holder::Nobody, Needs::Open) => Through,
        (Holder::Nobody, _) => Unauthenticated,
        (Holder::Member, Needs::MemberCertificate) => Through,
        (_, Needs::MemberCertificate) => Unauthenticated,
        (_, Needs::Open | Needs::Anyone) => Through,
        (Holder::OtherTenantAdmin | Holder::TenantAdmin, Needs::AnyAdmin) => Through,
        (Holder::ClusterAdmin | Holder::Member, _) => Through,
        // Another tenant's token id: refused as if it did not exist (no oracle).
        (Holder::OtherTenantAdmin, _) if c == Call::RevokeTenantToken => NotFound,
        (Holder::OtherTenantAdmin, _) => Denied,
        (Holder::Read, Needs::Read) => Through,
        (Holder::Write, Needs::Read | Needs::Write) => Through,
        (Holder::TenantAdmin, Needs::Read | Needs::Write | Needs::TenantAdmin) => Through,
        _ => Denied,
    }
}

fn classify(code: Code) -> Answer {
    match code {
        Code::Unauthenticated => Answer::Unauthenticated,
        Code::PermissionDenied => Answer::Denied,
        Code::Internal => panic!("INTERNAL is never an answer to credentials"),
        _ => Answer::Through,
    }
}

fn fits(want: Answer, got: Code) -> bool {
    match want {
        Answer::NotFound => got == Code::NotFound,
        _ => classify(got) == want,
    }
}

struct Env {
    _dir: tempfile::TempDir,
    servers: Vec<Server>,
    offset: Arc<AtomicI64>,
    /// Trusts the CA, presents nothing.
    plain: Dialer,
    /// Presents member 1's certificate.
    member: Dialer,
    ids: AtomicU64,
    /// In front of each member's listeners, when the cluster was made with them: the members
    /// reach each other's peer listeners through these.
    proxies: Vec<helpers::proxy::Proxy>,
    ca: TestCa,
}

impl Env {
    fn addr(&self, id: u64) -> String {
        self.servers[(id - 1) as usize].local_addr().to_string()
    }

    fn channel(&self, id: u64, cred: &Cred) -> Channel {
        let d = match cred {
            Cred::Member => &self.member,
            _ => &self.plain,
        };
        d.channel(&self.addr(id)).unwrap()
    }

    fn request_id(&self) -> Option<pb::RequestId> {
        Some(pb::RequestId {
            client_id: self.ids.fetch_add(1, Ordering::SeqCst),
            sequence: 1,
            resent: false,
        })
    }

    /// Every member has applied what the leader has.
    async fn converged(&self) {
        let leader = self.leader().await;
        let index = self.servers[(leader - 1) as usize]
            .raft()
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |l| l.index);
        for s in &self.servers {
            s.raft()
                .wait(Some(WAIT))
                .applied_index_at_least(Some(index), "converged")
                .await
                .unwrap();
        }
    }

    async fn leader(&self) -> u64 {
        let m = self.servers[0]
            .raft()
            .wait(Some(WAIT))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .unwrap();
        m.current_leader.unwrap()
    }

    /// Stops member `id` and starts it again on the same addresses and data directory.
    async fn restart(&mut self, id: u64) {
        let i = (id - 1) as usize;
        let old = self.servers.remove(i);
        let config = old.config().clone();
        old.shutdown().await.unwrap();
        // A shutdown returns once the database is closed: start again at once.
        let listeners = Listeners {
            api: TcpListener::bind(config.listen).await.unwrap(),
            peer: TcpListener::bind(config.peer_listen).await.unwrap(),
        };
        let clock = clock(self.offset.clone());
        let new = Server::start_with_clock(config, listeners, clock)
            .await
            .unwrap_or_else(|e| panic!("restarting member {id}: {e}"));
        self.servers.insert(i, new);
    }

    /// A member that does not lead.
    async fn follower(&self) -> u64 {
        let l = self.leader().await;
        if l == 1 { 2 } else { 1 }
    }
}

fn req<T>(cred: &Cred, msg: T) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(Duration::from_secs(20));
    if let Cred::Header(h) = cred {
        r.metadata_mut().insert("authorization", h.parse().unwrap());
    }
    r
}

fn code<T>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

fn create_node(tenant: &str) -> Vec<pb::Operation> {
    let _ = tenant;
    vec![pb::Operation {
        op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
            labels: vec!["L".into()],
            properties: Default::default(),
        })),
    }]
}

/// One read-stream call on a stream of its own: the stream's refusal or the call's answer.
async fn read_stream(ch: Channel, cred: &Cred, read: pb::read_call::Read) -> (Code, String) {
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::ReadCall {
        call_id: 1,
        timeout_ms: 20_000,
        read: Some(read),
    })
    .await
    .unwrap();
    drop(tx);
    let mut answers = match GraphServiceClient::new(ch)
        .read_stream(req(cred, ReceiverStream::new(rx)))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return (s.code(), s.message().to_string()),
    };
    match answers.message().await {
        Ok(Some(pb::ReadAnswer {
            result: Some(pb::read_answer::Result::Error(e)),
            ..
        })) => (Code::from(e.code), e.message),
        Ok(Some(_)) => (Code::Ok, String::new()),
        Ok(None) => panic!("read stream closed without an answer"),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

/// One write-stream call on a stream of its own.
async fn write_stream(ch: Channel, cred: &Cred, write: pb::WriteRequest) -> (Code, String) {
    let (tx, rx) = mpsc::channel(1);
    tx.send(pb::WriteCall {
        call_id: 1,
        timeout_ms: 20_000,
        write: Some(write),
    })
    .await
    .unwrap();
    drop(tx);
    let mut answers = match GraphServiceClient::new(ch)
        .write_stream(req(cred, ReceiverStream::new(rx)))
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => return (s.code(), s.message().to_string()),
    };
    match answers.message().await {
        Ok(Some(pb::WriteAnswer { error: Some(e), .. })) => (Code::from(e.code), e.message),
        Ok(Some(_)) => (Code::Ok, String::new()),
        Ok(None) => panic!("write stream closed without an answer"),
        Err(s) => (s.code(), s.message().to_string()),
    }
}

/// Sends `call` naming `tenant` to member `to` with `cred`; `revoke` is the token id a
/// revoke names.
async fn send(
    env: &Env,
    to: u64,
    cred: &Cred,
    call: Call,
    tenant: &str,
    revoke: &str,
) -> (Code, String) {
    use pb::read_call::Read;
    let ch = env.channel(to, cred);
    let t = tenant.to_string();
    let lin = pb::Consistency::Linearizable as i32;
    let write = || pb::WriteRequest {
        tenant: t.clone(),
        request_id: env.request_id(),
        preconditions: vec![],
        operations: create_node(tenant),
    };
    let mut graph = GraphServiceClient::new(ch.clone());
    let mut tenants = TenantServiceClient::new(ch.clone());
    let mut tokens = TokenServiceClient::new(ch.clone());
    let mut cluster = ClusterServiceClient::new(ch.clone());
    match call {
        Call::Write => code(graph.write(req(cred, write())).await),
        Call::WriteStream => write_stream(ch, cred, write()).await,
        Call::GetNode => code(
            graph
                .get_node(req(
                    cred,
                    pb::GetNodeRequest {
                        tenant: t,
                        id: 1,
                        consistency: lin,
                    },
                ))
                .await,
        ),
        Call::GetEdge => code(
            graph
                .get_edge(req(
                    cred,
                    pb::GetEdgeRequest {
                        tenant: t,
                        id: 1,
                        consistency: lin,
                    },
                ))
                .await,
        ),
        Call::Neighbors => code(
            graph
                .neighbors(req(
                    cred,
                    pb::NeighborsRequest {
                        tenant: t,
                        node: 1,
                        ..Default::default()
                    },
                ))
                .await,
        ),
        Call::NodesByLabel => code(
            graph
                .nodes_by_label(req(
                    cred,
                    pb::NodesByLabelRequest {
                        tenant: t,
                        label: "L".into(),
                        ..Default::default()
                    },
                ))
                .await,
        ),
        Call::Scan => match graph
            .scan(req(
                cred,
                pb::ScanRequest {
                    tenant: t,
                    ..Default::default()
                },
            ))
            .await
        {
            Err(s) => (s.code(), s.message().to_string()),
            Ok(r) => {
                let mut items = r.into_inner();
                match items.message().await {
                    Ok(_) => (Code::Ok, String::new()),
                    Err(s) => (s.code(), s.message().to_string()),
                }
            }
        },
        Call::ReadStreamGetNode => {
            let m = pb::GetNodeRequest {
                tenant: t,
                id: 1,
                consistency: lin,
            };
            read_stream(ch, cred, Read::GetNode(m)).await
        }
        Call::ReadStreamGetEdge => {
            let m = pb::GetEdgeRequest {
                tenant: t,
                id: 1,
                consistency: lin,
            };
            read_stream(ch, cred, Read::GetEdge(m)).await
        }
        Call::ReadStreamNeighbors => {
            let m = pb::NeighborsRequest {
                tenant: t,
                node: 1,
                ..Default::default()
            };
            read_stream(ch, cred, Read::Neighbors(m)).await
        }
        Call::ReadStreamNodesByLabel => {
            let m = pb::NodesByLabelRequest {
                tenant: t,
                label: "L".into(),
                ..Default::default()
            };
            read_stream(ch, cred, Read::NodesByLabel(m)).await
        }
        Call::GetTenant => code(
            tenants
                .get_tenant(req(
                    cred,
                    pb::GetTenantRequest {
                        id: t,
                        consistency: lin,
                    },
                ))
                .await,
        ),
        Call::ListTenants => code(
            tenants
                .list_tenants(req(cred, pb::ListTenantsRequest::default()))
                .await,
        ),
        Call::CreateTenant => code(
            tenants
                .create_tenant(req(
                    cred,
                    pb::CreateTenantRequest {
                        request_id: env.request_id(),
                        id: t,
                        ..Default::default()
                    },
                ))
                .await,
        ),
        Call::UpdateQuotas => code(
            tenants
                .update_quotas(req(
                    cred,
                    pb::UpdateQuotasRequest {
                        request_id: env.request_id(),
                        id: t,
                        quotas: Some(pb::Quotas::default()),
                    },
                ))
                .await,
        ),
        Call::SetRateLimits => code(
            tenants
                .set_rate_limits(req(
                    cred,
                    pb::SetRateLimitsRequest {
                        request_id: env.request_id(),
                        id: t,
                        rate_limits: None,
                    },
                ))
                .await,
        ),
        Call::SetTenantConfig => code(
            tenants
                .set_tenant_config(req(
                    cred,
                    pb::SetTenantConfigRequest {
                        request_id: env.request_id(),
                        id: t,
                        config: Some(pb::TenantConfig::default()),
                    },
                ))
                .await,
        ),
        Call::SetTenantEnabled => code(
            tenants
                .set_tenant_enabled(req(
                    cred,
                    pb::SetTenantEnabledRequest {
                        request_id: env.request_id(),
                        id: t,
                        enabled: true,
                    },
                ))
                .await,
        ),
        Call::DeleteTenant => code(
            tenants
                .delete_tenant(req(
                    cred,
                    pb::DeleteTenantRequest {
                        request_id: env.request_id(),
                        // Never the tenant under test: a cluster admin's delete goes through.
                        id: "gone".into(),
                    },
                ))
                .await,
        ),
        Call::RotateSecrets => code(
            tenants
                .rotate_secrets(req(cred, pb::RotateSecretsRequest {}))
                .await,
        ),
        Call::CreateTenantToken => code(
            tokens
                .create_token(req(
                    cred,
                    pb::CreateTokenRequest {
                        tenant: t,
                        role: pb::Role::Read as i32,
                        expires_in_seconds: 0,
                    },
                ))
                .await,
        ),
        Call::CreateClusterToken => code(
            tokens
                .create_token(req(
                    cred,
                    pb::CreateTokenRequest {
                        tenant: String::new(),
                        role: pb::Role::ClusterAdmin as i32,
                        expires_in_seconds: 0,
                    },
                ))
                .await,
        ),
        Call::ListTenantTokens => code(
            tokens
                .list_tokens(req(
                    cred,
                    pb::ListTokensRequest {
                        tenant: t,
                        ..Default::default()
                    },
                ))
                .await,
        ),
        Call::ListAllTokens => code(
            tokens
                .list_tokens(req(cred, pb::ListTokensRequest::default()))
                .await,
        ),
        Call::RevokeTenantToken => code(
            tokens
                .revoke_token(req(cred, pb::RevokeTokenRequest { id: revoke.into() }))
                .await,
        ),
        Call::Init => code(
            cluster
                .init(req(cred, pb::InitRequest { members: vec![] }))
                .await,
        ),
        Call::AddLearner => code(
            cluster
                .add_learner(req(
                    cred,
                    pb::AddLearnerRequest {
                        member: Some(pb::Member::default()),
                        wait: false,
                    },
                ))
                .await,
        ),
        Call::Promote => code(
            cluster
                .promote(req(cred, pb::PromoteRequest { ids: vec![9] }))
                .await,
        ),
        Call::Remove => code(
            cluster
                .remove(req(cred, pb::RemoveRequest { ids: vec![9] }))
                .await,
        ),
        Call::TransferLeadership => code(
            cluster
                .transfer_leadership(req(cred, pb::TransferLeadershipRequest { to: 9 }))
                .await,
        ),
        Call::TriggerSnapshot => code(
            cluster
                .trigger_snapshot(req(cred, pb::TriggerSnapshotRequest {}))
                .await,
        ),
        Call::Status => code(cluster.status(req(cred, pb::StatusRequest {})).await),
        Call::GetLimits => code(cluster.get_limits(req(cred, pb::GetLimitsRequest {})).await),
        // The value it has already: the cells after this one run under the same limits.
        Call::SetLimits => code(
            cluster
                .set_limits(req(
                    cred,
                    pb::SetLimitsRequest {
                        request_id: env.request_id(),
                        tenants_max: Some(256),
                        ..Default::default()
                    },
                ))
                .await,
        ),
    }
}

/// A token made with `admin`'s credentials, through member `to`.
async fn make_token(
    env: &Env,
    to: u64,
    admin: &Cred,
    tenant: &str,
    role: pb::Role,
    expires: u64,
) -> pb::CreateTokenResponse {
    TokenServiceClient::new(env.channel(to, admin))
        .create_token(req(
            admin,
            pb::CreateTokenRequest {
                tenant: tenant.into(),
                role: role as i32,
                expires_in_seconds: expires,
            },
        ))
        .await
        .unwrap()
        .into_inner()
}

async fn create_tenant(env: &Env, admin: &Cred, id: &str) {
    let to = env.leader().await;
    TenantServiceClient::new(env.channel(to, admin))
        .create_tenant(req(
            admin,
            pb::CreateTenantRequest {
                request_id: env.request_id(),
                id: id.into(),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
}

/// Three members, initialised with member 1's certificate; the first admin token.
async fn cluster() -> (Env, String) {
    cluster_on(false).await
}

/// [`cluster`], the members' peer links through proxies if `proxied`.
async fn cluster_on(proxied: bool) -> (Env, String) {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir.path().join("certs"), CLUSTER);
    let offset = Arc::new(AtomicI64::new(0));
    add_key(dir.path(), "k1", 0x11);
    let mut servers = Vec::new();
    for id in 1..=3 {
        servers.push(start(&ca, id, dir.path(), offset.clone()).await);
    }
    let mut proxies = Vec::new();
    if proxied {
        for s in &servers {
            proxies.push(helpers::proxy::proxy(s.local_addr(), s.peer_local_addr()).await);
        }
    }
    let env = Env {
        proxies,
        plain: ca.dialer(),
        member: ca.dialer_as(&ca.member(1)),
        _dir: dir,
        servers,
        offset,
        ids: AtomicU64::new(1),
        ca,
    };
    let members: Vec<pb::Member> = env
        .servers
        .iter()
        .enumerate()
        .map(|(i, s)| pb::Member {
            id: s.config().member_id,
            addr: s.local_addr().to_string(),
            peer_addr: match env.proxies.get(i) {
                Some(p) => p.peer_addr.to_string(),
                None => s.peer_local_addr().to_string(),
            },
        })
        .collect();
    let init = |cred: Cred| {
        let members = members.clone();
        let ch = env.channel(1, &cred);
        async move {
            ClusterServiceClient::new(ch)
                .init(req(&cred, pb::InitRequest { members }))
                .await
        }
    };
    // No certificate, or one that names no member: refused, nothing initialised.
    let (c, m) = code(init(Cred::Nothing).await);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    assert!(m.contains("member's certificate"), "{m}");
    let (cert, key) = env.ca.client("operator");
    let outsider = Dialer::default().with_tls(Arc::new({
        let c = raftgraph::tls::client_config_from_files(&env.ca.ca_path(), Some((&cert, &key)))
            .unwrap();
        move || c.clone()
    }));
    let r = ClusterServiceClient::new(outsider.channel(&env.addr(1)).unwrap())
        .init(pb::InitRequest {
            members: members.clone(),
        })
        .await;
    assert_eq!(code(r).0, Code::Unauthenticated);
    assert!(
        env.servers[0]
            .raft()
            .metrics()
            .borrow_watched()
            .membership_config
            .membership()
            .voter_ids()
            .next()
            .is_none()
    );
    // Member 1's certificate: initialised, with the first cluster-admin token.
    let r = init(Cred::Member).await.unwrap().into_inner();
    assert!(r.admin_token_error.is_empty(), "{}", r.admin_token_error);
    assert!(r.admin_token.starts_with("rgt_"));
    assert_eq!(&r.admin_token[4..20], r.admin_token_id);
    env.leader().await;
    (env, r.admin_token)
}

/// Every file under `dir`, read whole. The members are running: a directory or file removed
/// while the walk goes (a checkpoint replaced, a received snapshot cleaned up) is skipped.
fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return out,
        Err(e) => panic!("reading {}: {e}", dir.display()),
    };
    for e in entries {
        let Ok(e) = e else { continue };
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            out.extend(files(&p));
        } else if let Ok(b) = std::fs::read(&p) {
            out.push((p, b));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_call_answers_what_its_credentials_allow() {
    let (env, admin_token) = cluster().await;
    let admin = bearer(&admin_token);
    create_tenant(&env, &admin, "a").await;
    create_tenant(&env, &admin, "b").await;
    let leader = env.leader().await;
    let token = |tenant: &'static str, role: pb::Role, expires: u64| {
        let (env, admin) = (&env, admin.clone());
        async move { make_token(env, leader, &admin, tenant, role, expires).await }
    };
    let read = token("a", pb::Role::Read, 0).await;
    let write = token("a", pb::Role::Write, 0).await;
    let tenant_admin = token("a", pb::Role::Admin, 0).await;
    let other = token("b", pb::Role::Admin, 0).await;
    let expiring = token("a", pb::Role::Admin, EXPIRES_IN).await;
    let revoked = token("a", pb::Role::Admin, 0).await;
    TokenServiceClient::new(env.channel(leader, &admin))
        .revoke_token(req(
            &admin,
            pb::RevokeTokenRequest {
                id: revoked.info.as_ref().unwrap().id.clone(),
            },
        ))
        .await
        .unwrap();
    // The expiring token works until the clock passes its expiry.
    let (c, m) = send(
        &env,
        leader,
        &bearer(&expiring.token),
        Call::GetTenant,
        "a",
        "",
    )
    .await;
    assert_eq!(c, Code::Ok, "{m}");
    env.offset
        .store(2 * EXPIRES_IN as i64 * 1_000_000, Ordering::SeqCst);
    // A well-formed token nobody made: the admin token with its secret changed.
    let mut unknown = admin_token.clone().into_bytes();
    let last = unknown.len() - 1;
    unknown[last] = if unknown[last] == b'0' { b'1' } else { b'0' };
    let unknown = String::from_utf8(unknown).unwrap();
    let holders = [
        (Holder::Nobody, Cred::Nothing),
        (Holder::Invalid, Cred::Header("Bearer not-a-token".into())),
        (Holder::Invalid, Cred::Header(admin_token.clone())), // no scheme
        (Holder::Invalid, bearer(&unknown)),
        (Holder::Invalid, bearer(&revoked.token)),
        (Holder::Invalid, bearer(&expiring.token)),
        (Holder::OtherTenantAdmin, bearer(&other.token)),
        (Holder::Read, bearer(&read.token)),
        (Holder::Write, bearer(&write.token)),
        (Holder::TenantAdmin, bearer(&tenant_admin.token)),
        (Holder::ClusterAdmin, admin.clone()),
        (Holder::Member, Cred::Member),
    ];
    env.converged().await;
    let to = env.follower().await;
    let mut failures = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (holder, cred) in &holders {
        for call in CALLS {
            // Each revoke names a fresh token of tenant a: a revoke that goes through finds it.
            let victim = token("a", pb::Role::Read, 0).await;
            let victim = victim.info.unwrap().id;
            let (got, msg) = send(&env, to, cred, call, "a", &victim).await;
            let want = expected(*holder, call);
            *counts.entry(format!("{:?}", classify(got))).or_default() += 1;
            if !fits(want, got) {
                failures.push(format!(
                    "{holder:?} {call:?}: want {want:?}, got {got:?}: {msg}"
                ));
            }
            for secret in [&admin_token[21..], &read.token[21..], &other.token[21..]] {
                assert!(
                    !msg.contains(secret),
                    "{holder:?} {call:?} echoed a token: {msg}"
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cells wrong:\n{}",
        failures.len(),
        holders.len() * CALLS.len(),
        failures.join("\n")
    );
    eprintln!(
        "answers by class over {} cells: {counts:?}",
        holders.len() * CALLS.len()
    );

    // Tokens reach neither the log nor RocksDB: only their hashes do.
    let made = [
        &admin_token,
        &read.token,
        &write.token,
        &tenant_admin.token,
        &other.token,
    ];
    for (path, bytes) in files(env._dir.path()) {
        if path.starts_with(env._dir.path().join("certs")) {
            continue;
        }
        for t in made {
            let secret = &t[21..];
            let raw: Vec<u8> = (0..32)
                .map(|i| u8::from_str_radix(&secret[2 * i..2 * i + 2], 16).unwrap())
                .collect();
            let hit = bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
                || bytes.windows(raw.len()).any(|w| w == raw.as_slice());
            assert!(!hit, "{} holds a token's secret", path.display());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_tenant_answers_alike_whether_it_exists_or_not() {
    let (env, admin_token) = cluster().await;
    let admin = bearer(&admin_token);
    create_tenant(&env, &admin, "a").await;
    let leader = env.leader().await;
    let mine = bearer(
        &make_token(&env, leader, &admin, "a", pb::Role::Admin, 0)
            .await
            .token,
    );
    env.converged().await;
    let to = env.follower().await;
    let tenant_calls: Vec<Call> = CALLS
        .into_iter()
        .filter(|c| matches!(needs(*c), Needs::Read | Needs::Write | Needs::TenantAdmin))
        .filter(|c| *c != Call::RevokeTenantToken)
        .collect();
    let mut before = Vec::new();
    for c in &tenant_calls {
        before.push(send(&env, to, &mine, *c, "c", "").await);
    }
    create_tenant(&env, &admin, "c").await;
    env.converged().await;
    for (c, b) in tenant_calls.iter().zip(&before) {
        assert_eq!(b.0, Code::PermissionDenied, "{c:?}: {}", b.1);
        let after = send(&env, to, &mine, *c, "c", "").await;
        assert_eq!(&after, b, "{c:?}: tenant c's existence shows");
    }
    // A tenant token lists its own tenant only.
    let page = TenantServiceClient::new(env.channel(to, &mine))
        .list_tenants(req(&mine, pb::ListTenantsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<_> = page.tenants.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(ids, ["a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_revoked_under_an_open_stream_is_refused_at_its_next_call() {
    let (env, admin_token) = cluster().await;
    let admin = bearer(&admin_token);
    create_tenant(&env, &admin, "a").await;
    let leader = env.leader().await;
    let made = make_token(&env, leader, &admin, "a", pb::Role::Write, 0).await;
    env.converged().await;
    let cred = bearer(&made.token);
    let (tx, rx) = mpsc::channel(4);
    let mut answers = GraphServiceClient::new(env.channel(leader, &cred))
        .write_stream(req(&cred, ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let call = |id| pb::WriteCall {
        call_id: id,
        timeout_ms: 20_000,
        write: Some(pb::WriteRequest {
            tenant: "a".into(),
            request_id: env.request_id(),
            preconditions: vec![],
            operations: create_node("a"),
        }),
    };
    tx.send(call(1)).await.unwrap();
    let first = answers.message().await.unwrap().unwrap();
    assert!(first.error.is_none(), "{:?}", first.error);
    TokenServiceClient::new(env.channel(leader, &admin))
        .revoke_token(req(
            &admin,
            pb::RevokeTokenRequest {
                id: made.info.unwrap().id,
            },
        ))
        .await
        .unwrap();
    tx.send(call(2)).await.unwrap();
    let second = answers.message().await.unwrap().unwrap();
    let e = second.error.expect("refused");
    assert_eq!(Code::from(e.code), Code::Unauthenticated, "{}", e.message);
    assert!(e.message.contains("unknown or revoked"), "{}", e.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scan_stops_at_its_next_page_once_its_token_is_revoked() {
    let (env, admin_token) = cluster().await;
    let admin = bearer(&admin_token);
    create_tenant(&env, &admin, "a").await;
    let leader = env.leader().await;
    // 2,000 nodes of 4 KiB: more than the transport holds for a client that has not read them
    // (what the server computed ahead is sent; the recheck stops the pages after it).
    const NODES: usize = 2_000;
    let big = pb::Value {
        kind: Some(pb::value::Kind::StringValue("x".repeat(4096))),
    };
    let op = pb::Operation {
        op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
            labels: vec![],
            properties: [("p".to_string(), big)].into(),
        })),
    };
    GraphServiceClient::new(env.channel(leader, &admin))
        .max_encoding_message_size(16 << 20)
        .write(req(
            &admin,
            pb::WriteRequest {
                tenant: "a".into(),
                request_id: env.request_id(),
                preconditions: vec![],
                operations: vec![op; NODES],
            },
        ))
        .await
        .unwrap();
    let made = make_token(&env, leader, &admin, "a", pb::Role::Read, 0).await;
    let cred = bearer(&made.token);
    let mut items = GraphServiceClient::new(env.channel(leader, &cred))
        .scan(req(
            &cred,
            pb::ScanRequest {
                tenant: "a".into(),
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(items.message().await.unwrap().is_some(), "the first page");
    TokenServiceClient::new(env.channel(leader, &admin))
        .revoke_token(req(
            &admin,
            pb::RevokeTokenRequest {
                id: made.info.unwrap().id,
            },
        ))
        .await
        .unwrap();
    let mut after = 0;
    let e = loop {
        match items.message().await {
            Ok(Some(_)) => after += 1,
            Ok(None) => panic!("the whole scan ({after} items after the revocation) was served"),
            Err(e) => break e,
        }
    };
    assert_eq!(e.code(), Code::Unauthenticated, "{}", e.message());
    assert!(after < NODES - 1, "{after} items after the revocation");
    eprintln!("{after} of {NODES} items were sent after the revocation (computed ahead)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarding_members_certificate_is_no_callers_credential() {
    let (env, admin_token) = cluster().await;
    let admin = bearer(&admin_token);
    let leader = env.leader().await;
    // A call that claims to be forwarded, with a member's certificate and no token: what a
    // member that does not authenticate its callers (auth = "off") would send on. Refused.
    let forwarded = |as_member: bool| {
        let mut r = req(&Cred::Member, pb::ListTenantsRequest::default());
        r.metadata_mut()
            .insert("x-raftgraph-forwarded", "1".parse().unwrap());
        if as_member {
            r.metadata_mut()
                .insert("x-raftgraph-member-caller", "1".parse().unwrap());
        }
        r
    };
    let r = TenantServiceClient::new(env.channel(leader, &Cred::Member))
        .list_tenants(forwarded(false))
        .await;
    let (c, m) = code(r);
    assert_eq!(c, Code::Unauthenticated, "{m}");
    // Said to be on behalf of a member's certificate: the forwarding member's counts.
    let r = TenantServiceClient::new(env.channel(leader, &Cred::Member))
        .list_tenants(forwarded(true))
        .await;
    assert_eq!(code(r).0, Code::Ok);
    // Through a follower, a caller with a member's certificate and one with a token both get
    // through; the forward carries what they authenticated with.
    let to = env.follower().await;
    for cred in [Cred::Member, admin.clone()] {
        let (c, m) = send(&env, to, &cred, Call::CreateTenant, "viaf", "").await;
        assert!(
            c == Code::Ok || c == Code::AlreadyExists,
            "{cred:?}: {c:?} {m}"
        );
    }

    // A removed member's certificate is no principal once the removal is applied.
    let ca_dir = env._dir.path().join("certs");
    let files = raftgraph::tls::CertFiles {
        ca: ca_dir.join("ca.pem"),
        cert: ca_dir.join(format!("member-3-{CLUSTER}.pem")),
        key: ca_dir.join(format!("member-3-{CLUSTER}.key")),
    };
    let c = raftgraph::tls::client_config_from_files(&files.ca, Some((&files.cert, &files.key)))
        .unwrap();
    let as3 = Dialer::default().with_tls(Arc::new(move || c.clone()));
    let list = |d: Dialer, to: u64| {
        let addr = env.addr(to);
        async move {
            TenantServiceClient::new(d.channel(&addr).unwrap())
                .list_tenants(pb::ListTenantsRequest::default())
                .await
        }
    };
    assert_eq!(
        code(list(as3.clone(), leader).await).0,
        Code::Ok,
        "a member: admin"
    );
    let r = ClusterServiceClient::new(env.channel(leader, &admin))
        .remove(req(&admin, pb::RemoveRequest { ids: vec![3] }))
        .await;
    assert!(r.is_ok(), "{r:?}");
    let leader = env.leader().await;
    let (c, m) = code(list(as3, leader).await);
    assert_eq!(c, Code::Unauthenticated, "a removed member: {m}");
}

/// A cluster, its cluster-admin credential, and tenant `tenant` with a token of `role`.
async fn cluster_with(tenant: &str, role: pb::Role) -> (Env, Cred, String) {
    let (env, admin) = cluster().await;
    let admin = bearer(&admin);
    create_tenant(&env, &admin, tenant).await;
    let leader = env.leader().await;
    let token = make_token(&env, leader, &admin, tenant, role, 0)
        .await
        .token;
    (env, admin, token)
}

/// Sets the replicated limit on sessions per principal.
async fn limit_sessions(env: &Env, admin: &Cred, max: u64) {
    let to = env.leader().await;
    let l = ClusterServiceClient::new(env.channel(to, admin))
        .set_limits(req(
            admin,
            pb::SetLimitsRequest {
                request_id: env.request_id(),
                sessions_per_principal_max: Some(max),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(l.sessions_per_principal_max, max);
}

/// Nodes labelled `label` in `tenant`, read by `cred` (one page).
async fn count(env: &Env, cred: &Cred, tenant: &str, label: &str) -> usize {
    let to = env.leader().await;
    GraphServiceClient::new(env.channel(to, cred))
        .nodes_by_label(req(
            cred,
            pb::NodesByLabelRequest {
                tenant: tenant.into(),
                label: label.into(),
                limit: 1_000,
                consistency: pb::Consistency::Linearizable as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .nodes
        .len()
}

/// The session attacks, over the network: a token that learned another's client id can
/// neither push that session's sequence nor replay it, and its junk writes under fresh ids
/// evict only its own sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tokens_sessions_are_its_own() {
    let (env, admin, first_token) = cluster_with("s", pb::Role::Write).await;
    let leader = env.leader().await;
    let second = make_token(&env, leader, &admin, "s", pb::Role::Write, 0).await;
    let (w1, w2) = (&bearer(&first_token), &bearer(&second.token));
    limit_sessions(&env, &admin, 3).await;
    // The follower checks tokens against its own state: wait until it has both.
    env.converged().await;
    let to = env.follower().await;
    let write = |cred: &Cred, client_id: u64, sequence: u64| {
        let (ch, cred) = (env.channel(to, cred), cred.clone());
        async move {
            GraphServiceClient::new(ch)
                .write(req(
                    &cred,
                    pb::WriteRequest {
                        tenant: "s".into(),
                        request_id: Some(pb::RequestId {
                            client_id,
                            sequence,
                            resent: false,
                        }),
                        preconditions: vec![],
                        operations: create_node("s"),
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let first = write(w1, 77, 1).await.unwrap();
    // w2 learned client id 77: it cannot push that session far ahead, and its sequence 1
    // under 77 is a request of its own, not a replay of w1's answer.
    let (c, m) = code(write(w2, 77, 1_000_000).await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
    assert!(m.contains("session expired"), "{m}");
    let own = write(w2, 77, 1).await.unwrap();
    assert_ne!(own, first, "w2's write is its own");
    // w2's junk under fresh ids, many past the limit of 3 per token.
    for client in 1_000..1_020 {
        write(w2, client, 1).await.unwrap();
    }
    // w1's session survived: its retry is answered from it (nothing applied again) and it
    // goes on where it was.
    let before = count(&env, &admin, "s", "L").await;
    assert_eq!(write(w1, 77, 1).await.unwrap(), first);
    assert_eq!(count(&env, &admin, "s", "L").await, before);
    write(w1, 77, 2).await.unwrap();
    assert_eq!(count(&env, &admin, "s", "L").await, before + 1);
    // And w2's own oldest session went: its retry under 1,000 at sequence 2 is a gap.
    let (c, m) = code(write(w2, 1_000, 2).await);
    assert_eq!(c, Code::FailedPrecondition, "{m}");
}

/// The duplicate: a write applies but its answer is lost; the token's other clients
/// then push its session out; the retry is refused as expired. The client must not send it
/// again in a new session (it would apply twice): it reports an unknown outcome, and the graph
/// holds the write once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_applied_then_evicted_is_not_applied_twice() {
    use raftgraph::client::{Client, ClientOptions, Pool, is_outcome_unknown};
    let (env, admin, token) = cluster_with("lost", pb::Role::Write).await;
    let leader = env.leader().await;
    limit_sessions(&env, &admin, 2).await;
    // A stand-in in front of the leader that, when told to, loses the answer of a write it
    // forwarded, after the same token has written under three fresh client ids.
    let lose = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let upstream = env.channel(leader, &Cred::Nothing);
    let proxy = {
        let lose = lose.clone();
        helpers::stand_in::serve(Arc::new(move |request: Request<pb::WriteRequest>| {
            let (lose, upstream) = (lose.clone(), upstream.clone());
            let auth = request.metadata().get("authorization").cloned();
            let msg = request.into_inner();
            Box::pin(async move {
                let send = |msg: pb::WriteRequest| {
                    let mut r = Request::new(msg);
                    if let Some(a) = &auth {
                        r.metadata_mut().insert("authorization", a.clone());
                    }
                    let mut c = GraphServiceClient::new(upstream.clone());
                    async move { c.write(r).await }
                };
                let answer = send(msg.clone()).await?.into_inner();
                if !lose.swap(false, Ordering::SeqCst) {
                    return Ok(answer);
                }
                for client_id in 5_000..5_003 {
                    let junk = pb::WriteRequest {
                        request_id: Some(pb::RequestId {
                            client_id,
                            sequence: 1,
                            resent: false,
                        }),
                        ..msg.clone()
                    };
                    send(junk).await?;
                }
                Err(tonic::Status::unavailable("the answer was lost"))
            })
        }))
        .await
    };
    let client = Client::new(
        vec![proxy],
        ClientOptions {
            client_id: Some(4242),
            attempt_timeout: Duration::from_secs(20),
            deadline: Duration::from_secs(60),
            write_stream: false,
            read_stream: false,
            pool: Pool::new(Dialer::default()).with_token(&token).unwrap(),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let write = || pb::WriteRequest {
        tenant: "lost".into(),
        operations: vec![pb::Operation {
            op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
                labels: vec!["Once".into()],
                properties: Default::default(),
            })),
        }],
        ..Default::default()
    };
    client.write(write()).await.unwrap();
    lose.store(true, Ordering::SeqCst);
    let e = client.write(write()).await.unwrap_err();
    assert!(is_outcome_unknown(&e), "{e:?}");
    // The first write and the lost one, each once; and the junk (3 nodes, same label).
    assert_eq!(count(&env, &admin, "lost", "Once").await, 2 + 3);
}

/// Secrets sealed at rest, from the outside: API keys set through a follower are nowhere in
/// the data directories as plain bytes (WAL segments, RocksDB files, snapshot streams), reads
/// only say a key is set, and after a new key is added to every member's keyring (a rolling
/// restart) `RotateSecrets` re-seals every secret under it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn planted_api_keys_are_sealed_everywhere_at_rest_and_rotate() {
    let (mut env, admin) = cluster().await;
    let admin = bearer(&admin);
    let plants = ["sk-PLANTED-llm-c0ffee-4242", "sk-PLANTED-tool-beef-9191"];
    // The follower checks the admin token against its own state: wait until it has the token.
    env.converged().await;
    let to = env.follower().await;
    let provider = |key: &str| pb::LlmProviderConfig {
        provider: pb::LlmProvider::Anthropic as i32,
        model: "m".into(),
        api_key: Some(key.into()),
        ..Default::default()
    };
    TenantServiceClient::new(env.channel(to, &admin))
        .create_tenant(req(
            &admin,
            pb::CreateTenantRequest {
                request_id: env.request_id(),
                id: "vault".into(),
                config: Some(pb::TenantConfig {
                    llm: Some(provider(plants[0])),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    let config = pb::TenantConfig {
        llm: Some(provider(plants[0])),
        tools: vec![pb::ToolConfig {
            name: "search".into(),
            api_key: Some(plants[1].into()),
            ..Default::default()
        }],
        ..Default::default()
    };
    let set_config = |env: &Env| {
        let (ch, admin, config) = (env.channel(to, &admin), admin.clone(), config.clone());
        let request_id = env.request_id();
        async move {
            TenantServiceClient::new(ch)
                .set_tenant_config(req(
                    &admin,
                    pb::SetTenantConfigRequest {
                        request_id,
                        id: "vault".into(),
                        config: Some(config),
                    },
                ))
                .await
                .unwrap();
        }
    };
    set_config(&env).await;
    let read = TenantServiceClient::new(env.channel(to, &admin))
        .get_tenant(req(
            &admin,
            pb::GetTenantRequest {
                id: "vault".into(),
                consistency: pb::Consistency::Linearizable as i32,
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let llm = read.config.unwrap().llm.unwrap();
    assert_eq!((llm.api_key, llm.api_key_set), (None, true));
    // Every member builds a snapshot stream, so the search below covers one.
    env.converged().await;
    for id in 1..=3 {
        ClusterServiceClient::new(env.channel(id, &admin))
            .trigger_snapshot(req(&admin, pb::TriggerSnapshotRequest {}))
            .await
            .unwrap();
        env.servers[(id - 1) as usize]
            .raft()
            .wait(Some(WAIT))
            .metrics(|m| m.snapshot.is_some(), "a snapshot")
            .await
            .unwrap();
    }
    let no_plain_secret = |dir: &Path| {
        let all = files(dir);
        assert!(
            all.iter()
                .any(|(p, _)| p.to_string_lossy().contains("snapshot")),
            "a snapshot stream is among the files searched"
        );
        for (path, bytes) in &all {
            for plant in plants {
                assert!(
                    !bytes.windows(plant.len()).any(|w| w == plant.as_bytes()),
                    "{} holds {plant} in plain text",
                    path.display()
                );
            }
        }
    };
    no_plain_secret(env._dir.path());
    // A new key on every member (a rolling restart), then the rotation.
    add_key(env._dir.path(), "k2", 0x22);
    for id in 1..=3 {
        env.restart(id).await;
        env.leader().await;
    }
    let rotate = |env: &Env| {
        let ch = env.channel(1, &admin);
        let admin = admin.clone();
        async move {
            TenantServiceClient::new(ch)
                .rotate_secrets(req(&admin, pb::RotateSecretsRequest {}))
                .await
                .unwrap()
                .into_inner()
        }
    };
    let r = rotate(&env).await;
    assert_eq!(r.key_id, "k2");
    assert_eq!((r.tenants_changed, r.secrets_resealed), (1, 2), "{r:?}");
    assert!(r.unreadable.is_empty(), "{:?}", r.unreadable);
    env.converged().await;
    for s in &env.servers {
        let mut stored = s.reader().sealed_config("vault").unwrap();
        for (field, secret) in stored.secrets_mut() {
            let raftgraph::tenant::Secret::Sealed(sealed) = secret else {
                panic!("{field}: not sealed")
            };
            assert_eq!(sealed.key_id, "k2", "{field}");
        }
    }
    let again = rotate(&env).await;
    assert_eq!(again.secrets_resealed, 0, "{again:?}");
    // A config sent again is sealed under k2, and nowhere in plain text either.
    set_config(&env).await;
    env.converged().await;
    no_plain_secret(env._dir.path());
}

/// Sets `tenant`'s throughput limits through member `to`; the tenant as answered.
async fn set_rates(
    env: &Env,
    to: u64,
    admin: &Cred,
    tenant: &str,
    requests: Option<u64>,
    bytes: Option<u64>,
) -> Result<pb::Tenant, tonic::Status> {
    TenantServiceClient::new(env.channel(to, admin))
        .set_rate_limits(req(
            admin,
            pb::SetRateLimitsRequest {
                request_id: env.request_id(),
                id: tenant.into(),
                rate_limits: Some(pb::RateLimits {
                    requests_per_second: requests,
                    bytes_per_second: bytes,
                }),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// A write of one node labelled `label` with a `bytes`-long string property.
fn node_write(tenant: &str, env: &Env, label: &str, bytes: usize) -> pb::WriteRequest {
    let value = pb::Value {
        kind: Some(pb::value::Kind::StringValue("x".repeat(bytes))),
    };
    pb::WriteRequest {
        tenant: tenant.into(),
        request_id: env.request_id(),
        preconditions: vec![],
        operations: vec![pb::Operation {
            op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
                labels: vec![label.into()],
                properties: [("p".to_string(), value)].into_iter().collect(),
            })),
        }],
    }
}

/// A token works at once on every member: a follower whose peer links were cut while the token
/// was made, so that it has not applied it when the token first reaches it, catches up before
/// it authenticates the call (it answered UNAUTHENTICATED before); a token that does not exist
/// is still refused there after its catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_token_works_at_once_on_a_member_that_has_not_applied_it() {
    let (env, admin) = cluster_on(true).await;
    let admin = bearer(&admin);
    create_tenant(&env, &admin, "a").await;
    env.converged().await;
    let leader = env.leader().await;
    let behind = env.follower().await;
    let applied = |id: u64| {
        env.servers[(id - 1) as usize]
            .raft()
            .metrics()
            .borrow_watched()
            .last_applied
            .map_or(0, |l| l.index)
    };
    // Cut for well under an election timeout (1–2 s): the token is made meanwhile. The proxy
    // drops open connections as its tasks see the cut, so an append already on its way may
    // still pass: then the attempt is made again.
    let cut = &env.proxies[(behind - 1) as usize].cut;
    let mut made = None;
    for _ in 0..5 {
        cut.send(true).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let token = make_token(&env, leader, &admin, "a", pb::Role::Read, 0)
            .await
            .token;
        if applied(behind) < applied(leader) {
            made = Some(token);
            break;
        }
        cut.send(false).unwrap();
        env.converged().await;
    }
    let token = made.expect("member behind never missed the token in 5 attempts");
    cut.send(false).unwrap();
    // At once, on the member behind: a serializable read, which that member serves itself.
    let t = bearer(&token);
    let read = |cred: Cred| {
        let ch = env.channel(behind, &cred);
        async move {
            TenantServiceClient::new(ch)
                .get_tenant(req(
                    &cred,
                    pb::GetTenantRequest {
                        id: "a".into(),
                        consistency: pb::Consistency::Serializable as i32,
                    },
                ))
                .await
        }
    };
    let got = read(t).await;
    assert!(got.is_ok(), "member {behind}: {got:?}");
    // A token of the same form whose id nobody made: refused, after the same catch-up.
    let unknown = made_up(&token);
    let e = read(bearer(&unknown)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(
        e.message().contains("unknown or revoked"),
        "{}",
        e.message()
    );
}

/// `token` with the first digit of its id changed: well-formed, and nobody made it.
fn made_up(token: &str) -> String {
    let at = "rgt_".len();
    let digit = if &token[at..=at] == "0" { "1" } else { "0" };
    format!("{}{digit}{}", &token[..at], &token[at + 1..])
}

/// A member not added yet answers an operator's `Status`, sent with the operator's token (which
/// it cannot know), with the routing view: `cluster add-learner` learns its peer address so.
/// Once added it knows the token; a member of the cluster still refuses a token it does not
/// know.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_not_yet_added_answers_status_to_an_operators_token() {
    let (env, admin) = cluster().await;
    let admin = bearer(&admin);
    let spare = start(&env.ca, 4, env._dir.path(), env.offset.clone()).await;
    let status = |addr: String, cred: Cred| {
        let ch = env.plain.channel(&addr).unwrap();
        async move {
            ClusterServiceClient::new(ch)
                .status(req(&cred, pb::StatusRequest {}))
                .await
                .map(|r| r.into_inner())
        }
    };
    let s = status(spare.local_addr().to_string(), admin.clone())
        .await
        .unwrap();
    assert_eq!(s.member_id, 4);
    assert_eq!(s.peer_addr, spare.peer_local_addr().to_string());
    assert!(s.membership.is_none(), "the routing view only: {s:?}");
    // Added as a learner (waiting until it has caught up), it knows the token: the whole view.
    let leader = env.leader().await;
    ClusterServiceClient::new(env.channel(leader, &admin))
        .add_learner(req(
            &admin,
            pb::AddLearnerRequest {
                member: Some(pb::Member {
                    id: 4,
                    addr: spare.local_addr().to_string(),
                    peer_addr: s.peer_addr.clone(),
                }),
                wait: true,
            },
        ))
        .await
        .unwrap();
    let s = status(spare.local_addr().to_string(), admin.clone())
        .await
        .unwrap();
    assert!(s.membership.is_some(), "{s:?}");
    // A made-up token on a member: refused.
    let Cred::Header(h) = &admin else {
        unreachable!()
    };
    let token = h.trim_start_matches("Bearer ");
    let unknown = made_up(token);
    let e = status(env.addr(1), bearer(&unknown)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    spare.shutdown().await.unwrap();
}

/// The retry hint of a refusal, in milliseconds (0: none).
fn hint(s: &tonic::Status) -> u64 {
    raftgraph::client::retry_after(s).map_or(0, |d| d.as_millis() as u64)
}

/// A tenant's request rate, from the flooder's side: writes past it are refused with
/// RESOURCE_EXHAUSTED, a retry hint and nothing applied, whichever member they are sent to,
/// while another tenant writes on; the limits are replicated to every member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_tenant_is_held_to_its_request_rate() {
    let (env, admin, token) = cluster_with("a", pb::Role::Write).await;
    create_tenant(&env, &admin, "b").await;
    let leader = env.leader().await;
    let b_token = bearer(
        &make_token(&env, leader, &admin, "b", pb::Role::Write, 0)
            .await
            .token,
    );
    let a = bearer(&token);
    let follower = env.follower().await;
    let set = set_rates(&env, follower, &admin, "a", Some(2), None)
        .await
        .unwrap();
    let rates = set.rate_limits.unwrap();
    assert_eq!(
        (rates.requests_per_second, rates.bytes_per_second),
        (Some(2), None)
    );
    // Replicated: every member shows them.
    env.converged().await;
    for id in 1..=3 {
        let t = TenantServiceClient::new(env.channel(id, &admin))
            .get_tenant(req(
                &admin,
                pb::GetTenantRequest {
                    id: "a".into(),
                    consistency: pb::Consistency::Serializable as i32,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            t.rate_limits.unwrap().requests_per_second,
            Some(2),
            "member {id}"
        );
    }

    // 20 writes back to back, alternating between a follower (forwarded) and the leader.
    let started = tokio::time::Instant::now();
    let (mut admitted, mut refused) = (0u64, 0u64);
    for i in 0..20u64 {
        let to = if i % 2 == 0 { follower } else { leader };
        match GraphServiceClient::new(env.channel(to, &a))
            .write(req(&a, node_write("a", &env, "R", 10)))
            .await
        {
            Ok(_) => admitted += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
                assert!(
                    s.message().contains("tenant a") && s.message().contains("2 requests/s"),
                    "{}",
                    s.message()
                );
                let ms = hint(&s);
                assert!((1..=1000).contains(&ms), "hint {ms} ms");
                refused += 1;
            }
        }
        // Tenant b, unlimited, is never refused.
        GraphServiceClient::new(env.channel(to, &b_token))
            .write(req(&b_token, node_write("b", &env, "R", 10)))
            .await
            .unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    // A burst of one second's worth, then the rate.
    assert!(
        admitted as f64 <= 2.0 + 2.0 * secs.ceil(),
        "{admitted} admitted in {secs:.2} s"
    );
    assert!(refused > 0, "none of 20 writes in {secs:.2} s refused");
    // Refusals are answered no faster than the rate: each at least 500 ms after the last.
    assert!(
        refused as f64 <= 1.0 + 2.0 * secs,
        "{refused} refusals in {secs:.2} s"
    );
    // Calls on one write stream, back to back: refused alike once the bucket is empty, the
    // error carrying the hint.
    let (tx, rx) = mpsc::channel(32);
    for call_id in 0..20u64 {
        tx.send(pb::WriteCall {
            call_id,
            timeout_ms: 20_000,
            write: Some(node_write("a", &env, "R", 10)),
        })
        .await
        .unwrap();
    }
    drop(tx);
    let mut answers = GraphServiceClient::new(env.channel(follower, &a))
        .write_stream(req(&a, ReceiverStream::new(rx)))
        .await
        .unwrap()
        .into_inner();
    let (mut streamed, mut stream_refused) = (0u64, 0u64);
    while let Some(answer) = answers.message().await.unwrap() {
        match answer.error {
            None => streamed += 1,
            Some(e) => {
                assert_eq!(Code::from(e.code), Code::ResourceExhausted, "{e:?}");
                assert!(e.retry_pushback_ms > 0, "{e:?}");
                stream_refused += 1;
            }
        }
    }
    assert_eq!(streamed + stream_refused, 20);
    assert!(stream_refused > 0, "no call of 20 on a stream refused");

    // Unset: unlimited again (reads count against the rate too, so the checks come after).
    let t = set_rates(&env, leader, &admin, "a", None, None)
        .await
        .unwrap();
    assert_eq!(t.rate_limits.unwrap(), pb::RateLimits::default());
    // Nothing refused was applied.
    assert_eq!(count(&env, &a, "a", "R").await as u64, admitted + streamed);
    assert_eq!(count(&env, &b_token, "b", "R").await, 20);
    for _ in 0..10 {
        GraphServiceClient::new(env.channel(leader, &a))
            .write(req(&a, node_write("a", &env, "S", 10)))
            .await
            .unwrap();
    }
    // Out of range and unknown tenants are refused, naming what was wrong.
    let e = set_rates(&env, leader, &admin, "a", Some(0), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("requests_per_sec"), "{}", e.message());
    let e = set_rates(&env, leader, &admin, "a", None, Some(10))
        .await
        .unwrap_err();
    assert!(e.message().contains("bytes_per_sec"), "{}", e.message());
    let e = set_rates(&env, leader, &admin, "nope", Some(5), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
}

/// A tenant's byte rate: a write larger than a second's worth is admitted once and leaves a
/// debt that refuses the next for about a minute; a read's answer is charged after it is
/// served; another tenant's token, refused, spends nothing of the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenants_byte_rate_charges_writes_and_answers() {
    let (env, admin, token) = cluster_with("a", pb::Role::Write).await;
    let a = bearer(&token);
    create_tenant(&env, &admin, "c").await;
    let leader = env.leader().await;
    let c = bearer(
        &make_token(&env, leader, &admin, "c", pb::Role::Write, 0)
            .await
            .token,
    );
    // A node of ~60 KB in c, written while c is unlimited, to be read later.
    let created = GraphServiceClient::new(env.channel(leader, &c))
        .write(req(&c, node_write("c", &env, "Big", 60_000)))
        .await
        .unwrap()
        .into_inner();
    let big = match created.results[0].result {
        Some(pb::op_result::Result::NodeCreated(id)) => id,
        ref r => panic!("{r:?}"),
    };
    set_rates(&env, leader, &admin, "a", None, Some(1024))
        .await
        .unwrap();
    set_rates(&env, leader, &admin, "c", None, Some(1024))
        .await
        .unwrap();

    // a's token, naming c, is refused before c's rate is charged: 10 writes of 60 KB would
    // leave c ten minutes in debt.
    for _ in 0..10 {
        let e = GraphServiceClient::new(env.channel(leader, &a))
            .write(req(&a, node_write("c", &env, "Big", 60_000)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied);
    }
    // c's own write of 60 KB: admitted (the bucket was full), then ~58 s of debt.
    GraphServiceClient::new(env.channel(leader, &c))
        .write(req(&c, node_write("c", &env, "Big", 60_000)))
        .await
        .unwrap();
    let e = GraphServiceClient::new(env.channel(leader, &c))
        .write(req(&c, node_write("c", &env, "Small", 10)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("1024 bytes/s"), "{}", e.message());
    assert!(hint(&e) > 30_000, "hint {} ms", hint(&e));

    // Reads: on a follower (its own buckets), the first read of the big node is served and
    // charged its answer; the next is refused.
    let follower = env.follower().await;
    env.converged().await;
    let get = |to: u64| {
        let ch = env.channel(to, &c);
        let c = c.clone();
        async move {
            GraphServiceClient::new(ch)
                .get_node(req(
                    &c,
                    pb::GetNodeRequest {
                        tenant: "c".into(),
                        id: big,
                        consistency: pb::Consistency::Serializable as i32,
                    },
                ))
                .await
        }
    };
    get(follower).await.unwrap();
    let e = get(follower).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(hint(&e) > 30_000, "hint {} ms", hint(&e));
    let (code, _) = read_stream(
        env.channel(follower, &c),
        &c,
        pb::read_call::Read::GetNode(pb::GetNodeRequest {
            tenant: "c".into(),
            id: big,
            consistency: pb::Consistency::Serializable as i32,
        }),
    )
    .await;
    assert_eq!(code, Code::ResourceExhausted);
    // Tenant a is untouched by c's debt.
    GraphServiceClient::new(env.channel(leader, &a))
        .write(req(&a, node_write("a", &env, "Small", 10)))
        .await
        .unwrap();
    // The refused write was not applied (counted once c is unlimited again: a read is charged
    // too).
    set_rates(&env, leader, &admin, "c", None, None)
        .await
        .unwrap();
    assert_eq!(count(&env, &c, "c", "Small").await, 0);
}
