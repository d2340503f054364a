//! One raftgraph server: opens its data directory (locked, identity checked), the WAL and the
//! state machine, starts Raft, and serves every gRPC service on one listener — graph, tenant,
//! cluster, Raft (peers), the standard health service and server reflection — until told to
//! stop. A restarted member rejoins from its data directory; only a brand-new cluster needs
//! `cluster init`.
//!
//! **Shutdown** ([`Server::shutdown`]): health goes NOT_SERVING; a leader hands leadership to an
//! up-to-date voter (bounded by two election timeouts) so the cluster does not wait out an
//! election; the server stops accepting and drains in-flight calls; Raft shuts down (the WAL
//! has every acknowledged entry synced already). A crash skips all of it and loses nothing
//! acknowledged.

mod config;
mod data_dir;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::async_runtime::WatchReceiver;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Connected;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use self::config::{
    CLUSTER_ID_BYTES_MAX, ConfigError, PROPOSALS_IN_FLIGHT_MAX, RaftSection, ServerConfig,
    ServerSection, StorageSection, WORKER_THREADS_MAX, check_cluster_id,
};
pub use self::data_dir::{DataDir, DataDirError, Identity};
use crate::api::{Admission, Clock, ClusterApi, GraphApi, Router, TenantApi};
use crate::peer::{GrpcNetworkFactory, RaftGrpc};
use crate::proto::v1::cluster_service_server::ClusterServiceServer;
use crate::proto::v1::graph_service_server::GraphServiceServer;
use crate::proto::v1::raft_service_server::RaftServiceServer;
use crate::proto::v1::tenant_service_server::TenantServiceServer;
use crate::state_machine::Raft;
use crate::state_machine::{Blocking, GraphReader, StateMachine};
use crate::transport::Dialer;
use crate::wal::{IoRuntime, StdFs, Wal, WalFs};
use crate::wire::{CLIENT_MESSAGE_BYTES_MAX, PEER_MESSAGE_BYTES_MAX};

/// The services a server reports in the health service (besides "" for the whole server).
pub const SERVICES: [&str; 4] = [
    "raftgraph.v1.GraphService",
    "raftgraph.v1.TenantService",
    "raftgraph.v1.ClusterService",
    "raftgraph.v1.RaftService",
];

/// How long a graceful shutdown lets in-flight calls finish.
pub const DRAIN: Duration = Duration::from_secs(10);

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("opening the WAL: {0}")]
    Wal(#[from] crate::wal::WalError),
    #[error("opening the state machine: {0}")]
    StateMachine(std::io::Error),
    #[error("starting Raft: {0}")]
    Raft(String),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("gRPC server: {0}")]
    Serve(String),
}

/// Wall-clock microseconds since the Unix epoch: the leader's timestamp for entries. The
/// simulation injects its own clock instead.
pub fn system_clock() -> Clock {
    #[allow(clippy::disallowed_methods)] // the production clock; simulation code never runs this
    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64)
    }
    Arc::new(now)
}

/// Bugs planted on purpose, to show the simulation catches them. They exist only with the
/// `testing` feature, which only the tests enable: no config file, flag or environment
/// variable reaches them, and no binary built without it contains them. All off by default.
#[cfg(feature = "testing")]
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PlantedBugs {
    /// The WAL reports appends flushed before it has written and synced them.
    pub ack_before_sync: bool,
    /// A follower serves "linearizable" reads from its own state without a read index.
    pub stale_follower_reads: bool,
    /// A repeated (client_id, sequence) is applied again instead of answered from the session.
    pub skip_session_dedup: bool,
}

/// Where a server gets its files, threads, time, randomness and network.
#[derive(Clone)]
pub struct ServerEnv {
    /// The WAL's files.
    pub wal_fs: Arc<dyn WalFs>,
    /// Where the WAL's group-commit task runs.
    pub wal_io: IoRuntime,
    /// Where blocking RocksDB and snapshot-file work runs.
    pub blocking: Blocking,
    /// Timestamps for entries.
    pub clock: Clock,
    /// Outgoing connections.
    pub dialer: Dialer,
    /// Seeds openraft's randomness (election timeouts); `None`: the OS generator.
    pub seed: Option<u64>,
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub planted: PlantedBugs,
}

impl ServerEnv {
    /// Real files (synced with fsync), a WAL thread, tokio's blocking pool, the system clock,
    /// TCP, OS randomness.
    pub fn production() -> ServerEnv {
        ServerEnv {
            wal_fs: Arc::new(StdFs),
            wal_io: IoRuntime::Thread,
            blocking: Blocking::Pool,
            clock: system_clock(),
            dialer: Dialer::default(),
            seed: None,
            #[cfg(feature = "testing")]
            planted: PlantedBugs::default(),
        }
    }
}

