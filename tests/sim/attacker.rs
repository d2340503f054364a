//! Mallory: a client with a valid `write` token of its own tenant ([`MALLORY`]) that, through
//! each member in turn, tries every call on the other tenants' data and on the cluster
//! (reads, writes, CAS, deletes, streams, scans, tenant and token administration, membership,
//! limits), and writes its own tenant. What it is answered goes to `check_isolation`.
//!
//! After the faults stop it tries every kind again until each is refused outright, so a run
//! shows its token was valid and the refusals were authorization, not a lost connection.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use raftgraph::proto::v1 as pb;
use raftgraph::proto::v1::cluster_service_client::ClusterServiceClient;
use raftgraph::proto::v1::graph_service_client::GraphServiceClient;
use raftgraph::proto::v1::tenant_service_client::TenantServiceClient;
use raftgraph::proto::v1::token_service_client::TokenServiceClient;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::workload::{QUOTA, REGISTERS, direct, int, node_ref, op};
use super::world::{CONVERGE_MS, NODES, Shared, addr, now_ms, peer_addr};

/// Mallory's own tenant.
pub const MALLORY: &str = "m";
/// The label of every node Mallory tries to create, and the value it tries to write.
pub const MARK: &str = "mallory";
pub const MARK_VALUE: i64 = -0x6d61_6c6c;

/// What Mallory was answered.
#[derive(Default)]
pub struct Attempts {
    /// Calls on others' data or the cluster answered other than with a refusal or a transport
    /// error: `kind via node: code: message` (or what an OK answer held).
    pub leaks: Vec<String>,
    /// Kinds refused with PERMISSION_DENIED at least once.
    pub denied: BTreeSet<&'static str>,
    /// Calls refused (PERMISSION_DENIED or UNAUTHENTICATED), and in doubt (transport).
    pub refused: u64,
    pub in_doubt: u64,
    /// Its own tenant's writes that succeeded.
    pub own_ok: u64,
    /// Why the final round did not finish, if it did not.
    pub unfinished: Option<String>,
}

/// Every kind of call Mallory tries on others.
pub const KINDS: [&str; 32] = [
    "write",
    "cas",
    "delete",
    "write_stream",
    "get_node",
    "get_edge",
    "neighbors",
    "nodes_by_label",
    "scan",
    "read_stream",
    "get_tenant",
    "list_tenants",
    "create_tenant",
    "update_quotas",
    "set_rate_limits",
    "set_tenant_config",
    "disable_tenant",
    "delete_tenant",
    "create_token",
    "create_cluster_token",
    "create_own_admin_token",
    "list_tokens",
    "list_all_tokens",
    "revoke_token",
    "add_learner",
    "promote",
    "remove",
    "transfer_leadership",
    "trigger_snapshot",
    "get_limits",
    "set_limits",
    "rotate_secrets",
];

/// How a call ended, as the check sees it.
enum Answer {
    /// OK: what it held (a leak unless the kind allows it).
    Ok(String),
    Err(Status),
}

thread_local! {
    /// Client ids of Mallory's requests: each its own session (the simulation runs on one
    /// thread; the ids are the same in every run of a seed).
    static NEXT_CLIENT: std::cell::Cell<u64> = const { std::cell::Cell::new(0x6d61_0000_0000_0000) };
}

/// A fresh request id (a new session, sequence 1), so a request that got through would apply.
fn rid() -> Option<pb::RequestId> {
    let client_id = NEXT_CLIENT.with(|c| {
        let id = c.get() + 1;
        c.set(id);
        id
    });
    Some(pb::RequestId {
        client_id,
        sequence: 1,
        resent: false,
    })
}

fn shown<T: std::fmt::Debug>(r: Result<tonic::Response<T>, Status>) -> Answer {
    match r {
        Ok(r) => Answer::Ok(format!("{:?}", r.into_inner())),
        Err(s) => Answer::Err(s),
    }
}

/// Mallory's calls, made with its token over a direct channel to one member.
struct Mallory {
    header: String,
    registers: Vec<u64>,
    /// The id of the cluster-admin token: what its revokes name.
    admin_token_id: String,
}

