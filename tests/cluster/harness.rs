//! The harness of the in-process cluster tests: whole nodes on their own runtimes, a TCP
//! proxy that can cut a node off, crash/restart, and helpers for writes and reads.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use raftgraph::client::{Client, ClientOptions};
use raftgraph::proto::v1 as pb;
use raftgraph::proto::v1::cluster_service_client::ClusterServiceClient;
use raftgraph::proto::v1::graph_service_client::GraphServiceClient;
use raftgraph::server::{Listeners, Server, ServerConfig, TlsMode};

use super::helpers::certs::TestCa;
pub use super::helpers::proxy::{Proxy, proxy};
use tokio::net::TcpListener;

pub const WAIT: Duration = Duration::from_secs(60);

/// Raft timing for a test cluster.
#[derive(Clone, Copy)]
pub struct Timing {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
}

pub const FAST: Timing = Timing {
    heartbeat_ms: 50,
    election_min_ms: 300,
    election_max_ms: 600,
};

pub struct TestNode {
    pub config: ServerConfig,
    pub rt: Option<tokio::runtime::Runtime>,
    pub node: Option<Server>,
    pub proxy: Option<Proxy>,
}

impl TestNode {
    pub fn node(&self) -> &Server {
        self.node.as_ref().expect("node is running")
    }

    pub fn advertise(&self) -> String {
        self.config.advertise_addr()
    }

    pub fn peer_advertise(&self) -> String {
        self.config.peer_advertise_addr()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        // Dropping a runtime inside the test's runtime would panic; abandon it instead.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

pub fn clock() -> raftgraph::api::Clock {
    Arc::new(|| 1_700_000_000_000_000)
}

/// Starts `config`'s node on a runtime of its own, listening on `config.listen` and
/// `config.peer_listen`.
pub async fn boot(config: ServerConfig) -> (tokio::runtime::Runtime, Server) {
    boot_on(config, None).await
}

/// [`boot`] on `listeners` (client, peer) already bound to `config`'s addresses, when given.
pub async fn boot_on(
    config: ServerConfig,
    listeners: Option<(std::net::TcpListener, std::net::TcpListener)>,
) -> (tokio::runtime::Runtime, Server) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (api, peer) = listeners.unwrap_or_else(|| {
        let bind = |a| std::net::TcpListener::bind(a).unwrap();
        (bind(config.listen), bind(config.peer_listen))
    });
    api.set_nonblocking(true).unwrap();
    peer.set_nonblocking(true).unwrap();
    let node = rt
        .spawn(async move {
            let listeners = Listeners {
                api: TcpListener::from_std(api).unwrap(),
                peer: TcpListener::from_std(peer).unwrap(),
            };
            Server::start_with_clock(config, listeners, clock()).await
        })
        .await
        .unwrap()
        .expect("node starts");
    (rt, node)
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    /// The cluster's CA; the members' certificates. The client listeners run without TLS here
    /// (these tests are about Raft); tests/peer_security.rs covers TLS on both.
    pub ca: TestCa,
    pub timing: Timing,
    pub nodes: BTreeMap<u64, TestNode>,
}

impl Cluster {
    /// `n` nodes, initialised as one cluster through node 1's cluster service.
    pub async fn start(n: u64, timing: Timing, proxied: bool) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(&dir.path().join("certs"), "test");
        let mut c = Cluster {
            dir,
            ca,
            timing,
            nodes: BTreeMap::new(),
        };
        for id in 1..=n {
            c.add_node(id, proxied).await;
        }
        let members = c
            .nodes
            .iter()
            .map(|(id, n)| pb::Member {
                id: *id,
                addr: n.advertise(),
                peer_addr: n.peer_advertise(),
            })
            .collect();
        let mut cc = ClusterServiceClient::connect(format!("http://{}", c.nodes[&1].advertise()))
            .await
            .unwrap();
        cc.init(pb::InitRequest { members }).await.unwrap();
        c.leader().await;
        c
    }

