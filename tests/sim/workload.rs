//! The simulated clients: setup, workers (register writes, CASes, linearizable and
//! serializable reads, quota-tenant creates and deletes), an admin client (forced snapshots,
//! leadership transfers, membership changes), a quota poller, and the final client that checks
//! recovery.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use raftgraph::client::{Client, ClientOptions, Pool};
use raftgraph::proto::v1 as pb;
use raftgraph::proto::v1::cluster_service_client::ClusterServiceClient;
use raftgraph::proto::v1::graph_service_client::GraphServiceClient;
use raftgraph::proto::v1::tenant_service_client::TenantServiceClient;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use super::history::{Call, Key, Outcome};
use super::world::{NODES, Shared, addr, now_ms, peer_addr};

/// The register tenant and the quota tenant.
pub const REGISTERS: &str = "r";
pub const QUOTA: &str = "q";
/// Registers in the register tenant.
pub const KEYS: usize = 6;
/// The quota tenant's node limit: tight, so creates hit it often.
pub const QUOTA_NODES: u64 = 12;
/// The quota tenant's edge limit: creates with an edge are refused past it.
pub const QUOTA_EDGES: u64 = 10;
/// Accounts in the register tenant (label `acct`, balance `v`), and each one's first balance:
/// transfers move money between them, so their sum is always `ACCOUNTS * BALANCE`.
pub const ACCOUNTS: usize = 3;
pub const BALANCE: i64 = 100;

pub fn int(v: i64) -> pb::Value {
    pb::Value {
        kind: Some(pb::value::Kind::IntValue(v)),
    }
}

pub fn node_ref(id: u64) -> Option<pb::NodeRef> {
    Some(pb::NodeRef {
        r#ref: Some(pb::node_ref::Ref::Id(id)),
    })
}

/// A write that creates one node labelled `label` in `tenant`, with no request id of its own
/// (the client gives it one).
pub fn create_one(tenant: &str, label: &str) -> pb::WriteRequest {
    pb::WriteRequest {
        tenant: tenant.into(),
        request_id: None,
        preconditions: vec![],
        operations: vec![op(pb::operation::Op::CreateNode(pb::CreateNode {
            labels: vec![label.into()],
            properties: Default::default(),
        }))],
    }
}

pub fn op(o: pb::operation::Op) -> pb::Operation {
    pb::Operation { op: Some(o) }
}

fn prop(n: &pb::Node, key: &str) -> Option<i64> {
    match n.properties.get(key)?.kind {
        Some(pb::value::Kind::IntValue(v)) => Some(v),
        _ => None,
    }
}

/// The quotas setup gives `tenant` (the register tenant, the quota tenant, Mallory's).
pub fn setup_quotas(tenant: &str) -> pb::Quotas {
    pb::Quotas {
        max_nodes: (tenant == QUOTA).then_some(QUOTA_NODES),
        max_edges: Some(QUOTA_EDGES),
        max_storage_bytes: Some(1 << 20),
    }
}

/// The cluster-admin token every client but Mallory carries (authentication is on).
fn admin_token() -> String {
    ADMIN_TOKEN.with(|t| t.borrow().clone())
}

thread_local! {
    /// Set by setup from `Init`'s answer (the simulation runs on one thread).
    static ADMIN_TOKEN: RefCell<String> = const { RefCell::new(String::new()) };
}

/// `msg` with a deadline and the admin token.
pub fn authed<T>(msg: T, timeout: Duration) -> Request<T> {
    let mut r = Request::new(msg);
    r.set_timeout(timeout);
    r.metadata_mut().insert(
        "authorization",
        format!("Bearer {}", admin_token()).parse().expect("ASCII"),
    );
    r
}

pub fn client(endpoints: Vec<String>, id: u64, seed: u64) -> Client {
    let pairing = id ^ (id >> 32);
    let pool = Pool::new(super::net::dialer());
    let token = admin_token();
    let pool = if token.is_empty() {
        pool
    } else {
        pool.with_token(&token).expect("a valid token")
    };
    Client::new(
        endpoints,
        ClientOptions {
            client_id: Some(id),
            jitter_seed: Some(seed),
            attempt_timeout: Duration::from_secs(2),
            deadline: Duration::from_secs(8),
            pool,
            // Both write paths and both read paths are checked, in all four pairings (workers
            // 1..=4 start as processes `index << 32`, so the worker index decides).
            write_stream: pairing.is_multiple_of(2),
            read_stream: (pairing / 2).is_multiple_of(2),
        },
    )
    .expect("valid endpoints")
}

pub fn all_endpoints() -> Vec<String> {
    NODES.iter().map(|n| addr(n)).collect()
}