impl Mallory {
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut r = Request::new(msg);
        r.set_timeout(Duration::from_secs(2));
        r.metadata_mut()
            .insert("authorization", self.header.parse().expect("ASCII"));
        r
    }

    fn write(
        &self,
        tenant: &str,
        ops: Vec<pb::Operation>,
        pre: Vec<pb::Precondition>,
    ) -> pb::WriteRequest {
        pb::WriteRequest {
            tenant: tenant.into(),
            request_id: rid(),
            preconditions: pre,
            operations: ops,
        }
    }

    fn create_marked(&self) -> pb::Operation {
        op(pb::operation::Op::CreateNode(pb::CreateNode {
            labels: vec![MARK.into()],
            properties: [("v".to_string(), int(MARK_VALUE))].into(),
        }))
    }

    /// One call of `kind` naming `victim` (where it names a tenant), sent to `ch`.
    async fn call(&self, kind: &str, victim: &str, ch: Channel, rng: &mut SmallRng) -> Answer {
        let reg = self.registers[rng.random_range(0..self.registers.len())];
        let consistency = if rng.random_bool(0.5) {
            pb::Consistency::Linearizable
        } else {
            pb::Consistency::Serializable
        } as i32;
        let mut g = GraphServiceClient::new(ch.clone());
        let mut t = TenantServiceClient::new(ch.clone());
        let mut k = TokenServiceClient::new(ch.clone());
        let mut c = ClusterServiceClient::new(ch.clone());
        let set_v = op(pb::operation::Op::UpdateNode(pb::UpdateNode {
            node: node_ref(reg),
            set: [("v".to_string(), int(MARK_VALUE))].into(),
            remove: vec![],
        }));
        let call = async {
            match kind {
                "write" => shown(
                    g.write(self.req(self.write(victim, vec![self.create_marked()], vec![])))
                        .await,
                ),
                "cas" => shown(
                    g.write(self.req(self.write(
                        victim,
                        vec![set_v],
                        vec![pb::Precondition {
                            check: Some(pb::precondition::Check::NodeProperty(
                                pb::PropertyEquals {
                                    id: reg,
                                    key: "v".into(),
                                    value: Some(int(0)),
                                },
                            )),
                        }],
                    )))
                    .await,
                ),
                "delete" => shown(
                    g.write(self.req(self.write(
                        victim,
                        vec![op(pb::operation::Op::DeleteNode(pb::DeleteNode {
                            node: node_ref(rng.random_range(1..=8)),
                        }))],
                        vec![],
                    )))
                    .await,
                ),
                "write_stream" => {
                    let w = self.write(victim, vec![self.create_marked()], vec![]);
                    write_stream(g, self.req(()), w).await
                }
                "get_node" => shown(
                    g.get_node(self.req(pb::GetNodeRequest {
                        tenant: victim.into(),
                        id: reg,
                        consistency,
                    }))
                    .await,
                ),
                "get_edge" => shown(
                    g.get_edge(self.req(pb::GetEdgeRequest {
                        tenant: victim.into(),
                        id: 1,
                        consistency,
                    }))
                    .await,
                ),
                "neighbors" => shown(
                    g.neighbors(self.req(pb::NeighborsRequest {
                        tenant: victim.into(),
                        node: reg,
                        consistency,
                        ..Default::default()
                    }))
                    .await,
                ),
                "nodes_by_label" => shown(
                    g.nodes_by_label(self.req(pb::NodesByLabelRequest {
                        tenant: victim.into(),
                        label: "reg".into(),
                        consistency,
                        ..Default::default()
                    }))
                    .await,
                ),
                "scan" => match g
                    .scan(self.req(pb::ScanRequest {
                        tenant: victim.into(),
                        kind: pb::ScanKind::Nodes as i32,
                        page_size: 10,
                        consistency,
                    }))
                    .await
                {
                    Ok(r) => match r.into_inner().message().await {
                        Ok(Some(item)) => Answer::Ok(format!("{item:?}")),
                        Ok(None) => Answer::Ok("an empty scan".into()),
                        Err(s) => Answer::Err(s),
                    },
                    Err(s) => Answer::Err(s),
                },
                "read_stream" => {
                    let read = pb::read_call::Read::GetNode(pb::GetNodeRequest {
                        tenant: victim.into(),
                        id: reg,
                        consistency,
                    });
                    read_stream(g, self.req(()), read).await
                }
                "get_tenant" => shown(
                    t.get_tenant(self.req(pb::GetTenantRequest {
                        id: victim.into(),
                        consistency,
                    }))
                    .await,
                ),
                "list_tenants" => match t
                    .list_tenants(self.req(pb::ListTenantsRequest {
                        consistency,
                        ..Default::default()
                    }))
                    .await
                {
                    // Its own tenant only: any other listed is a leak.
                    Ok(r) => {
                        let ids: Vec<String> =
                            r.into_inner().tenants.into_iter().map(|t| t.id).collect();
                        if ids.iter().all(|i| i == MALLORY) {
                            Answer::Err(Status::permission_denied("listed its own tenant only"))
                        } else {
                            Answer::Ok(format!("listed {ids:?}"))
                        }
                    }
                    Err(s) => Answer::Err(s),
                },
                "create_tenant" => shown(
                    t.create_tenant(self.req(pb::CreateTenantRequest {
                        id: "m2".into(),
                        ..Default::default()
                    }))
                    .await,
                ),
                "update_quotas" => shown(
                    t.update_quotas(self.req(pb::UpdateQuotasRequest {
                        request_id: rid(),
                        id: victim.into(),
                        quotas: Some(pb::Quotas::default()),
                    }))
                    .await,
                ),
                "set_rate_limits" => shown(
                    t.set_rate_limits(self.req(pb::SetRateLimitsRequest {
                        request_id: rid(),
                        id: victim.into(),
                        rate_limits: Some(pb::RateLimits {
                            requests_per_second: Some(1),
                            bytes_per_second: None,
                        }),
                    }))
                    .await,
                ),
                "set_tenant_config" => shown(
                    t.set_tenant_config(self.req(pb::SetTenantConfigRequest {
                        request_id: rid(),
                        id: victim.into(),
                        // Visible if it were stored: check_isolation looks for the mark.
                        config: Some(pb::TenantConfig {
                            nlq: Some(pb::NlqConfig {
                                enabled: true,
                                provider: Some(pb::LlmProviderConfig {
                                    provider: pb::LlmProvider::Mock as i32,
                                    model: MARK.into(),
                                    ..Default::default()
                                }),
                                system_prompt: Some(MARK.into()),
                            }),
                            ..Default::default()
                        }),
                    }))
                    .await,
                ),
                "disable_tenant" => shown(
                    t.set_tenant_enabled(self.req(pb::SetTenantEnabledRequest {
                        request_id: rid(),
                        id: victim.into(),
                        enabled: false,
                    }))
                    .await,
                ),
                "delete_tenant" => shown(
                    t.delete_tenant(self.req(pb::DeleteTenantRequest {
                        request_id: rid(),
                        id: victim.into(),
                    }))
                    .await,
                ),
                "create_token" => shown(
                    k.create_token(self.req(pb::CreateTokenRequest {
                        tenant: victim.into(),
                        role: pb::Role::Admin as i32,
                        expires_in_seconds: 0,
                    }))
                    .await,
                ),
                "create_cluster_token" => shown(
                    k.create_token(self.req(pb::CreateTokenRequest {
                        tenant: String::new(),
                        role: pb::Role::ClusterAdmin as i32,
                        expires_in_seconds: 0,
                    }))
                    .await,
                ),
                // Its own tenant, but a role above its token's.
                "create_own_admin_token" => shown(
                    k.create_token(self.req(pb::CreateTokenRequest {
                        tenant: MALLORY.into(),
                        role: pb::Role::Admin as i32,
                        expires_in_seconds: 0,
                    }))
                    .await,
                ),
                "list_tokens" => shown(
                    k.list_tokens(self.req(pb::ListTokensRequest {
                        tenant: victim.into(),
                        ..Default::default()
                    }))
                    .await,
                ),
                "list_all_tokens" => shown(
                    k.list_tokens(self.req(pb::ListTokensRequest::default()))
                        .await,
                ),
                // The cluster-admin token every other client uses.
                "revoke_token" => shown(
                    k.revoke_token(self.req(pb::RevokeTokenRequest {
                        id: self.admin_token_id.clone(),
                    }))
                    .await,
                ),
                "promote" => shown(
                    c.promote(self.req(pb::PromoteRequest { ids: vec![9] }))
                        .await,
                ),
                "add_learner" => shown(
                    c.add_learner(self.req(pb::AddLearnerRequest {
                        member: Some(pb::Member {
                            id: 9,
                            addr: addr("n9"),
                            peer_addr: peer_addr("n9"),
                        }),
                        wait: false,
                    }))
                    .await,
                ),
                "remove" => shown(c.remove(self.req(pb::RemoveRequest { ids: vec![3] })).await),
                "transfer_leadership" => shown(
                    c.transfer_leadership(self.req(pb::TransferLeadershipRequest {
                        to: rng.random_range(1..=3),
                    }))
                    .await,
                ),
                "trigger_snapshot" => shown(
                    c.trigger_snapshot(self.req(pb::TriggerSnapshotRequest {}))
                        .await,
                ),
                "get_limits" => shown(c.get_limits(self.req(pb::GetLimitsRequest {})).await),
                "set_limits" => shown(
                    c.set_limits(self.req(pb::SetLimitsRequest {
                        tenants_max: Some(1),
                        ..Default::default()
                    }))
                    .await,
                ),
                "rotate_secrets" => shown(
                    t.rotate_secrets(self.req(pb::RotateSecretsRequest {}))
                        .await,
                ),
                other => panic!("no call kind {other}"),
            }
        };
        match tokio::time::timeout(Duration::from_secs(3), call).await {
            Ok(a) => a,
            Err(_) => Answer::Err(Status::deadline_exceeded("no answer in 3 s")),
        }
    }

    /// A write to its own tenant: why it failed, if it did.
    async fn own_write(&self, ch: Channel) -> Result<(), String> {
        let w = self.write(
            MALLORY,
            vec![op(pb::operation::Op::CreateNode(pb::CreateNode {
                labels: vec!["own".into()],
                properties: Default::default(),
            }))],
            vec![],
        );
        let mut g = GraphServiceClient::new(ch);
        let call = g.write(self.req(w));
        match tokio::time::timeout(Duration::from_secs(3), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
            Err(_) => Err("no answer in 3 s".into()),
        }
    }
}