    /// Starts a new, uninitialised node `id`.
    pub async fn add_node(&mut self, id: u64, proxied: bool) {
        // Bound now and kept until the node takes them: a port merely looked up and let go
        // could be handed out again (to the proxy's own listeners below, or another test)
        // before the node binds it.
        let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let (api_listener, peer_listener) = (bind(), bind());
        let (port, peer_port) = (
            api_listener.local_addr().unwrap(),
            peer_listener.local_addr().unwrap(),
        );
        let mut config = ServerConfig::new(
            "test",
            id,
            port,
            peer_port,
            &self.dir.path().join(id.to_string()),
        );
        config.tls = TlsMode::Off;
        // These tests are of replication, not of who may call (tests/auth.rs is).
        config.auth = raftgraph::auth::AuthMode::Off;
        config.certs = Some(self.ca.member(id));
        config.raft.heartbeat_ms = self.timing.heartbeat_ms;
        config.raft.election_timeout_min_ms = self.timing.election_min_ms;
        config.raft.election_timeout_max_ms = self.timing.election_max_ms;
        config.storage.write_buffer_bytes = 8 << 20;
        config.storage.block_cache_bytes = 8 << 20;
        config.storage.wal_segment_bytes = 32 << 20;
        let proxy = if proxied {
            let p = proxy(port, peer_port).await;
            config.advertise = Some(p.addr.to_string());
            config.peer_advertise = Some(p.peer_addr.to_string());
            Some(p)
        } else {
            None
        };
        let (rt, node) = boot_on(config.clone(), Some((api_listener, peer_listener))).await;
        self.nodes.insert(
            id,
            TestNode {
                config,
                rt: Some(rt),
                node: Some(node),
                proxy,
            },
        );
    }

    /// A peer-plane channel to member `target`, presenting member `as_member`'s certificate.
    pub fn peer_channel(&self, target: u64, as_member: u64) -> tonic::transport::Channel {
        let name = raftgraph::tls::member_name("test", target);
        self.ca
            .dialer_as(&self.ca.member(as_member))
            .dial_named(&self.nodes[&target].peer_advertise(), Some(&name), WAIT)
            .unwrap()
    }

    pub fn live(&self) -> impl Iterator<Item = (u64, &Server)> {
        self.nodes
            .iter()
            .filter_map(|(id, n)| n.node.as_ref().map(|node| (*id, node)))
    }

    /// Waits for a live node that leads and has applied its own term's first entry (before
    /// that, openraft may still answer writes with ForwardToLeader).
    pub async fn leader(&self) -> u64 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            for (id, n) in self.live() {
                let m = n.raft().metrics().borrow_watched().clone();
                let ready = m.current_leader == Some(id)
                    && m.last_applied
                        .as_ref()
                        .is_some_and(|l| l.committed_leader_id().term == m.current_term);
                if ready {
                    return id;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no ready leader within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.advertise()).collect()
    }

    pub fn client(&self, client_id: u64) -> Client {
        Client::new(
            self.endpoints(),
            ClientOptions {
                client_id: Some(client_id),
                deadline: WAIT,
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// Aborts node `id`'s tasks where they stand and closes its files and sockets.
    pub async fn crash(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).unwrap();
        let rt = n.rt.take().unwrap();
        tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(30)))
            .await
            .unwrap();
        // Releases the reader's database handle and the data directory lock.
        drop(n.node.take());
    }

    /// Node `id`'s current term, as its Raft metrics report it.
    pub fn term(&self, id: u64) -> u64 {
        self.nodes[&id]
            .node()
            .raft()
            .metrics()
            .borrow_watched()
            .current_term
    }

    /// Starts node `id` again on its data directory and port.
    pub async fn restart(&mut self, id: u64) {
        let n = self.nodes.get_mut(&id).unwrap();
        let (rt, node) = boot(n.config.clone()).await;
        n.rt = Some(rt);
        n.node = Some(node);
    }