/// Classifies a failed call. Only the refusals this workload provokes on purpose, which the
/// state machine returns after applying the entry as a no-op, are definite failures: a CAS
/// whose precondition did not hold, and a create over the quota tenant's node limit. Any
/// other error leaves the outcome unknown: timeouts and transport errors; `session expired`
/// (an earlier attempt may have applied); codes that h2 or tonic produce on their own
/// (`ENHANCE_YOUR_CALM` arrives as `RESOURCE_EXHAUSTED`); and any refusal this workload does
/// not expect, which is also counted (`Shared::unexpected`) and fails the run.
fn failure(call: &Call, s: &Status) -> (Outcome, Refusal) {
    let msg = format!("{:?}: {}", s.code(), s.message());
    let refusal = match (call, s.code()) {
        (Call::Cas { .. } | Call::Transfer { .. }, Code::FailedPrecondition)
            if s.message()
                .starts_with(&format!("tenant {REGISTERS}: precondition ")) =>
        {
            Refusal::Precondition
        }
        (Call::Create { .. }, Code::ResourceExhausted)
            if s.message()
                .starts_with(&format!("tenant {QUOTA}: quota exceeded for nodes"))
                || s.message()
                    .starts_with(&format!("tenant {QUOTA}: quota exceeded for edges")) =>
        {
            Refusal::Quota
        }
        (_, Code::FailedPrecondition) if s.message().contains("session expired") => Refusal::None,
        (
            _,
            Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::Unauthenticated,
        ) => Refusal::Unexpected,
        _ => Refusal::None,
    };
    let outcome = match refusal {
        Refusal::Precondition => Outcome::Fail(format!("precondition: {msg}")),
        Refusal::Quota => Outcome::Fail(format!("quota: {msg}")),
        Refusal::None | Refusal::Unexpected => Outcome::Unknown(msg),
    };
    (outcome, refusal)
}

/// Which kind of refusal a failed call was (see [`failure`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    Precondition,
    Quota,
    /// A refusal the workload never provokes: a bug in the workload or the server.
    Unexpected,
    /// Not a refusal: the outcome is unknown.
    None,
}

pub async fn pause(ms: std::ops::Range<u64>, rng: &mut SmallRng) {
    tokio::time::sleep(Duration::from_millis(rng.random_range(ms))).await;
}