/// One write-stream call on a stream of its own (`auth` carries the header).
async fn write_stream(
    mut g: GraphServiceClient<Channel>,
    auth: Request<()>,
    write: pb::WriteRequest,
) -> Answer {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx
        .send(pb::WriteCall {
            call_id: 1,
            timeout_ms: 2_000,
            write: Some(write),
        })
        .await;
    drop(tx);
    let (meta, ext, ()) = auth.into_parts();
    let req = Request::from_parts(meta, ext, ReceiverStream::new(rx));
    match g.write_stream(req).await {
        Ok(r) => match r.into_inner().message().await {
            Ok(Some(pb::WriteAnswer { error: Some(e), .. })) => {
                Answer::Err(Status::new(Code::from(e.code), e.message))
            }
            Ok(Some(a)) => Answer::Ok(format!("{a:?}")),
            Ok(None) => Answer::Err(Status::unavailable("the stream closed unanswered")),
            Err(s) => Answer::Err(s),
        },
        Err(s) => Answer::Err(s),
    }
}

/// One read-stream call on a stream of its own.
async fn read_stream(
    mut g: GraphServiceClient<Channel>,
    auth: Request<()>,
    read: pb::read_call::Read,
) -> Answer {
    let (tx, rx) = mpsc::channel(1);
    let _ = tx
        .send(pb::ReadCall {
            call_id: 1,
            timeout_ms: 2_000,
            read: Some(read),
        })
        .await;
    drop(tx);
    let (meta, ext, ()) = auth.into_parts();
    let req = Request::from_parts(meta, ext, ReceiverStream::new(rx));
    match g.read_stream(req).await {
        Ok(r) => match r.into_inner().message().await {
            Ok(Some(pb::ReadAnswer {
                result: Some(pb::read_answer::Result::Error(e)),
                ..
            })) => Answer::Err(Status::new(Code::from(e.code), e.message)),
            Ok(Some(a)) => Answer::Ok(format!("{a:?}")),
            Ok(None) => Answer::Err(Status::unavailable("the stream closed unanswered")),
            Err(s) => Answer::Err(s),
        },
        Err(s) => Answer::Err(s),
    }
}