    /// Waits until every live node applied at least the leader's last log index; returns it.
    pub async fn converge(&self) -> u64 {
        let leader = self.leader().await;
        let last = self.nodes[&leader]
            .node()
            .raft()
            .metrics()
            .borrow_watched()
            .last_log_index;
        for (_, n) in self.live() {
            n.raft()
                .wait(Some(WAIT))
                .applied_index_at_least(last, "converged")
                .await
                .unwrap();
        }
        last.unwrap_or(0)
    }

    /// Stops every node (tasks aborted, files closed) before the test returns: a RocksDB left
    /// open by an abandoned runtime can abort the process at exit.
    pub async fn stop(mut self) {
        let ids: Vec<u64> = self.live().map(|(id, _)| id).collect();
        for id in ids {
            self.crash(id).await;
        }
    }

    /// Every live node's whole-state digest, after converging.
    pub async fn assert_same_state(&self) {
        self.converge().await;
        let digests: BTreeSet<[u8; 32]> = self
            .live()
            .map(|(_, n)| n.reader().digest().unwrap())
            .collect();
        assert_eq!(digests.len(), 1, "replicas differ after converging");
    }
}

pub fn node_op(name: &str) -> pb::Operation {
    let value = pb::Value {
        kind: Some(pb::value::Kind::StringValue(name.into())),
    };
    pb::Operation {
        op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
            labels: vec!["Item".into()],
            properties: [("name".to_string(), value)].into(),
        })),
    }
}

pub async fn create_tenant(c: &Client, id: &str) {
    c.create_tenant(pb::CreateTenantRequest {
        request_id: None,
        id: id.into(),
        quotas: Some(pb::Quotas::default()), // unlimited
        config: None,
    })
    .await
    .unwrap();
}

/// Writes `n` nodes named `{prefix}-{i}` one after another, recording each id and name in `into`.
pub async fn write_named(
    c: &Client,
    tenant: &str,
    prefix: &str,
    n: usize,
    into: &mut BTreeMap<u64, String>,
) {
    for i in 0..n {
        let name = format!("{prefix}-{i}");
        into.insert(write_node(c, tenant, &name).await, name);
    }
}

/// Node `addr`'s write-batcher counters from `Status`: (writes, entries).
pub async fn batched(addr: &str) -> (u64, u64) {
    let s = ClusterServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .status(pb::StatusRequest {})
        .await
        .unwrap()
        .into_inner();
    (s.batched_writes, s.batched_entries)
}

/// Writes one node named `name`; returns its id.
pub async fn write_node(c: &Client, tenant: &str, name: &str) -> u64 {
    let r = c
        .write(pb::WriteRequest {
            tenant: tenant.into(),
            request_id: None,
            preconditions: vec![],
            operations: vec![node_op(name)],
        })
        .await
        .unwrap_or_else(|s| panic!("write {name}: {s}"));
    match r.results[0].result {
        Some(pb::op_result::Result::NodeCreated(id)) => id,
        ref other => panic!("unexpected result {other:?}"),
    }
}

pub fn linearizable(tenant: &str, id: u64) -> pb::GetNodeRequest {
    pb::GetNodeRequest {
        tenant: tenant.into(),
        id,
        consistency: pb::Consistency::Linearizable as i32,
    }
}

pub fn name_of(n: &pb::Node) -> String {
    match &n.properties["name"].kind {
        Some(pb::value::Kind::StringValue(s)) => s.clone(),
        other => panic!("name is {other:?}"),
    }
}

/// Reads `id` linearizably through node `addr` only.
pub async fn read_at(addr: &str, tenant: &str, id: u64) -> Result<pb::Node, tonic::Status> {
    let mut g = GraphServiceClient::connect(format!("http://{addr}"))
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    g.get_node(linearizable(tenant, id))
        .await
        .map(|r| r.into_inner())
}