/// A running server.
pub struct Server {
    config: ServerConfig,
    raft: Raft,
    reader: GraphReader,
    health: HealthReporter,
    stop: Option<oneshot::Sender<()>>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    local_addr: SocketAddr,
    // Last: the lock is released only after everything above is dropped.
    _data_dir: DataDir,
}

impl Server {
    /// Opens the member's state and starts serving on `listener`.
    pub async fn start(config: ServerConfig, listener: TcpListener) -> Result<Server, ServerError> {
        Self::start_with_clock(config, listener, system_clock()).await
    }

    /// [`Server::start`] with an injected clock for entry timestamps.
    pub async fn start_with_clock(
        config: ServerConfig,
        listener: TcpListener,
        clock: Clock,
    ) -> Result<Server, ServerError> {
        let local_addr = listener.local_addr().map_err(ServerError::Listener)?;
        let env = ServerEnv {
            clock,
            ..ServerEnv::production()
        };
        // `serve_with_incoming` takes the sockets as they are: tonic's `tcp_nodelay` applies
        // only to listeners it binds itself. Without TCP_NODELAY a small response waits for
        // the client's delayed ACK (Nagle): about 40 ms on Linux loopback.
        let incoming = TcpListenerStream::new(listener).map(|accepted| {
            accepted.inspect(|s| {
                if let Err(e) = s.set_nodelay(true) {
                    tracing::warn!(error = %e, "TCP_NODELAY not set on an accepted connection");
                }
            })
        });
        Self::start_in(config, incoming, local_addr, env).await
    }

    /// Starts a server in `env`, serving the connections `incoming` yields (accepted at
    /// `local_addr`). Production servers come from [`Server::start`]; the deterministic simulation
    /// calls this with its own files, threads, clock, randomness and network.
    ///
    /// Four steps: open the storage (data directory, WAL, state machine), start Raft on it,
    /// build the services, serve.
    pub async fn start_in<I, IO, IE>(
        config: ServerConfig,
        incoming: I,
        local_addr: SocketAddr,
        env: ServerEnv,
    ) -> Result<Server, ServerError>
    where
        I: Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        config.validate()?;
        let raft_config = config.raft_config()?;
        let storage = Storage::open(&config, &env).await?;
        let reader = storage.sm.reader();
        let recv_dir = storage.snapshots_dir.clone();
        let wal_stats = storage.wal.stats();
        let raft = start_raft(&config, raft_config, &env, storage.wal, storage.sm).await?;
        let (health, routes) = services(&config, &env, &raft, &reader, recv_dir, wal_stats).await?;

        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(routes.serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        }));
        tracing::info!(
            node = config.node_id,
            cluster = %config.cluster_id,
            addr = %local_addr,
            advertise = %config.advertise_addr(),
            "node serving"
        );
        Ok(Server {
            config,
            raft,
            reader,
            health,
            stop: Some(stop),
            server,
            local_addr,
            _data_dir: storage.data_dir,
        })
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn reader(&self) -> &GraphReader {
        &self.reader
    }

    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `signal` resolves or the server fails, then shuts down gracefully.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), ServerError> {
        tokio::select! {
            _ = signal => self.shutdown().await,
            r = &mut self.server => {
                let _ = self.raft.shutdown().await;
                match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(ServerError::Serve(e.to_string())),
                    Err(e) => Err(ServerError::Serve(e.to_string())),
                }
            }
        }
    }

    /// Graceful stop: see the module docs.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        for svc in std::iter::once("").chain(SERVICES) {
            self.health
                .set_service_status(svc, ServingStatus::NotServing)
                .await;
        }
        self.hand_off_leadership().await;
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // In-flight calls get a bounded drain; long scans or waits are then cut off.
        let served = match tokio::time::timeout(DRAIN, &mut self.server).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("calls still running after {DRAIN:?}; closing them");
                self.server.abort();
                Ok(Ok(()))
            }
        };
        self.raft
            .shutdown()
            .await
            .map_err(|e| ServerError::Raft(format!("shutdown: {e}")))?;
        match served {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ServerError::Serve(e.to_string())),
            Err(e) => Err(ServerError::Serve(e.to_string())),
        }
    }

    /// If this member leads, asks the most up-to-date other voter to take over and waits (at
    /// most two election timeouts) until this member has heard from the new leader. Best effort:
    /// on timeout the others elect a leader after an election timeout as after a crash.
    async fn hand_off_leadership(&self) {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(m.id) {
            return;
        }
        let replication = m.replication.clone().unwrap_or_default();
        let target = m
            .membership_config
            .membership()
            .voter_ids()
            .filter(|v| *v != m.id)
            .max_by_key(|v| replication.get(v).cloned().flatten().map(|l| l.index));
        let Some(to) = target else { return };
        if self.raft.trigger().transfer_leader(to).await.is_err() {
            return;
        }
        let me = m.id;
        let _ = self
            .raft
            .wait(Some(2 * self.config.election_timeout_max()))
            .metrics(
                |m| m.current_leader.is_some_and(|l| l != me),
                "leadership handed off",
            )
            .await;
    }
}