/// What an answer to a call on others means.
enum Verdict {
    Denied,
    /// Refused as unauthenticated (a member that has not applied Mallory's token yet), or no
    /// answer (faults): says nothing.
    Nothing,
    Leak(String),
}

fn verdict(a: Answer) -> Verdict {
    match a {
        Answer::Ok(what) => Verdict::Leak(format!("answered OK: {what}")),
        Answer::Err(s) => match s.code() {
            Code::PermissionDenied => Verdict::Denied,
            Code::Unauthenticated
            | Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Unknown => Verdict::Nothing,
            // What h2 and tonic produce on their own (ENHANCE_YOUR_CALM arrives as
            // RESOURCE_EXHAUSTED), as `workload::failure` treats them; never a server's answer.
            Code::ResourceExhausted | Code::Internal if s.message().contains("protocol error") => {
                Verdict::Nothing
            }
            other => Verdict::Leak(format!("{other:?}: {}", s.message())),
        },
    }
}

/// Mallory's run: random calls on others through random members until the work phase ends,
/// then every kind again until each is denied.
pub async fn attacker(shared: Rc<RefCell<Shared>>, seed: u64, work_end_ms: u64) -> turmoil::Result {
    while shared.borrow().mallory_token.is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (token, registers, admin_token_id) = {
        let s = shared.borrow();
        (
            s.mallory_token.clone().expect("set"),
            s.registers.clone(),
            s.admin_token_id.clone(),
        )
    };
    let m = Mallory {
        header: format!("Bearer {token}"),
        registers,
        admin_token_id,
    };
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x6d61_6c6c);
    let channels: BTreeMap<&str, Channel> = NODES.iter().map(|n| (*n, direct(n))).collect();
    let victim = |rng: &mut SmallRng| {
        if rng.random_bool(0.5) {
            REGISTERS
        } else {
            QUOTA
        }
    };
    let record = |kind: &'static str, node: &str, v: Verdict| {
        let mut s = shared.borrow_mut();
        match v {
            Verdict::Denied => {
                s.attempts.denied.insert(kind);
                s.attempts.refused += 1;
            }
            Verdict::Nothing => s.attempts.in_doubt += 1,
            Verdict::Leak(what) => {
                s.attempts.leaks.push(format!("{kind} via {node}: {what}"));
            }
        }
    };
    while now_ms() < work_end_ms {
        let node = NODES[rng.random_range(0..NODES.len())];
        let ch = channels[node].clone();
        if rng.random_bool(0.1) {
            if m.own_write(ch).await.is_ok() {
                shared.borrow_mut().attempts.own_ok += 1;
            }
        } else {
            let kind = KINDS[rng.random_range(0..KINDS.len())];
            let v = victim(&mut rng);
            let a = m.call(kind, v, ch, &mut rng).await;
            record(kind, node, verdict(a));
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..200))).await;
    }
    // The final round, faults over: each kind until it is denied; one own write.
    let deadline = work_end_ms + CONVERGE_MS;
    let mut pending: Vec<&'static str> = KINDS.iter().rev().copied().collect();
    let mut own = Err("not tried".to_string());
    while !pending.is_empty() || own.is_err() {
        if now_ms() > deadline {
            shared.borrow_mut().attempts.unfinished = Some(format!(
                "no definite answer within {CONVERGE_MS} ms after the faults stopped to {pending:?} \
                 (own write: {own:?})"
            ));
            break;
        }
        let node = NODES[rng.random_range(0..NODES.len())];
        let ch = channels[node].clone();
        if own.is_err() {
            own = m.own_write(ch.clone()).await;
            if own.is_ok() {
                shared.borrow_mut().attempts.own_ok += 1;
            }
        }
        if let Some(kind) = pending.pop() {
            let v = victim(&mut rng);
            let a = m.call(kind, v, ch, &mut rng).await;
            let verdict = verdict(a);
            if !matches!(verdict, Verdict::Denied) {
                pending.push(kind);
            }
            let leak = matches!(verdict, Verdict::Leak(_));
            record(kind, node, verdict);
            if leak {
                pending.pop();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.borrow_mut().workers_running -= 1;
    Ok(())
}