/// Brings the cluster up and creates the tenants and registers; retries until done.
pub async fn setup(shared: Rc<RefCell<Shared>>, seed: u64) -> turmoil::Result {
    let members: Vec<pb::Member> = NODES
        .iter()
        .enumerate()
        .map(|(i, n)| pb::Member {
            id: i as u64 + 1,
            addr: addr(n),
            peer_addr: super::world::peer_addr(n),
        })
        .collect();
    // Init answers the first cluster-admin token (no certificate needed: the simulation's
    // servers run without TLS). Faults start only after setup, so the answer is not lost.
    // One member asked, with time to elect itself and store the token (a client's 2 s attempt
    // could give up on an init that then succeeds, and its token would be lost).
    let answer = loop {
        let mut req = Request::new(pb::InitRequest {
            members: members.clone(),
        });
        req.set_timeout(Duration::from_secs(30));
        match ClusterServiceClient::new(direct(NODES[0])).init(req).await {
            Ok(a) => break a.into_inner(),
            Err(s) if s.code() == Code::FailedPrecondition => {
                return Err(format!("setup: init answered lost, then {s:?}").into());
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    if answer.admin_token.is_empty() {
        return Err(format!("setup: no admin token: {}", answer.admin_token_error).into());
    }
    ADMIN_TOKEN.with(|t| *t.borrow_mut() = answer.admin_token.clone());
    shared.borrow_mut().admin_token_id = answer.admin_token_id.clone();
    let c = client(all_endpoints(), seed ^ 0x5e8, seed);
    for tenant in [REGISTERS, QUOTA, super::attacker::MALLORY] {
        loop {
            let r = c
                .create_tenant(pb::CreateTenantRequest {
                    request_id: None,
                    id: tenant.into(),
                    quotas: Some(setup_quotas(tenant)),
                    config: None,
                })
                .await;
            match r {
                Ok(_) => break,
                Err(s) if s.code() == Code::AlreadyExists => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    // Retried until it answers; a retry of an applied attempt creates extra registers or
    // accounts, which nothing reads (and the accounts' sum leaves out).
    let ids = create_nodes(&c, KEYS, "reg", super::check_linearizable::INITIAL).await;
    assert_eq!(ids.len(), KEYS, "setup created every register");
    let account_ids = create_nodes(&c, ACCOUNTS, "acct", BALANCE).await;
    assert_eq!(account_ids.len(), ACCOUNTS, "setup created every account");
    // Mallory's token: `write` in its own tenant.
    let mallory = loop {
        match c
            .create_token(pb::CreateTokenRequest {
                tenant: super::attacker::MALLORY.into(),
                role: pb::Role::Write as i32,
                expires_in_seconds: 0,
            })
            .await
        {
            Ok(t) => break t.token,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    // One seed in four keeps few sessions per principal, so that sessions are evicted while
    // their clients still use them (every client but Mallory carries the admin token: one
    // principal): exactly-once must hold across eviction.
    if seed.is_multiple_of(4) {
        let sessions = 3 + seed / 4 % 6;
        loop {
            let r = c
                .set_limits(pb::SetLimitsRequest {
                    sessions_per_principal_max: Some(sessions),
                    ..Default::default()
                })
                .await;
            match r {
                Ok(_) => break,
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
    let limits = loop {
        match c.get_limits().await {
            Ok(l) => break format!("{l:?}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut s = shared.borrow_mut();
    s.mallory_token = Some(mallory);
    s.limits_at_setup = limits;
    s.registers = ids;
    s.accounts = account_ids;
    s.setup_done_ms = Some(now_ms());
    s.trace("setup done".to_string());
    Ok(())
}

/// Creates `n` nodes labelled `label` with `v = value` in the register tenant in one write,
/// retried until it answers; their ids.
async fn create_nodes(c: &Client, n: usize, label: &str, value: i64) -> Vec<u64> {
    let create = pb::WriteRequest {
        tenant: REGISTERS.into(),
        request_id: None,
        preconditions: vec![],
        operations: (0..n)
            .map(|_| {
                op(pb::operation::Op::CreateNode(pb::CreateNode {
                    labels: vec![label.into()],
                    properties: [("v".to_string(), int(value))].into(),
                }))
            })
            .collect(),
    };
    loop {
        match c.write(create.clone()).await {
            Ok(r) => {
                return r
                    .results
                    .iter()
                    .filter_map(|r| match r.result {
                        Some(pb::op_result::Result::NodeCreated(id)) => Some(id),
                        _ => None,
                    })
                    .collect();
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

pub async fn wait_setup(shared: &Rc<RefCell<Shared>>) {
    while shared.borrow().setup_done_ms.is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn direct(node: &str) -> Channel {
    super::net::dialer()
        .dial(&addr(node), Duration::from_secs(1))
        .expect("a valid address")
}

/// One worker: random operations until the work phase ends.
pub async fn worker(
    shared: Rc<RefCell<Shared>>,
    index: u64,
    seed: u64,
    work_end_ms: u64,
) -> turmoil::Result {
    wait_setup(&shared).await;
    let mut rng = SmallRng::seed_from_u64(seed ^ index.wrapping_mul(0x9e37_79b9));
    let mut process = index << 32;
    let mut c = client(all_endpoints(), process, seed ^ index);
    let registers: Vec<Key> = shared.borrow().registers.clone();
    let accounts: Vec<Key> = shared.borrow().accounts.clone();
    // Balances as this worker last saw them: the expectation of its next transfer.
    let mut balances: BTreeMap<Key, i64> = accounts.iter().map(|a| (*a, BALANCE)).collect();
    let channels: BTreeMap<&str, Channel> = NODES.iter().map(|n| (*n, direct(n))).collect();
    let mut counter = 0i64;
    // The last value this worker saw per register: the expectation of its next CAS.
    let mut seen: BTreeMap<Key, i64> = BTreeMap::new();
    // Nodes this worker created in the quota tenant (id, tag).
    let mut created: Vec<(u64, i64)> = Vec::new();
    while now_ms() < work_end_ms {
        counter += 1;
        // Unique across the run: worker index in the high bits.
        let unique = ((index as i64) << 40) | counter;
        let key = registers[rng.random_range(0..registers.len())];
        let roll = rng.random_range(0..112);
        let call = match roll {
            0..25 => Call::Write { key, value: unique },
            25..40 => Call::Cas {
                key,
                expect: seen.get(&key).copied().unwrap_or(0),
                value: unique,
            },
            40..65 => Call::Read {
                key,
                linearizable: true,
                // Half go straight to one node (exercising follower reads).
                via: rng
                    .random_bool(0.5)
                    .then(|| NODES[rng.random_range(0..NODES.len())].to_string()),
            },
            65..75 => Call::Read {
                key,
                linearizable: false,
                via: Some(NODES[rng.random_range(0..NODES.len())].to_string()),
            },
            75..90 => Call::Create {
                tag: unique,
                // Half link the new node to one this worker made: deletes then cascade.
                edge_to: (!created.is_empty() && rng.random_bool(0.5))
                    .then(|| created[rng.random_range(0..created.len())].0),
            },
            90..100 => match created.pop() {
                Some((id, tag)) => Call::Delete { id, tag },
                None => Call::Create {
                    tag: unique,
                    edge_to: None,
                },
            },
            100..106 => {
                let from = accounts[rng.random_range(0..accounts.len())];
                let to = accounts[(accounts.iter().position(|a| *a == from).unwrap_or(0)
                    + rng.random_range(1..accounts.len()))
                    % accounts.len()];
                let expect = (balances[&from], balances[&to]);
                Call::Transfer {
                    from,
                    to,
                    amount: rng.random_range(0..=expect.0.max(0)),
                    expect,
                }
            }
            _ => Call::Accounts {
                linearizable: rng.random_bool(0.7),
                via: rng
                    .random_bool(0.5)
                    .then(|| NODES[rng.random_range(0..NODES.len())].to_string()),
            },
        };
        let i = shared
            .borrow_mut()
            .history
            .invoke(process, call.clone(), now_ms());
        let (outcome, refusal) = perform(&c, &channels, &call, &accounts).await;
        if let Some(seen) = LAST_ACCOUNTS.with(|l| l.borrow_mut().take()) {
            balances.extend(seen);
        }
        {
            let mut sh = shared.borrow_mut();
            match refusal {
                Refusal::Precondition => sh.refused.precondition += 1,
                Refusal::Quota => sh.refused.quota += 1,
                Refusal::Unexpected => sh.refused.unexpected.push(format!("{call:?}: {outcome:?}")),
                Refusal::None => {}
            }
        }
        match (&call, &outcome) {
            (Call::Write { value, .. } | Call::Cas { value, .. }, Outcome::Ok(_)) => {
                seen.insert(key, *value);
            }
            (Call::Read { .. }, Outcome::Ok(Some(v))) => {
                seen.insert(key, *v);
            }
            (Call::Create { tag, .. }, Outcome::Ok(Some(id))) => created.push((*id as u64, *tag)),
            (
                Call::Transfer {
                    from,
                    to,
                    amount,
                    expect,
                },
                Outcome::Ok(_),
            ) => {
                balances.insert(*from, expect.0 - amount);
                balances.insert(*to, expect.1 + amount);
            }
            _ => {}
        }
        let unknown = matches!(outcome, Outcome::Unknown(_));
        shared.borrow_mut().history.complete(i, outcome, now_ms());
        if unknown {
            // As in Jepsen: a process with an operation in doubt is done; a new one continues.
            process += 1;
            c = client(all_endpoints(), process, seed ^ process);
        }
        pause(0..30, &mut rng).await;
    }
    shared.borrow_mut().workers_running -= 1;
    Ok(())
}

thread_local! {
    /// The balances the last whole accounts read saw: set at the end of `perform` and taken by
    /// its caller with no await in between, so no other client task runs in between.
    static LAST_ACCOUNTS: RefCell<Option<BTreeMap<Key, i64>>> = const { RefCell::new(None) };
}

async fn perform(
    c: &Client,
    channels: &BTreeMap<&str, Channel>,
    call: &Call,
    accounts: &[Key],
) -> (Outcome, Refusal) {
    let write = |preconditions, operations| pb::WriteRequest {
        tenant: REGISTERS.into(),
        request_id: None,
        preconditions,
        operations,
    };
    let set_v = |key: Key, value: i64| {
        op(pb::operation::Op::UpdateNode(pb::UpdateNode {
            node: node_ref(key),
            set: [("v".to_string(), int(value))].into(),
            remove: vec![],
        }))
    };
    let r = match call {
        Call::Write { key, value } => c
            .write(write(vec![], vec![set_v(*key, *value)]))
            .await
            .map(|_| None),
        Call::Cas { key, expect, value } => c
            .write(write(
                vec![pb::Precondition {
                    check: Some(pb::precondition::Check::NodeProperty(pb::PropertyEquals {
                        id: *key,
                        key: "v".into(),
                        value: Some(int(*expect)),
                    })),
                }],
                vec![set_v(*key, *value)],
            ))
            .await
            .map(|_| None),
        Call::Read {
            key,
            linearizable,
            via,
        } => {
            let consistency = if *linearizable {
                pb::Consistency::Linearizable
            } else {
                pb::Consistency::Serializable
            } as i32;
            let req = pb::GetNodeRequest {
                tenant: REGISTERS.into(),
                id: *key,
                consistency,
            };
            let got = match via {
                None => c.get_node(req).await,
                Some(node) => {
                    let mut g = GraphServiceClient::new(channels[node.as_str()].clone());
                    let r = authed(req, Duration::from_secs(2));
                    match tokio::time::timeout(Duration::from_secs(2), g.get_node(r)).await {
                        Ok(r) => r.map(|r| r.into_inner()),
                        Err(_) => Err(Status::deadline_exceeded("no answer in 2 s")),
                    }
                }
            };
            match got {
                Ok(n) => Ok(prop(&n, "v")),
                // The register itself is missing (not the tenant).
                Err(s) if s.code() == Code::NotFound && s.message().contains(": node ") => Ok(None),
                Err(s) => Err(s),
            }
        }
        Call::Create { tag, edge_to } => c
            .write(pb::WriteRequest {
                tenant: QUOTA.into(),
                request_id: None,
                preconditions: vec![],
                operations: std::iter::once(op(pb::operation::Op::CreateNode(pb::CreateNode {
                    labels: vec!["q".into()],
                    properties: [("c".to_string(), int(*tag))].into(),
                })))
                .chain(edge_to.map(|to| {
                    op(pb::operation::Op::CreateEdge(pb::CreateEdge {
                        source: Some(pb::NodeRef {
                            r#ref: Some(pb::node_ref::Ref::Created(0)),
                        }),
                        target: node_ref(to),
                        edge_type: "e".into(),
                        properties: Default::default(),
                    }))
                }))
                .collect(),
            })
            .await
            .map(|r| match r.results.first().and_then(|r| r.result) {
                Some(pb::op_result::Result::NodeCreated(id)) => Some(id as i64),
                _ => None,
            }),
        Call::Delete { id, .. } => c
            .write(pb::WriteRequest {
                tenant: QUOTA.into(),
                request_id: None,
                preconditions: vec![],
                operations: vec![op(pb::operation::Op::DeleteNode(pb::DeleteNode {
                    node: node_ref(*id),
                }))],
            })
            .await
            .map(|_| None),
        Call::Transfer {
            from,
            to,
            amount,
            expect,
        } => {
            let equals = |id: Key, v: i64| pb::Precondition {
                check: Some(pb::precondition::Check::NodeProperty(pb::PropertyEquals {
                    id,
                    key: "v".into(),
                    value: Some(int(v)),
                })),
            };
            c.write(write(
                vec![equals(*from, expect.0), equals(*to, expect.1)],
                vec![
                    set_v(*from, expect.0 - amount),
                    set_v(*to, expect.1 + amount),
                ],
            ))
            .await
            .map(|_| None)
        }
        Call::Accounts { linearizable, via } => {
            let consistency = if *linearizable {
                pb::Consistency::Linearizable
            } else {
                pb::Consistency::Serializable
            } as i32;
            let req = pb::NodesByLabelRequest {
                tenant: REGISTERS.into(),
                label: "acct".into(),
                after: vec![],
                limit: 100,
                consistency,
            };
            let got = match via {
                None => c.nodes_by_label(req).await,
                Some(node) => {
                    let mut g = GraphServiceClient::new(channels[node.as_str()].clone());
                    let r = authed(req, Duration::from_secs(2));
                    match tokio::time::timeout(Duration::from_secs(2), g.nodes_by_label(r)).await {
                        Ok(r) => r.map(|r| r.into_inner()),
                        Err(_) => Err(Status::deadline_exceeded("no answer in 2 s")),
                    }
                }
            };
            got.map(|page| {
                let seen: BTreeMap<Key, i64> = page
                    .nodes
                    .iter()
                    .filter(|n| accounts.contains(&n.id))
                    .filter_map(|n| Some((n.id, prop(n, "v")?)))
                    .collect();
                // None: no account at all (a serializable read of a replica behind the setup).
                let sum = (!seen.is_empty()).then(|| seen.values().sum());
                if seen.len() == accounts.len() {
                    LAST_ACCOUNTS.with(|l| *l.borrow_mut() = Some(seen));
                }
                sum
            })
        }
    };
    match r {
        Ok(v) => (Outcome::Ok(v), Refusal::None),
        Err(s) => match (call, failure(call, &s)) {
            // A serializable read may reach a replica that has not applied the setup yet.
            (
                Call::Read {
                    linearizable: false,
                    ..
                }
                | Call::Accounts {
                    linearizable: false,
                    ..
                },
                (o, Refusal::Unexpected),
            ) => (o, Refusal::None),
            (_, r) => r,
        },
    }
}

/// Forced snapshots and leadership transfers at random times during the work phase.
pub async fn admin(shared: Rc<RefCell<Shared>>, seed: u64, work_end_ms: u64) -> turmoil::Result {
    wait_setup(&shared).await;
    let mut rng = SmallRng::seed_from_u64(seed ^ 0xad31);
    // A member taken out of the cluster, and the step that brings it back next.
    let mut change: Option<(u64, Step)> = None;
    while now_ms() < work_end_ms {
        pause(2_000..6_000, &mut rng).await;
        let target = NODES[rng.random_range(0..NODES.len())];
        if let Some((m, step)) = change {
            change = membership_step(&shared, target, m, step).await;
            continue;
        }
        if rng.random_bool(0.3) {
            let m = rng.random_range(1..=NODES.len() as u64);
            change = membership_step(&shared, target, m, Step::Remove).await;
            continue;
        }
        let mut cc = ClusterServiceClient::new(direct(target));
        let (what, r) = if rng.random_bool(0.5) {
            let req = authed(pb::TriggerSnapshotRequest {}, Duration::from_secs(2));
            ("snapshot", cc.trigger_snapshot(req).await.map(|_| ()))
        } else {
            let to = rng.random_range(1..=NODES.len() as u64);
            let req = authed(pb::TransferLeadershipRequest { to }, Duration::from_secs(2));
            ("transfer", cc.transfer_leadership(req).await.map(|_| ()))
        };
        let r = r.map_err(|s| format!("{:?}", s.code()));
        shared
            .borrow_mut()
            .trace(format!("admin {what} via {target}: {r:?}"));
    }
    // The faults have stopped: bring every member back as a voter before the final checks (the
    // final client waits for this task as for a worker). From the leader's view, not this
    // task's: a remove that timed out may have taken effect later.
    loop {
        if now_ms() > work_end_ms + super::world::CONVERGE_MS {
            shared.borrow_mut().liveness = Some(Err(format!(
                "the membership was not whole again within {} ms after the faults stopped",
                super::world::CONVERGE_MS
            )));
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some((leader, voters, learners)) = leader_membership().await else {
            continue;
        };
        let missing = (1..=NODES.len() as u64).find(|id| !voters.contains(id));
        match missing {
            None if learners.is_empty() => break,
            None => {}
            Some(m) => {
                let step = if learners.contains(&m) {
                    Step::Promote
                } else {
                    Step::AddLearner
                };
                membership_step(&shared, leader, m, step).await;
            }
        }
    }
    // A member that missed a membership change does not know a leader added (or removed and
    // added back) meanwhile, and refuses it on the peer plane until a member it knows vouches
    // for it (`raftgraph::peer::PeerGate`). Counted here, once per member and leader, to show
    // the case arises; the convergence check then requires that it caught up by itself.
    let mut seen = std::collections::BTreeSet::new();
    while now_ms() <= work_end_ms + super::world::CONVERGE_MS {
        let Some((leader, stale)) = stale_member().await else {
            break;
        };
        if seen.insert((leader, stale)) {
            let mut s = shared.borrow_mut();
            s.trace(format!(
                "admin: n{stale} does not know leader n{leader} yet"
            ));
            *s.faults
                .entry("stale member that did not know the leader".into())
                .or_default() += 1;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shared.borrow_mut().workers_running -= 1;
    Ok(())
}

/// One member's answer to `Status`: its id, term, whether it believes it leads, and the
/// voters and learners of the membership it holds.
struct View {
    id: u64,
    term: u64,
    leads: bool,
    voters: Vec<u64>,
    learners: Vec<u64>,
}

/// Every member that answers `Status`, and the member that leads: one that believes it leads in
/// the highest term any member answered with. A member removed while it led, cut off from the
/// rest, can believe it leads (in an old term) for as long as nobody tells it otherwise; while
/// a member reports a higher term than every self-declared leader's, no leader is known.
async fn views() -> (Vec<View>, Option<usize>) {
    let mut views = Vec::new();
    for (i, name) in NODES.iter().enumerate() {
        let mut cc = ClusterServiceClient::new(direct(name));
        let req = authed(pb::StatusRequest {}, Duration::from_secs(1));
        if let Ok(status) = cc.status(req).await.map(|r| r.into_inner()) {
            let m = status.membership.unwrap_or_default();
            let ids = |v: &[pb::Member]| v.iter().map(|m| m.id).collect::<Vec<_>>();
            views.push(View {
                id: i as u64 + 1,
                term: status.term,
                leads: status.state == "leader",
                voters: ids(&m.voters),
                learners: ids(&m.learners),
            });
        }
    }
    let top = views.iter().map(|v| v.term).max();
    let leader = views.iter().position(|v| v.leads && Some(v.term) == top);
    (views, leader)
}

/// The leader and a member whose own membership does not name it; `None` when every member
/// knows the leader (or no leader is known).
async fn stale_member() -> Option<(u64, u64)> {
    let (views, leader) = views().await;
    let leader = views[leader?].id;
    let stale = views
        .iter()
        .find(|v| !v.voters.contains(&leader) && !v.learners.contains(&leader))?;
    Some((leader, stale.id))
}

/// The leader's name and the voters and learners of the membership it holds (see `views`).
async fn leader_membership() -> Option<(&'static str, Vec<u64>, Vec<u64>)> {
    let (mut views, leader) = views().await;
    let v = views.swap_remove(leader?);
    Some((NODES[v.id as usize - 1], v.voters, v.learners))
}

/// One step of taking a member out of the cluster and bringing it back.
#[derive(Clone, Copy, Debug)]
enum Step {
    Remove,
    AddLearner,
    Promote,
}

/// Asks `target` for `step` on member `m`; returns the step still to do (this one again if it
/// failed). A remove whose outcome is unknown counts as done: adding a member that is still a
/// voter, and promoting one, change nothing.
async fn membership_step(
    shared: &Rc<RefCell<Shared>>,
    target: &str,
    m: u64,
    step: Step,
) -> Option<(u64, Step)> {
    let mut cc = ClusterServiceClient::new(direct(target));
    let timeout = Duration::from_secs(5);
    let name = NODES[m as usize - 1];
    let r = match step {
        Step::Remove => cc
            .remove(authed(pb::RemoveRequest { ids: vec![m] }, timeout))
            .await
            .map(|_| ()),
        Step::AddLearner => cc
            .add_learner(authed(
                pb::AddLearnerRequest {
                    member: Some(pb::Member {
                        id: m,
                        addr: addr(name),
                        peer_addr: peer_addr(name),
                    }),
                    wait: false,
                },
                timeout,
            ))
            .await
            .map(|_| ()),
        Step::Promote => cc
            .promote(authed(pb::PromoteRequest { ids: vec![m] }, timeout))
            .await
            .map(|_| ()),
    };
    {
        let mut s = shared.borrow_mut();
        let shown = r
            .as_ref()
            .map_err(|e| format!("{:?} {}", e.code(), e.message()));
        s.trace(format!("admin {step:?} {name} via {target}: {shown:?}"));
        if r.is_ok() {
            *s.faults.entry(format!("membership {step:?}")).or_default() += 1;
        }
    }
    let unknown = r.as_ref().is_err_and(|s| {
        matches!(
            s.code(),
            Code::DeadlineExceeded | Code::Unavailable | Code::Unknown | Code::Cancelled
        )
    });
    // The remove did not happen after all: the member is a voter still.
    let still_voter = r
        .as_ref()
        .is_err_and(|s| s.code() == Code::AlreadyExists && s.message().contains("already a voter"));
    match (step, r.is_ok() || (unknown && matches!(step, Step::Remove))) {
        (Step::AddLearner, false) if still_voter => None,
        (Step::Remove, true) => Some((m, Step::AddLearner)),
        (Step::AddLearner, true) => Some((m, Step::Promote)),
        (Step::Promote, true) => None,
        (Step::Remove, false) => None,
        (_, false) => Some((m, step)),
    }
}

/// Polls every replica's usage of the quota tenant (serializable: its own applied state).
pub async fn quota_poller(shared: Rc<RefCell<Shared>>, work_end_ms: u64) -> turmoil::Result {
    wait_setup(&shared).await;
    let channels: Vec<(&str, Channel)> = NODES.iter().map(|n| (*n, direct(n))).collect();
    let mut ticks = 0u64;
    while now_ms() < work_end_ms {
        tokio::time::sleep(Duration::from_millis(250)).await;
        ticks += 1;
        if ticks.is_multiple_of(20) {
            let open: Vec<usize> = NODES
                .iter()
                .map(|n| turmoil::established_tcp_stream_count_on(*n))
                .collect();
            shared
                .borrow_mut()
                .trace(format!("open connections per node {open:?}"));
        }
        for (node, ch) in &channels {
            if let Some(usage) = usage_of(ch.clone()).await {
                shared
                    .borrow_mut()
                    .usage
                    .push((now_ms(), node.to_string(), usage));
            }
        }
    }
    Ok(())
}

async fn usage_of(ch: Channel) -> Option<pb::Usage> {
    let mut t = TenantServiceClient::new(ch);
    let req = authed(
        pb::GetTenantRequest {
            id: QUOTA.into(),
            consistency: pb::Consistency::Serializable as i32,
        },
        Duration::from_secs(1),
    );
    let r = tokio::time::timeout(Duration::from_secs(1), t.get_tenant(req)).await;
    r.ok()?.ok()?.into_inner().usage
}

/// What one replica holds at the end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replica {
    pub applied: u64,
    /// Tenant → its nodes, in id order: (id, labels, properties rendered, version).
    pub data: BTreeMap<String, Vec<String>>,
    /// The quota tenant's nodes: id → tag `c`.
    pub quota_tags: BTreeMap<u64, i64>,
    /// The quota tenant's edges: (id, source, target), in id order.
    pub quota_edges: Vec<(u64, u64, u64)>,
    /// The accounts setup made: id → balance.
    pub accounts: BTreeMap<u64, i64>,
    pub usage: Option<pb::Usage>,
    /// The register and quota tenants' settings.
    pub tenants: BTreeMap<String, Settings>,
    /// The membership this replica applied: voter and learner ids.
    pub membership: (Vec<u64>, Vec<u64>),
}

/// A tenant's settings as one replica holds them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub quotas: Option<pb::Quotas>,
    pub enabled: bool,
    pub rate_limits: Option<pb::RateLimits>,
    /// The config, rendered.
    pub config: String,
}

/// After the faults stop: the cluster must take a write within `LIVENESS`, every replica must
/// converge, and a final linearizable read of every register joins the history.
pub async fn finish(shared: Rc<RefCell<Shared>>, seed: u64) -> turmoil::Result {
    let healed = now_ms();
    let c = client(all_endpoints(), u64::MAX - 1, seed);
    let registers = shared.borrow().registers.clone();
    let account_ids = shared.borrow().accounts.clone();
    // Liveness: a write goes through.
    loop {
        let r = c.write(create_one(REGISTERS, "final")).await;
        if r.is_ok() {
            break;
        }
        if now_ms() - healed > super::world::LIVENESS_MS {
            shared.borrow_mut().liveness = Some(Err(format!(
                "no write succeeded within {} ms after the faults stopped (last: {r:?})",
                super::world::LIVENESS_MS
            )));
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shared.borrow_mut().liveness = Some(Ok(now_ms() - healed));
    // Every worker's last call has ended (each is bounded by the client's deadline): the
    // state read below is final.
    while shared.borrow().workers_running > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Final reads, recorded as history; each register until one read answers.
    let mut pending: Vec<u64> = registers.iter().rev().copied().collect();
    while let Some(key) = pending.pop() {
        let key = &key;
        let call = Call::Read {
            key: *key,
            linearizable: true,
            via: None,
        };
        let i = shared
            .borrow_mut()
            .history
            .invoke(u64::MAX, call.clone(), now_ms());
        let channels = BTreeMap::new();
        let (o, refusal) = perform(&c, &channels, &call, &account_ids).await;
        if refusal == Refusal::Unexpected {
            let mut sh = shared.borrow_mut();
            sh.refused.unexpected.push(format!("{call:?}: {o:?}"));
        }
        let answered = matches!(o, Outcome::Ok(_));
        shared.borrow_mut().history.complete(i, o, now_ms());
        if !answered {
            pending.push(*key);
            // An unknown read says nothing: read again until one answers.
            if now_ms() - healed > super::world::CONVERGE_MS {
                shared.borrow_mut().liveness = Some(Err(format!(
                    "the final read of register {key} got no answer within {} ms",
                    super::world::CONVERGE_MS
                )));
                return Ok(());
            }
        }
    }
    // Convergence: every replica applies the same last index.
    let mut replicas: BTreeMap<String, Replica>;
    loop {
        replicas = BTreeMap::new();
        for n in NODES {
            if let Some(r) = replica(n, &account_ids).await {
                replicas.insert(n.to_string(), r);
            }
        }
        let applied: Vec<u64> = replicas.values().map(|r| r.applied).collect();
        if replicas.len() == NODES.len() && applied.windows(2).all(|w| w[0] == w[1]) {
            break;
        }
        if now_ms() - healed > super::world::CONVERGE_MS {
            break; // the replica check reports what differs
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shared.borrow_mut().replicas = Some(replicas);
    // Every member's digest of its whole state, for the check that equal applied indexes hold
    // equal states (hosts report within their 200 ms wake-up).
    shared.borrow_mut().digests_wanted = true;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Every token that exists, for the isolation check.
    let tokens = loop {
        match c.list_tokens(pb::ListTokensRequest::default()).await {
            Ok(page) => break page.tokens,
            Err(_) if now_ms() - healed < super::world::CONVERGE_MS => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => {
                shared.borrow_mut().liveness =
                    Some(Err(format!("the final token list got no answer: {s:?}")));
                return Ok(());
            }
        }
    };
    let end = loop {
        let tenants = c.list_tenants(pb::ListTenantsRequest::default()).await;
        let limits = c.get_limits().await;
        match (tenants, limits) {
            (Ok(t), Ok(l)) => {
                break (
                    t.tenants.into_iter().map(|t| t.id).collect(),
                    format!("{l:?}"),
                );
            }
            (t, l) if now_ms() - healed > super::world::CONVERGE_MS => {
                shared.borrow_mut().liveness = Some(Err(format!(
                    "the final tenant list or limits got no answer: {:?} {:?}",
                    t.err(),
                    l.err()
                )));
                return Ok(());
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    shared.borrow_mut().cluster_end = Some(end);
    shared.borrow_mut().tokens = Some(
        tokens
            .iter()
            .map(|t| match pb::Role::try_from(t.role) {
                Ok(pb::Role::ClusterAdmin) => format!("cluster-admin {}", t.id),
                Ok(r) => format!("{} {}", r.as_str_name(), t.tenant).replace("ROLE_WRITE", "write"),
                Err(_) => format!("role {} {}", t.role, t.tenant),
            })
            .collect(),
    );
    Ok(())
}

/// Every item of one kind in `tenant` as the member behind `ch` holds it (serializable);
/// `None` if the scan fails.
async fn scan(ch: &Channel, tenant: &str, kind: pb::ScanKind) -> Option<Vec<pb::scan_item::Item>> {
    let req = authed(
        pb::ScanRequest {
            tenant: tenant.into(),
            kind: kind as i32,
            page_size: 1000,
            consistency: pb::Consistency::Serializable as i32,
        },
        Duration::from_secs(2),
    );
    let mut stream = GraphServiceClient::new(ch.clone())
        .scan(req)
        .await
        .ok()?
        .into_inner();
    let mut items = Vec::new();
    while let Some(item) = stream.message().await.ok()? {
        items.extend(item.item);
    }
    Some(items)
}

async fn replica(node: &str, account_ids: &[u64]) -> Option<Replica> {
    let ch = direct(node);
    let mut cc = ClusterServiceClient::new(ch.clone());
    // With the admin token: without one, Status answers only what routing needs.
    let req = authed(pb::StatusRequest {}, Duration::from_secs(1));
    let status = cc.status(req).await.ok()?.into_inner();
    let applied = status.applied.map_or(0, |a| a.index);
    let m = status.membership.unwrap_or_default();
    let ids = |v: &[pb::Member]| v.iter().map(|m| m.id).collect::<Vec<_>>();
    let membership = (ids(&m.voters), ids(&m.learners));
    let mut data = BTreeMap::new();
    let mut quota_tags = BTreeMap::new();
    let mut accounts = BTreeMap::new();
    for tenant in [REGISTERS, QUOTA] {
        let mut rows = Vec::new();
        for item in scan(&ch, tenant, pb::ScanKind::Nodes).await? {
            if let pb::scan_item::Item::Node(n) = item {
                let props: BTreeMap<_, _> = n
                    .properties
                    .iter()
                    .map(|(k, v)| (k, format!("{v:?}")))
                    .collect();
                rows.push(format!(
                    "{} {:?} {:?} v{}",
                    n.id, n.labels, props, n.version
                ));
                if tenant == QUOTA
                    && let Some(tag) = prop(&n, "c")
                {
                    quota_tags.insert(n.id, tag);
                }
                if tenant == REGISTERS
                    && account_ids.contains(&n.id)
                    && let Some(v) = prop(&n, "v")
                {
                    accounts.insert(n.id, v);
                }
            }
        }
        data.insert(tenant.to_string(), rows);
    }
    let mut quota_edges = Vec::new();
    for item in scan(&ch, QUOTA, pb::ScanKind::Edges).await? {
        if let pb::scan_item::Item::Edge(e) = item {
            quota_edges.push((e.id, e.source, e.target));
        }
    }
    let usage = usage_of(ch.clone()).await;
    let mut tenants = BTreeMap::new();
    for tenant in [REGISTERS, QUOTA] {
        let req = authed(
            pb::GetTenantRequest {
                id: tenant.into(),
                consistency: pb::Consistency::Serializable as i32,
            },
            Duration::from_secs(1),
        );
        let t = TenantServiceClient::new(ch.clone())
            .get_tenant(req)
            .await
            .ok()?
            .into_inner();
        tenants.insert(
            tenant.to_string(),
            Settings {
                quotas: t.quotas,
                enabled: t.enabled,
                rate_limits: t.rate_limits,
                config: format!("{:?}", t.config),
            },
        );
    }
    // A write still in the log may apply during the scan: then read the replica again.
    // With the admin token: without one, Status answers only what routing needs.
    let req = authed(pb::StatusRequest {}, Duration::from_secs(1));
    let after = ClusterServiceClient::new(ch)
        .status(req)
        .await
        .ok()?
        .into_inner();
    if after.applied.map_or(0, |a| a.index) != applied {
        return None;
    }
    Some(Replica {
        applied,
        data,
        quota_tags,
        quota_edges,
        accounts,
        usage,
        tenants,
        membership,
    })
}