/// A member's storage, opened: the locked data directory, the WAL and the state machine.
struct Storage {
    data_dir: DataDir,
    wal: Wal<crate::raft::TypeConfig>,
    sm: StateMachine,
    /// Where incoming snapshot streams are written (the state machine's `snapshots/`).
    snapshots_dir: std::path::PathBuf,
}

impl Storage {
    /// Locks the data directory (checking its identity), then opens the WAL and the state
    /// machine in it.
    async fn open(config: &ServerConfig, env: &ServerEnv) -> Result<Storage, ServerError> {
        let data_dir = DataDir::open(
            &config.data_dir,
            &Identity {
                cluster_id: config.cluster_id.clone(),
                node_id: config.node_id,
            },
        )?;
        let wal_config = config.wal_config();
        #[cfg(feature = "testing")]
        let wal_config = crate::wal::WalConfig {
            planted_ack_before_sync: env.planted.ack_before_sync,
            ..wal_config
        };
        let wal = Wal::open(wal_config, env.wal_fs.clone(), env.wal_io).await?;
        let mut sm_config = config.sm_config();
        sm_config.blocking = env.blocking;
        #[cfg(feature = "testing")]
        {
            sm_config.planted_skip_session_dedup = env.planted.skip_session_dedup;
        }
        let snapshots_dir = sm_config.dir.join("snapshots");
        let sm = StateMachine::open(sm_config)
            .await
            .map_err(ServerError::StateMachine)?;
        Ok(Storage {
            data_dir,
            wal,
            sm,
            snapshots_dir,
        })
    }
}

/// Starts Raft on the opened log and state machine; its randomness (election timeouts) comes
/// from the environment's seed when there is one.
async fn start_raft(
    config: &ServerConfig,
    raft_config: Arc<openraft::Config>,
    env: &ServerEnv,
    wal: Wal<crate::raft::TypeConfig>,
    sm: StateMachine,
) -> Result<Raft, ServerError> {
    let network = GrpcNetworkFactory {
        connect_timeout: None,
        dialer: env.dialer.clone(),
        blocking: env.blocking,
    };
    let raft = Raft::new(config.node_id, raft_config, network, wal, sm);
    match env.seed {
        Some(seed) => crate::raft::seeded(seed, raft).await,
        None => raft.await,
    }
    .map_err(|e| ServerError::Raft(e.to_string()))
}

/// Builds every service a server serves (health, reflection, graph, tenant, cluster, Raft) into
/// one router, with health reporting each service as serving.
async fn services(
    config: &ServerConfig,
    env: &ServerEnv,
    raft: &Raft,
    reader: &GraphReader,
    recv_dir: std::path::PathBuf,
    wal_stats: crate::wal::WalStats,
) -> Result<(HealthReporter, tonic::transport::server::Router), ServerError> {
    let router = Router {
        dialer: env.dialer.clone(),
        #[cfg(feature = "testing")]
        planted_stale_follower_reads: env.planted.stale_follower_reads,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServerError::Serve(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServerError::Serve(format!("reflection: {e}")))?;

    let admission = Admission::new(config.server.proposals_in_flight_max);
    let graph = GraphApi::new(raft.clone(), reader.clone(), env.clock.clone())
        .with_admission(admission.clone())
        .with_router(router.clone());
    let batch_stats = graph.batch_stats().clone();
    let graph = GraphServiceServer::new(graph)
        .max_decoding_message_size(CLIENT_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(CLIENT_MESSAGE_BYTES_MAX);
    let tenants = TenantServiceServer::new(
        TenantApi::new(raft.clone(), reader.clone(), env.clock.clone())
            .with_admission(admission)
            .with_router(router.clone()),
    );
    let cluster = ClusterServiceServer::new(
        ClusterApi::new(raft.clone(), config.cluster_id.clone())
            .with_router(router)
            .with_wal_stats(wal_stats)
            .with_batch_stats(batch_stats),
    );
    let peers =
        RaftServiceServer::new(RaftGrpc::new(raft.clone(), recv_dir).with_blocking(env.blocking))
            .max_decoding_message_size(PEER_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_MESSAGE_BYTES_MAX);

    for svc in SERVICES {
        health.set_service_status(svc, ServingStatus::Serving).await;
    }
    let routes = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // A client or peer that vanished without closing is noticed in seconds.
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(3)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(graph)
        .add_service(tenants)
        .add_service(cluster)
        .add_service(peers);
    Ok((health, routes))
}

/// Starts a server and serves until `signal` resolves (the binary passes SIGTERM/SIGINT).
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    signal: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    Server::start(config, listener)
        .await?
        .run_until(signal)
        .await
}
