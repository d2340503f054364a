//! The security boundary, tried from the attacker's side with real TLS: in-process servers on
//! loopback, each with a client listener (TLS) and a peer listener (mutual TLS).
//!
//! - The peer listener completes no handshake without a certificate of the cluster's CA, and
//!   tells a plaintext client in words that it needs TLS.
//! - A certificate of the CA that names another cluster, a member not in the membership, or no
//!   member is refused with UNAUTHENTICATED before the payload is decoded (a member's garbage
//!   is INVALID_ARGUMENT: decoding comes after the check).
//! - Forged Raft messages (a vote with the transfer flag and term `u64::MAX`, an append with a
//!   higher vote, a snapshot install) sent to the client port or by a non-member change
//!   nothing: same leader's data on every member, the term far from overflow.
//! - The client plane speaks TLS; a follower forwards over it; a client that trusts another CA,
//!   or none, is refused with a reason.
//! - A reload serves new connections with the new certificates and keeps the old ones when the
//!   new files are bad.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use raftgraph::client::{Client, ClientOptions, Pool};
use raftgraph::proto::v1 as pb;
use raftgraph::proto::v1::cluster_service_client::ClusterServiceClient;
use raftgraph::proto::v1::raft_service_client::RaftServiceClient;
use raftgraph::raft::TypeConfig;
use raftgraph::server::{Listeners, Server, ServerConfig, TlsMode};
use raftgraph::tls::{self, CertFiles, member_name};
use raftgraph::transport::Dialer;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::Channel;

mod helpers;
use helpers::certs::TestCa;

const CLUSTER: &str = "sec";
const WAIT: Duration = Duration::from_secs(60);

async fn start(ca_files: CertFiles, id: u64, dir: &Path) -> Server {
    start_with(ca_files, id, dir, &|_| {}).await
}

async fn start_with(
    ca_files: CertFiles,
    id: u64,
    dir: &Path,
    tweak: &dyn Fn(&mut ServerConfig),
) -> Server {
    // The servers' log, shown for a failing test.
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
    assert_eq!(c.tls, TlsMode::On);
    // The peer plane is under test here; callers of the client plane are in tests/auth.rs.
    c.auth = raftgraph::auth::AuthMode::Off;
    c.certs = Some(ca_files);
    c.raft.heartbeat_ms = 100;
    c.raft.election_timeout_min_ms = 1000;
    c.raft.election_timeout_max_ms = 2000;
    c.storage.write_buffer_bytes = 8 << 20;
    c.storage.block_cache_bytes = 8 << 20;
    c.storage.wal_segment_bytes = 8 << 20;
    tweak(&mut c);
    Server::start(c, Listeners { api, peer }).await.unwrap()
}

struct Cluster {
    _dir: tempfile::TempDir,
    ca: TestCa,
    servers: Vec<Server>,
}

impl Cluster {
    /// Three members with TLS on both listeners, initialised through member 1's client port.
    async fn start() -> Cluster {
        Self::start_with(&|_| {}).await
    }

    /// [`Cluster::start`] with `tweak` applied to every member's config.
    async fn start_with(tweak: &dyn Fn(&mut ServerConfig)) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(&dir.path().join("certs"), CLUSTER);
        let mut servers = Vec::new();
        for id in 1..=3 {
            servers.push(start_with(ca.member(id), id, dir.path(), tweak).await);
        }
        let members = servers
            .iter()
            .map(|s| pb::Member {
                id: s.config().member_id,
                addr: s.local_addr().to_string(),
                peer_addr: s.peer_local_addr().to_string(),
            })
            .collect();
        let ch = ca
            .dialer()
            .channel(&servers[0].local_addr().to_string())
            .unwrap();
        ClusterServiceClient::new(ch)
            .init(pb::InitRequest { members })
            .await
            .unwrap();
        let c = Cluster {
            _dir: dir,
            ca,
            servers,
        };
        c.leader().await;
        c
    }

    /// The leader, once it has applied its term's first entry.
    async fn leader(&self) -> u64 {
        let m = self.servers[0]
            .raft()
            .wait(Some(WAIT))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .unwrap();
        let leader = m.current_leader.unwrap();
        self.server(leader)
            .raft()
            .wait(Some(WAIT))
            .metrics(
                |m| {
                    m.last_applied
                        .as_ref()
                        .is_some_and(|l| l.committed_leader_id().term == m.current_term)
                },
                "the leader applied its term's first entry",
            )
            .await
            .unwrap();
        leader
    }

    fn server(&self, id: u64) -> &Server {
        &self.servers[(id - 1) as usize]
    }

    fn endpoints(&self) -> Vec<String> {
        self.servers
            .iter()
            .map(|s| s.local_addr().to_string())
            .collect()
    }

    fn client(&self, endpoints: Vec<String>) -> Client {
        Client::new(
            endpoints,
            ClientOptions {
                pool: Pool::new(self.ca.dialer()),
                deadline: WAIT,
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// A peer-plane channel to member `id` from `dialer` (verifying the member's name).
    fn peer(&self, dialer: &Dialer, id: u64) -> RaftServiceClient<Channel> {
        let addr = self.server(id).peer_local_addr().to_string();
        let name = member_name(CLUSTER, id);
        RaftServiceClient::new(dialer.dial_named(&addr, Some(&name), WAIT).unwrap())
    }

    /// Every member's state digest once all have applied the leader's last entry.
    async fn digests(&self) -> Vec<[u8; 32]> {
        let leader = self.leader().await;
        let last = self
            .server(leader)
            .raft()
            .metrics()
            .borrow_watched()
            .last_log_index;
        let mut out = Vec::new();
        for s in &self.servers {
            s.raft()
                .wait(Some(WAIT))
                .applied_index_at_least(last, "applied")
                .await
                .unwrap();
            out.push(s.reader().digest().unwrap());
        }
        out
    }

    /// A tenant created through `endpoints` is applied on every member, whose states agree.
    async fn serves_on(&self, endpoints: Vec<String>, tenant: &str) {
        self.client(endpoints)
            .create_tenant(pb::CreateTenantRequest {
                id: tenant.into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let d = self.digests().await;
        assert!(d.windows(2).all(|w| w[0] == w[1]), "states differ: {d:?}");
    }

    async fn stop(self) {
        for s in self.servers {
            s.shutdown().await.unwrap();
        }
    }
}

fn garbage() -> pb::RaftPayload {
    pb::RaftPayload {
        data: vec![1, 2, 3],
    }
}

fn dialer_with(ca: &Path, identity: Option<(&Path, &Path)>) -> Dialer {
    let c = tls::client_config_from_files(ca, identity).unwrap();
    Dialer::default().with_tls(Arc::new(move || c.clone()))
}

/// A call that never reached a service: the connection failed or was closed under it.
fn closed(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Cancelled | Code::Unknown)
}

/// The message of `s` with its transport causes (what a user reads).
fn said(s: tonic::Status) -> (Code, String) {
    let s = raftgraph::client::explained(s);
    (s.code(), s.message().to_lowercase())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_listener_completes_no_handshake_without_a_certificate_of_the_clusters_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir.path().join("certs"), CLUSTER);
    let other = TestCa::new(&dir.path().join("other"), CLUSTER);
    let server = start(ca.member(1), 1, dir.path()).await;
    let peer = server.peer_local_addr().to_string();
    let name = member_name(CLUSTER, 1);
    let vote = |d: Dialer| {
        let (peer, name) = (peer.clone(), name.clone());
        async move {
            let ch = d.dial_named(&peer, Some(&name), WAIT).unwrap();
            RaftServiceClient::new(ch)
                .vote(garbage())
                .await
                .unwrap_err()
        }
    };

    // No client certificate: the server requires one. (TLS 1.3 clients finish their side of
    // the handshake before the server checks their certificate, so they see the connection
    // closed; the server logs why.)
    let (code, msg) = said(vote(ca.dialer()).await);
    assert!(closed(code), "{code:?} {msg}");
    // A certificate naming this very member, from another CA.
    let forged = other.member(1);
    let (code, msg) = said(
        vote(dialer_with(
            &ca.ca_path(),
            Some((&forged.cert, &forged.key)),
        ))
        .await,
    );
    assert!(closed(code), "{code:?} {msg}");
    // The server's certificate does not verify against another CA either.
    let (code, msg) = said(vote(other.dialer_as(&other.member(2))).await);
    assert_eq!(code, Code::Unavailable, "{msg}");
    assert!(
        msg.contains("unknownissuer") || msg.contains("certificate"),
        "{msg}"
    );
    // A server that is not the member meant is refused by the dialing side.
    let ch = ca
        .dialer_as(&ca.member(2))
        .dial_named(&peer, Some(&member_name(CLUSTER, 7)), WAIT)
        .unwrap();
    let (code, msg) = said(
        RaftServiceClient::new(ch)
            .vote(garbage())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, Code::Unavailable, "{msg}");
    assert!(msg.contains("m7.sec.raftgraph"), "{msg}");
    // Plaintext: told to use TLS.
    let (code, msg) = said(vote(Dialer::default()).await);
    assert_ne!(code, Code::Ok);
    assert!(msg.contains("requires tls"), "{msg}");
    // With a member certificate of this CA the call reaches the service (and the garbage is
    // refused by name there).
    let (code, msg) = said(vote(ca.dialer_as(&ca.member(2))).await);
    assert_eq!(code, Code::InvalidArgument, "{msg}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_of_the_ca_must_name_this_cluster_and_a_member_before_anything_is_decoded() {
    let c = Cluster::start().await;
    let leader = c.leader().await;
    let (eve_cert, eve_key) = c.ca.client("eve");
    let refused = [
        (
            "another cluster",
            c.ca.dialer_as(&c.ca.member_of("other", 1)),
            "cluster \"other\"",
        ),
        (
            "a non-member",
            c.ca.dialer_as(&c.ca.member(9)),
            "member 9 is not",
        ),
        (
            "a client certificate",
            dialer_with(&c.ca.ca_path(), Some((&eve_cert, &eve_key))),
            "member certificate",
        ),
    ];
    for (who, dialer, why) in refused {
        let mut p = c.peer(&dialer, leader);
        let calls = [
            p.vote(garbage()).await.map(|_| ()),
            p.pre_vote(garbage()).await.map(|_| ()),
            p.append_entries(garbage()).await.map(|_| ()),
            p.transfer_leader(garbage()).await.map(|_| ()),
            p.read_index(pb::ReadIndexRequest {}).await.map(|_| ()),
            p.install_snapshot(futures::stream::iter([pb::SnapshotChunk::default()]))
                .await
                .map(|_| ()),
            p.stream_append(futures::stream::iter([garbage()]))
                .await
                .map(|_| ()),
        ];
        for (i, r) in calls.into_iter().enumerate() {
            let s = r.expect_err(who);
            assert_eq!(s.code(), Code::Unauthenticated, "{who}, call {i}: {s:?}");
            assert!(
                s.message().contains(why),
                "{who}, call {i}: {}",
                s.message()
            );
        }
        // `Membership` is answered to any member of this cluster, in the membership or not (a
        // member with an old view asks members that may not know it); to no one else.
        let asked = p.membership(pb::PeerMembershipRequest {}).await;
        if who == "a non-member" {
            let answer = asked.expect("Membership answered to a member of this cluster");
            assert!(!answer.into_inner().data.is_empty());
        } else {
            let s = asked.expect_err(who);
            assert_eq!(s.code(), Code::Unauthenticated, "{who}, Membership: {s:?}");
        }
    }
    // A member's garbage gets past the check and is refused by the decoder, by name.
    let mut p = c.peer(&c.ca.dialer_as(&c.ca.member(2)), leader);
    let s = p.vote(garbage()).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    c.stop().await;
}

/// Raft messages an attacker would send: a vote with the transfer flag and the largest term, an
/// append under a higher vote, a snapshot install under one.
fn forged() -> (pb::RaftPayload, pb::RaftPayload, pb::SnapshotChunk) {
    use openraft::raft::{AppendEntriesRequest, VoteRequest};
    use openraft::type_config::alias::{LogIdOf, VoteOf};
    let vote = VoteOf::<TypeConfig>::new(u64::MAX, 9);
    let last = LogIdOf::<TypeConfig>::new(
        <openraft::type_config::alias::LeaderIdOf<TypeConfig> as openraft::vote::RaftLeaderIdExt>::new_committed(u64::MAX, 9),
        u64::MAX,
    );
    let mut v = VoteRequest::<TypeConfig>::new(vote, Some(last));
    v.leadership_transfer = true;
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    let payload = |b| pb::RaftPayload { data: b };
    let header =
        raftgraph::codec::encode(&(vote, raftgraph::raft::SnapshotMeta::default())).unwrap();
    (
        payload(raftgraph::codec::encode(&v).unwrap()),
        payload(raftgraph::codec::encode(&append).unwrap()),
        pb::SnapshotChunk {
            part: Some(pb::snapshot_chunk::Part::Header(header)),
            total_bytes: 8,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_raft_messages_from_outside_the_membership_change_nothing() {
    let c = Cluster::start().await;
    let client = c.client(c.endpoints());
    client
        .create_tenant(pb::CreateTenantRequest {
            id: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let before = c.digests().await;
    let leader = c.leader().await;
    let term = c
        .server(leader)
        .raft()
        .metrics()
        .borrow_watched()
        .current_term;
    let (vote, append, snapshot) = forged();

    for id in 1..=3 {
        // On the client port: the Raft service is not there at all.
        let api = c.server(id).local_addr().to_string();
        let mut p = RaftServiceClient::new(c.ca.dialer().channel(&api).unwrap());
        for s in [
            p.vote(vote.clone()).await.unwrap_err(),
            p.append_entries(append.clone()).await.unwrap_err(),
            p.install_snapshot(futures::stream::iter([snapshot.clone()]))
                .await
                .unwrap_err(),
        ] {
            assert_eq!(s.code(), Code::Unimplemented, "member {id}: {s:?}");
        }
        // On the peer port, with a certificate of the CA that names no member of the cluster.
        let mut p = c.peer(&c.ca.dialer_as(&c.ca.member(9)), id);
        for s in [
            p.vote(vote.clone()).await.unwrap_err(),
            p.pre_vote(vote.clone()).await.unwrap_err(),
            p.append_entries(append.clone()).await.unwrap_err(),
            p.install_snapshot(futures::stream::iter([snapshot.clone()]))
                .await
                .unwrap_err(),
        ] {
            assert_eq!(s.code(), Code::Unauthenticated, "member {id}: {s:?}");
        }
        // Without a certificate the handshake fails before any message.
        let mut p = c.peer(&c.ca.dialer(), id);
        let s = p.vote(vote.clone()).await.unwrap_err();
        assert!(closed(s.code()), "member {id}: {s:?}");
    }

    // Nothing moved: no member stored the forged term, the data is what it was on every
    // member, and the cluster still takes writes.
    for s in &c.servers {
        let m = s.raft().metrics().borrow_watched().clone();
        assert!(
            m.current_term < 1 << 32,
            "stored the forged term: {}",
            m.current_term
        );
    }
    assert_eq!(c.digests().await, before);
    assert!(
        c.server(c.leader().await)
            .raft()
            .metrics()
            .borrow_watched()
            .current_term
            >= term
    );
    client
        .create_tenant(pb::CreateTenantRequest {
            id: "u".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    c.stop().await;
}

/// A member that was down while another was added (and one it knew was removed) refuses the
/// new member on the peer plane at first: its own membership does not name it. Asked, a member
/// it knows vouches for the new one, so it catches up from that new member as leader; before
/// this, it refused that leader for as long as it led.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_missed_a_membership_change_catches_up_from_a_leader_it_did_not_know() {
    use openraft::ChangeMembers;
    use raftgraph::raft::Member;
    let mut c = Cluster::start().await;
    let tenant = |id: &str| pb::CreateTenantRequest {
        id: id.into(),
        ..Default::default()
    };
    c.client(c.endpoints())
        .create_tenant(tenant("before"))
        .await
        .unwrap();
    // Member 3 goes down; member 4 is added and member 1 removed without it.
    let config3 = c.servers[2].config().clone();
    c.servers.remove(2).shutdown().await.unwrap();
    c.servers
        .push(start(c.ca.member(4), 4, c._dir.path()).await);
    let raft_of = |c: &Cluster, id: u64| {
        c.servers
            .iter()
            .find(|s| s.config().member_id == id)
            .unwrap()
            .raft()
            .clone()
    };
    let lead = |c: &Cluster| {
        let r = raft_of(c, 2);
        async move {
            r.wait(Some(WAIT))
                .metrics(|m| m.current_leader.is_some(), "a leader")
                .await
                .unwrap()
                .current_leader
                .unwrap()
        }
    };
    let leader = raft_of(&c, lead(&c).await);
    let four = Member::new(
        c.servers[2].peer_local_addr().to_string(),
        c.servers[2].local_addr().to_string(),
    );
    leader.add_learner(4, four, true).await.unwrap();
    leader
        .change_membership(ChangeMembers::AddVoterIds([4].into()), false)
        .await
        .unwrap();
    leader
        .change_membership(ChangeMembers::RemoveVoters([1].into()), false)
        .await
        .unwrap();
    c.servers.remove(0).shutdown().await.unwrap();
    // Member 4, which member 3 has never heard of, leads.
    let now = lead(&c).await;
    if now != 4 {
        raft_of(&c, now).trigger().transfer_leader(4).await.unwrap();
    }
    let four = raft_of(&c, 4);
    four.wait(Some(WAIT))
        .metrics(
            |m| {
                m.current_leader == Some(4)
                    && m.last_applied
                        .as_ref()
                        .is_some_and(|l| l.committed_leader_id().term == m.current_term)
            },
            "member 4 leads",
        )
        .await
        .unwrap();
    let endpoints: Vec<String> = c
        .servers
        .iter()
        .map(|s| s.local_addr().to_string())
        .collect();
    c.client(endpoints)
        .create_tenant(tenant("after"))
        .await
        .unwrap();

    // Member 3 comes back with the membership {1, 2, 3} it knew.
    let three = loop {
        let listeners = Listeners {
            api: TcpListener::bind(config3.listen).await.unwrap(),
            peer: TcpListener::bind(config3.peer_listen).await.unwrap(),
        };
        match Server::start(config3.clone(), listeners).await {
            Ok(s) => break s,
            // The old server's tasks may hold its database for a moment.
            Err(e) if e.to_string().contains("lock") => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("restarting member 3: {e}"),
        }
    };
    let known = three
        .raft()
        .metrics()
        .borrow_watched()
        .membership_config
        .clone();
    assert!(
        known.membership().get_node(&4).is_none(),
        "member 3 knew member 4 already: {known:?}"
    );
    let last = four.metrics().borrow_watched().last_log_index;
    three
        .raft()
        .wait(Some(WAIT))
        .applied_index_at_least(last, "member 3 caught up from member 4")
        .await
        .unwrap();
    let m = three.raft().metrics().borrow_watched().clone();
    assert_eq!(m.current_leader, Some(4));
    assert!(m.membership_config.membership().get_node(&4).is_some());
    assert!(m.membership_config.membership().get_node(&1).is_none());
    c.servers.push(three);
    for s in &c.servers {
        s.raft()
            .wait(Some(WAIT))
            .applied_index_at_least(last, "applied")
            .await
            .unwrap();
    }
    let digests: Vec<_> = c
        .servers
        .iter()
        .map(|s| s.reader().digest().unwrap())
        .collect();
    assert!(digests.windows(2).all(|w| w[0] == w[1]), "states differ");
    for s in c.servers {
        s.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_plane_speaks_tls_forwards_over_it_and_refuses_clients_that_do_not() {
    let c = Cluster::start().await;
    let leader = c.leader().await;
    let followers: Vec<u64> = (1..=3).filter(|id| *id != leader).collect();
    let at = |id: u64| vec![c.server(id).local_addr().to_string()];
    // A write through a follower only: forwarded to the leader over the client plane's TLS.
    let w = c.client(at(followers[0]));
    w.create_tenant(pb::CreateTenantRequest {
        id: "t".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    // A linearizable read through the other follower: the leader's read index over the peer
    // plane's mutual TLS.
    let r = c.client(at(followers[1]));
    let got = r
        .get_tenant(pb::GetTenantRequest {
            id: "t".into(),
            consistency: pb::Consistency::Linearizable as i32,
        })
        .await
        .unwrap();
    assert_eq!(got.id, "t");

    let addr = c.server(leader).local_addr().to_string();
    let status = |d: Dialer| {
        let addr = addr.clone();
        async move {
            let ch = d.channel(&addr).unwrap();
            ClusterServiceClient::new(ch)
                .status(pb::StatusRequest {})
                .await
        }
    };
    // A plaintext client is told in words.
    let (code, msg) = said(status(Dialer::default()).await.unwrap_err());
    assert_ne!(code, Code::Ok);
    assert!(msg.contains("requires tls"), "{msg}");
    // A client that trusts another CA does not trust the server.
    let dir = tempfile::tempdir().unwrap();
    let other = TestCa::new(dir.path(), CLUSTER);
    let (code, msg) = said(status(other.dialer()).await.unwrap_err());
    assert_eq!(code, Code::Unavailable, "{msg}");
    assert!(
        msg.contains("unknownissuer") || msg.contains("certificate"),
        "{msg}"
    );
    // With the CA: served.
    status(c.ca.dialer()).await.unwrap();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloaded_certificates_serve_new_connections_and_bad_files_keep_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let old = TestCa::new(&dir.path().join("old"), CLUSTER);
    let new = TestCa::new(&dir.path().join("new"), CLUSTER);
    // The server reads its files from `live/`: the old CA's first.
    let live = dir.path().join("live");
    std::fs::create_dir_all(&live).unwrap();
    let files = CertFiles::in_dir(&live, 1);
    let install = |from: &CertFiles| {
        std::fs::copy(&from.ca, &files.ca).unwrap();
        std::fs::copy(&from.cert, &files.cert).unwrap();
        std::fs::copy(&from.key, &files.key).unwrap();
    };
    install(&old.member(1));
    let server = start(files.clone(), 1, dir.path()).await;
    let addr = server.local_addr().to_string();
    // A fresh dialer per attempt: a new connection each time.
    let status = |ca: &TestCa| {
        let ch = ca.dialer().channel(&addr).unwrap();
        async move {
            ClusterServiceClient::new(ch)
                .status(pb::StatusRequest {})
                .await
        }
    };
    status(&old).await.unwrap();
    status(&new).await.unwrap_err();

    install(&new.member(1));
    server.reload_tls().unwrap();
    status(&new).await.unwrap();
    let (code, msg) = said(status(&old).await.unwrap_err());
    assert!(closed(code), "{code:?} {msg}");

    // A broken key: the reload fails naming the file, and the certificates in force stay.
    std::fs::write(&files.key, "not a key").unwrap();
    let e = server.reload_tls().unwrap_err().to_string();
    assert!(e.contains("member-1.key"), "{e}");
    assert!(
        !e.contains("not a key"),
        "the file's content is not echoed: {e}"
    );
    status(&new).await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_transfers_are_bounded_by_a_chunk_deadline_their_declared_size_and_free_space() {
    const MAX: u64 = 1 << 60;
    let c = Cluster::start_with(&|c| {
        c.raft.snapshot_chunk_timeout_ms = 500;
        c.storage.snapshot_receive_bytes_max = MAX;
    })
    .await;
    let leader = c.leader().await;
    let target = (1..=3).find(|id| *id != leader).unwrap();
    let sender = (1..=3).find(|id| *id != target).unwrap();
    let mut p = c.peer(&c.ca.dialer_as(&c.ca.member(sender)), target);
    let (_, _, header) = forged();
    let declaring = |total: u64| pb::SnapshotChunk {
        total_bytes: total,
        ..header.clone()
    };
    let data = |b: &[u8]| pb::SnapshotChunk {
        part: Some(pb::snapshot_chunk::Part::Data(b.to_vec())),
        total_bytes: 0,
    };
    let refusal = |id: u64| {
        let ch =
            c.ca.dialer()
                .channel(&c.server(id).local_addr().to_string())
                .unwrap();
        async move {
            ClusterServiceClient::new(ch)
                .status(pb::StatusRequest {})
                .await
                .unwrap()
                .into_inner()
                .snapshot_refused
        }
    };

    // More than this member takes, and nothing declared: refused before a byte is received.
    for total in [MAX + 1, 0] {
        let s = p
            .install_snapshot(futures::stream::iter([declaring(total)]))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
        assert!(s.message().contains("declared"), "{}", s.message());
    }
    // No room for it (a petabyte, three times over, on this machine's disk): refused, and the
    // reason is in the member's Status.
    let s = p
        .install_snapshot(futures::stream::iter([declaring(1 << 50)]))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("free"), "{}", s.message());
    assert!(refusal(target).await.contains("free"));
    // A sender that sends more than it declared.
    let s = p
        .install_snapshot(futures::stream::iter([declaring(4), data(b"RGSNAP\0\0")]))
        .await
        .unwrap_err();
    assert!(
        s.message().contains("more than the 4 bytes"),
        "{}",
        s.message()
    );
    // A sender that stalls after its header loses the receive slot after the chunk deadline...
    let (stall, chunks) = tokio::sync::mpsc::channel(1);
    stall.send(declaring(8)).await.unwrap();
    let s = p
        .install_snapshot(tokio_stream::wrappers::ReceiverStream::new(chunks))
        .await
        .unwrap_err();
    assert!(
        s.message().contains("no snapshot chunk within 500ms"),
        "{}",
        s.message()
    );
    assert!(refusal(target).await.contains("no snapshot chunk"));
    drop(stall);
    // ... so the next transfer is received (and this one, not a real snapshot stream, is refused
    // by the verification, not by a slot still held).
    let s = p
        .install_snapshot(futures::stream::iter([declaring(8), data(b"RGSNAP\0\0")]))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("receiving snapshot"),
        "{}",
        s.message()
    );
    // The member serves on: its state follows the leader's.
    c.serves_on(vec![c.server(target).local_addr().to_string()], "after")
        .await;
    c.stop().await;
}

/// `payload` with the encoding of the string value `marker` replaced by `levels` lists nested in
/// one another around a null (built byte by byte: encoding such a value would recurse as deep).
fn with_nested_value(payload: &[u8], marker: &str, levels: usize) -> Vec<u8> {
    use raftgraph::command::Value;
    let list = raftgraph::codec::encode(&Value::List(vec![Value::Null])).unwrap();
    let (list, null) = (&list[1..3], &list[3..]);
    let at = payload
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .expect("the marker is in the payload");
    // The string's variant index and length precede its bytes (one byte each here).
    let start = at - 2;
    let mut out = payload[..start].to_vec();
    for _ in 0..levels {
        out.extend_from_slice(list);
    }
    out.extend_from_slice(null);
    out.extend_from_slice(&payload[at + marker.len()..]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_nested_past_the_bound_is_refused_on_the_peer_and_client_paths_and_the_member_serves_on()
 {
    use openraft::entry::RaftEntry;
    use openraft::raft::AppendEntriesRequest;
    use raftgraph::command::{Command, Op, Request, Value, WriteRequest};

    let c = Cluster::start().await;
    let leader = c.leader().await;
    let target = (1..=3).find(|id| *id != leader).unwrap();
    let client = c.client(c.endpoints());
    client
        .create_tenant(pb::CreateTenantRequest {
            id: "t".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    // The peer path: an append from a member whose one entry holds a value nested 100,000
    // levels deep (~200 KB). Unbounded, decoding it overflows the worker's stack (SIGSEGV).
    let marker = "NESTED-VALUE-MARKER";
    let op = Op::CreateNode {
        labels: ["L".to_string()].into(),
        properties: [("k".to_string(), Value::String(marker.into()))].into(),
    };
    let write = Command::Write(WriteRequest {
        tenant: "t".into(),
        preconditions: vec![],
        operations: vec![op],
    });
    let m = c.server(target).raft().metrics().borrow_watched().clone();
    let log_id = openraft::type_config::alias::LogIdOf::<TypeConfig>::new(
        <openraft::type_config::alias::LeaderIdOf<TypeConfig> as openraft::vote::RaftLeaderIdExt>::new_committed(m.current_term, leader),
        m.last_log_index.unwrap_or(0) + 1,
    );
    let entry =
        raftgraph::raft::Entry::new_normal(log_id, Request::new(1, 1, 0, write).unwrap().into());
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: m.vote,
        prev_log_id: m.last_applied,
        entries: vec![entry],
        leader_commit: None,
    };
    let plain = raftgraph::codec::encode(&append).unwrap();
    let bomb = with_nested_value(&plain, marker, 100_000);
    let mut p = c.peer(&c.ca.dialer_as(&c.ca.member(leader)), target);
    let s = p
        .append_entries(pb::RaftPayload { data: bomb })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().contains("nested deeper than 16 levels"),
        "{}",
        s.message()
    );

    // The client path: protobuf's own decoder bounds recursion (100 levels) before the request
    // is converted.
    let mut v = pb::Value {
        kind: Some(pb::value::Kind::NullValue(pb::Null {})),
    };
    for _ in 0..200 {
        v = pb::Value {
            kind: Some(pb::value::Kind::ListValue(pb::ValueList {
                values: vec![v],
            })),
        };
    }
    let deep = pb::WriteRequest {
        tenant: "t".into(),
        request_id: None,
        preconditions: vec![],
        operations: vec![pb::Operation {
            op: Some(pb::operation::Op::CreateNode(pb::CreateNode {
                labels: vec!["L".into()],
                properties: [("k".to_string(), v)].into(),
            })),
        }],
    };
    let api = c.server(target).local_addr().to_string();
    let mut g = raftgraph::proto::v1::graph_service_client::GraphServiceClient::new(
        c.ca.dialer().channel(&api).unwrap(),
    );
    let s = g.write(deep).await.unwrap_err();
    assert_ne!(s.code(), Code::Ok);
    assert!(s.message().contains("recursion limit"), "{s:?}");

    // The members serve on, with the same state.
    c.serves_on(c.endpoints(), "u").await;
    c.stop().await;
}
