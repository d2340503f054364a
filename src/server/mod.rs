//! One raftgraph server: opens its data directory (locked, identity checked), the WAL and the
//! state machine, starts Raft, and serves on two listeners until told to stop:
//! - the **client listener** (`listen`): graph, tenant, cluster, the standard health service and
//!   server reflection; TLS by default (`tls = "off"` for local experiments);
//! - the **peer listener** (`peer_listen`): the Raft service only, always mutual TLS; every RPC
//!   checks that the caller's certificate names a member of this cluster ([`crate::peer`]).
//!
//! A restarted member rejoins from its data directory; only a brand-new cluster needs
//! `cluster init`. SIGHUP makes the binary call [`Server::reload_tls`].
//!
//! **Shutdown** ([`Server::shutdown`]): health goes NOT_SERVING; a leader hands leadership to an
//! up-to-date voter (bounded by two election timeouts) so the cluster does not wait out an
//! election; the client listener stops accepting and in-flight client calls drain ([`DRAIN`];
//! the peer listener serves on meanwhile); every connection still open on either is cut; Raft shuts down (the WAL has every acknowledged entry synced
//! already); `shutdown` returns once the database is closed ([`CLOSE_WAIT`]). A crash skips all
//! of it and loses nothing acknowledged.
//!
//! **A fatal error** (a failed write or sync of the WAL or the state machine, corruption found)
//! stops Raft; the server then stops serving too (health NOT_SERVING, listeners closed, no
//! hand-off) and [`Server::run_until`] returns [`ServerError::RaftStopped`]: the binary exits
//! non-zero, naming the error, instead of answering every call with one.

mod config;
mod data_dir;
mod io;
mod lifecycle;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::Connected;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use self::config::{
    CLUSTER_ID_BYTES_MAX, ConfigError, PROPOSALS_IN_FLIGHT_MAX, RaftSection, ServerConfig,
    ServerSection, StorageSection, TlsMode, WORKER_THREADS_MAX, check_cluster_id,
};
pub use self::data_dir::{DATA_FORMAT, DataDir, DataDirError, Identity};
pub use self::io::{ApiIo, Severable};
use crate::api::{
    Admission, Auth, Clock, ClusterApi, Fresh, Gate, GraphApi, Metered, Paced, Random, Router,
    Secrets, TenantApi, TokenApi, Tokens,
};
use crate::peer::{GrpcNetworkFactory, RaftGrpc};
use crate::proto::v1::cluster_service_server::ClusterServiceServer;
use crate::proto::v1::graph_service_server::GraphServiceServer;
use crate::proto::v1::tenant_service_server::TenantServiceServer;
use crate::proto::v1::token_service_server::TokenServiceServer;
use crate::state_machine::Raft;
use crate::state_machine::{Blocking, GraphReader, StateMachine};
use crate::tenant::Keyring;
use crate::tls::TlsSource;
use crate::transport::Dialer;
use crate::wal::{IoRuntime, StdFs, Wal, WalFs};
use crate::wire::{CLIENT_ANSWER_BYTES_MAX, CLIENT_REQUEST_BYTES_MAX};

/// The services a server reports in the health service (besides "" for the whole server).
/// The Raft service is served on the peer listener only, and has no health entry.
pub const SERVICES: [&str; 4] = [
    "raftgraph.v1.GraphService",
    "raftgraph.v1.TenantService",
    "raftgraph.v1.TokenService",
    "raftgraph.v1.ClusterService",
];

/// HTTP/2 streams one connection may have open at once on the client listener: a client that
/// opens more waits for one to finish instead of making the server hold them all.
pub const API_STREAMS_PER_CONNECTION_MAX: u32 = 1024;
/// HTTP/2 streams one connection may have open at once on the peer listener (a member opens
/// one append stream and a few unary calls to each peer).
pub const PEER_STREAMS_PER_CONNECTION_MAX: u32 = 64;

/// How long a graceful shutdown lets in-flight calls on the client listener finish.
pub const DRAIN: Duration = Duration::from_secs(10);
/// How long a graceful shutdown waits, after cutting every connection and stopping Raft, for
/// tasks still holding the state machine's database to let go (they end within moments once
/// their connections are cut). Past it the shutdown warns and returns anyway.
pub const CLOSE_WAIT: Duration = Duration::from_secs(10);
/// How long a server whose Raft stopped on a fatal error lets in-flight calls finish: they
/// can only fail, but their answers say why.
pub const FATAL_DRAIN: Duration = Duration::from_secs(1);

/// Cancels its token when dropped: a server dropped without a shutdown leaves no connection
/// behind either.
struct Cut(CancellationToken);

impl Drop for Cut {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// How a listener's task ended.
type Served = Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>;

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
    /// Raft stopped on a fatal error while serving (a failed write or sync of the WAL or the
    /// state machine, corruption found): the member stopped serving.
    #[error("Raft stopped: {0}")]
    RaftStopped(String),
    #[error("listener: {0}")]
    Listener(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    #[error("gRPC server: {0}")]
    Serve(String),
}

/// The keyring of `secrets_key_file`, if one is named: refused when others may read the file,
/// or when it does not parse (the error names the line, never a key).
fn load_keyring(config: &ServerConfig) -> Result<Option<Keyring>, ConfigError> {
    let Some(path) = &config.secrets_key_file else {
        return Ok(None);
    };
    let bad = |reason: String| ConfigError {
        field: "secrets_key_file".into(),
        reason: format!("{}: {reason}", path.display()),
    };
    let meta = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(bad(format!(
                "mode {mode:o} lets others read the keys; chmod 600 it"
            )));
        }
    }
    if meta.len() > SECRETS_KEY_FILE_BYTES_MAX {
        return Err(bad(format!(
            "{} bytes, at most {SECRETS_KEY_FILE_BYTES_MAX}",
            meta.len()
        )));
    }
    let text =
        zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?);
    let keyring = Keyring::parse(&text).map_err(|e| bad(e.to_string()))?;
    tracing::info!(keys = ?keyring, current = keyring.current(), "secrets keyring loaded");
    Ok(Some(keyring))
}

/// The largest `secrets_key_file` read (64 keys of 32-byte ids take under 7 KiB).
const SECRETS_KEY_FILE_BYTES_MAX: u64 = 64 << 10;

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
    /// A write may take a tenant one node past its node quota.
    pub quota_off_by_one: bool,
    /// A leader serves a linearizable read from its own state without confirming it still
    /// leads (no read index).
    pub leader_reads_unconfirmed: bool,
    /// A vote is answered without being saved to disk.
    pub vote_not_persisted: bool,
    /// A snapshot install switches `CURRENT` to the new database before its files are synced.
    pub pointer_before_sync: bool,
    /// Apply writes an entry's applied id in a batch of its own, before its effects.
    pub applied_id_apart: bool,
    /// A snapshot install returns before the pointer's switch is durable: the old database is
    /// then removed, and the log purged, while a power loss can still bring back a `CURRENT`
    /// naming the old database.
    pub pointer_not_durable: bool,
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
    /// Outgoing connections on the client plane (calls forwarded to the leader).
    pub dialer: Dialer,
    /// Outgoing connections on the peer plane (Raft messages, the leader's read index).
    pub peer_dialer: Dialer,
    /// The TLS files and configs in force, for [`Server::reload_tls`]; `None` without TLS
    /// (the simulation, whose transport reports identities itself).
    pub tls: Option<Arc<TlsSource>>,
    /// Seeds openraft's randomness (election timeouts); `None`: the OS generator.
    pub seed: Option<u64>,
    /// Where tokens' random bits come from.
    pub random: Random,
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub planted: PlantedBugs,
    /// Told of every entry the state machine applies (the `testing` feature only).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub on_apply: Option<crate::state_machine::ApplyObserver>,
    /// Told of every step the state machine takes on its own files (the `testing` feature
    /// only).
    #[cfg(feature = "testing")]
    #[doc(hidden)]
    pub on_sm_disk: Option<crate::state_machine::DiskHook>,
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
            peer_dialer: Dialer::default(),
            tls: None,
            seed: None,
            random: crate::api::os_random(),
            #[cfg(feature = "testing")]
            planted: PlantedBugs::default(),
            #[cfg(feature = "testing")]
            on_apply: None,
            #[cfg(feature = "testing")]
            on_sm_disk: None,
        }
    }
}

/// The two listeners a server serves on.
pub struct Listeners {
    /// Clients: graph, tenant, cluster, health, reflection.
    pub api: TcpListener,
    /// Other members: Raft messages, read index, snapshots.
    pub peer: TcpListener,
}

impl Listeners {
    /// Binds both of `config`'s listen addresses.
    pub async fn bind(config: &ServerConfig) -> Result<Listeners, ServerError> {
        let bind = |a| async move {
            TcpListener::bind(a).await.map_err(|e| {
                ServerError::Listener(std::io::Error::new(e.kind(), format!("{a}: {e}")))
            })
        };
        Ok(Listeners {
            api: bind(config.listen).await?,
            peer: bind(config.peer_listen).await?,
        })
    }
}

/// A running server.
pub struct Server {
    config: ServerConfig,
    raft: Raft,
    reader: GraphReader,
    health: HealthReporter,
    tls: Option<Arc<TlsSource>>,
    /// Stop each listener's accept loop (and ask its connections to finish).
    stop_api: Option<watch::Sender<bool>>,
    stop_peer: Option<watch::Sender<bool>>,
    /// Cuts the connections still open once the drain is over (see [`Severable`]), or when
    /// the server is dropped without a shutdown.
    cut: Cut,
    api_server: JoinHandle<Result<(), tonic::transport::Error>>,
    peer_server: JoinHandle<Result<(), tonic::transport::Error>>,
    local_addr: SocketAddr,
    peer_local_addr: SocketAddr,
    // Last: the lock is released only after everything above is dropped.
    _data_dir: DataDir,
}

impl Server {
    /// Opens the member's state and starts serving on `listeners`: the peer listener with
    /// mutual TLS, the client listener with TLS unless `tls = "off"`.
    pub async fn start(config: ServerConfig, listeners: Listeners) -> Result<Server, ServerError> {
        Self::start_with_clock(config, listeners, system_clock()).await
    }

    /// [`Server::start`] with an injected clock for entry timestamps.
    pub async fn start_with_clock(
        config: ServerConfig,
        listeners: Listeners,
        clock: Clock,
    ) -> Result<Server, ServerError> {
        config.validate()?;
        let files = config.certs.clone().ok_or_else(|| ConfigError {
            field: "certs".into(),
            reason: "missing: the peer listener always uses mutual TLS; create the files with \
                     `raftgraph certs init` and `raftgraph certs member`, and name them in \
                     [certs] (ca, cert, key)"
                .into(),
        })?;
        let tls = TlsSource::load(files, &config.cluster_id, config.member_id)?;
        let local_addr = listeners.api.local_addr().map_err(ServerError::Listener)?;
        let peer_local_addr = listeners.peer.local_addr().map_err(ServerError::Listener)?;
        let peer_tls = tls.clone();
        let peer_incoming = crate::tls::accept(
            listeners.peer,
            move || peer_tls.configs().peer_server,
            "peer",
        );
        let api_tls = tls.clone();
        let api_incoming: Pin<Box<dyn Stream<Item = std::io::Result<ApiIo>> + Send>> =
            match config.tls {
                TlsMode::On => Box::pin(
                    crate::tls::accept(listeners.api, move || api_tls.configs().api_server, "api")
                        .map(|c| c.map(ApiIo::Tls)),
                ),
                TlsMode::Off => {
                    tracing::warn!(
                        listen = %config.listen,
                        "tls = \"off\": the client listener is plaintext; anyone on the network \
                         can read and alter client traffic. For local experiments only."
                    );
                    // `serve_with_incoming` takes the sockets as they are: tonic's
                    // `tcp_nodelay` applies only to listeners it binds itself. Without
                    // TCP_NODELAY a small response waits for the client's delayed ACK (Nagle):
                    // about 40 ms on Linux loopback.
                    Box::pin(TcpListenerStream::new(listeners.api).map(|accepted| {
                        accepted.map(|s| {
                            if let Err(e) = s.set_nodelay(true) {
                                tracing::warn!(error = %e, "TCP_NODELAY not set");
                            }
                            ApiIo::Plain(s)
                        })
                    }))
                }
            };
        let client_tls = tls.clone();
        let peer_client_tls = tls.clone();
        let tls_dial = move || client_tls.configs().peer_client;
        let env = ServerEnv {
            clock,
            dialer: match config.tls {
                TlsMode::On => Dialer::default().with_tls(Arc::new(tls_dial)),
                TlsMode::Off => Dialer::default(),
            },
            peer_dialer: Dialer::default()
                .with_tls(Arc::new(move || peer_client_tls.configs().peer_client)),
            tls: Some(tls),
            ..ServerEnv::production()
        };
        Self::start_in(
            config,
            Incoming {
                api: api_incoming,
                api_addr: local_addr,
                peer: peer_incoming,
                peer_addr: peer_local_addr,
            },
            env,
        )
        .await
    }

    /// Starts a server in `env`, serving the connections `incoming` yields. Production servers
    /// come from [`Server::start`]; the deterministic simulation calls this with its own files,
    /// threads, clock, randomness and network (whose connections report the caller's member
    /// identity themselves, as the TLS listener does from certificates).
    ///
    /// Four steps: open the storage (data directory, WAL, state machine), start Raft on it,
    /// build the services, serve.
    pub async fn start_in<A, AIO, AE, P, PIO, PE>(
        config: ServerConfig,
        incoming: Incoming<A, P>,
        env: ServerEnv,
    ) -> Result<Server, ServerError>
    where
        A: Stream<Item = Result<AIO, AE>> + Send + 'static,
        AIO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        AE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
        P: Stream<Item = Result<PIO, PE>> + Send + 'static,
        PIO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
        PE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        config.validate()?;
        let raft_config = config.raft_config()?;
        let storage = Storage::open(&config, &env).await?;
        let reader = storage.sm.reader();
        let stager = storage.sm.stager();
        let wal_stats = storage.wal.stats();
        let raft = start_raft(&config, raft_config, &env, storage.wal, storage.sm).await?;
        let (health, api_routes, peer_routes) =
            services(&config, &env, &raft, &reader, stager, wal_stats).await?;

        let cut = CancellationToken::new();
        let api_incoming = {
            let cut = cut.clone();
            incoming
                .api
                .map(move |r| r.map(|io| Severable::new(io, &cut)))
        };
        let peer_incoming = {
            let cut = cut.clone();
            incoming
                .peer
                .map(move |r| r.map(|io| Severable::new(io, &cut)))
        };
        // Each listener stops on its own signal: the client listener first, the peer listener
        // once client calls have drained (see `close_listeners`).
        let (stop_api, api_stopped) = watch::channel(false);
        let (stop_peer, peer_stopped) = watch::channel(false);
        let until = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        let api_server =
            tokio::spawn(api_routes.serve_with_incoming_shutdown(api_incoming, until(api_stopped)));
        let peer_server = tokio::spawn(
            peer_routes.serve_with_incoming_shutdown(peer_incoming, until(peer_stopped)),
        );
        tracing::info!(
            member = config.member_id,
            cluster = %config.cluster_id,
            addr = %incoming.api_addr,
            advertise = %config.advertise_addr(),
            peer_addr = %incoming.peer_addr,
            peer_advertise = %config.peer_advertise_addr(),
            client_tls = ?config.tls,
            "server serving"
        );
        Ok(Server {
            config,
            raft,
            reader,
            health,
            tls: env.tls.clone(),
            stop_api: Some(stop_api),
            stop_peer: Some(stop_peer),
            cut: Cut(cut),
            api_server,
            peer_server,
            local_addr: incoming.api_addr,
            peer_local_addr: incoming.peer_addr,
            _data_dir: storage.data_dir,
        })
    }

    /// Re-reads the certificate files (the binary calls this on SIGHUP). Connections accepted
    /// or dialled afterwards use the new ones; on error the old ones stay in force.
    pub fn reload_tls(&self) -> Result<(), ServerError> {
        match &self.tls {
            Some(t) => {
                t.reload()?;
                tracing::info!(cert = %t.files().cert.display(), "certificates reloaded");
                Ok(())
            }
            None => Ok(()),
        }
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

    /// The address the client listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address the peer listener is bound to.
    pub fn peer_local_addr(&self) -> SocketAddr {
        self.peer_local_addr
    }
}

/// A member's storage, opened: the locked data directory, the WAL and the state machine.
struct Storage {
    data_dir: DataDir,
    wal: Wal<crate::raft::TypeConfig>,
    sm: StateMachine,
}

impl Storage {
    /// Locks the data directory (checking its identity), then opens the WAL and the state
    /// machine in it.
    async fn open(config: &ServerConfig, env: &ServerEnv) -> Result<Storage, ServerError> {
        let data_dir = DataDir::open(
            &config.data_dir,
            &Identity::new(&config.cluster_id, config.member_id),
        )?;
        let wal_config = config.wal_config();
        #[cfg(feature = "testing")]
        let wal_config = crate::wal::WalConfig {
            planted_ack_before_sync: env.planted.ack_before_sync,
            planted_vote_not_persisted: env.planted.vote_not_persisted,
            ..wal_config
        };
        let wal = Wal::open(wal_config, env.wal_fs.clone(), env.wal_io).await?;
        let mut sm_config = config.sm_config();
        sm_config.blocking = env.blocking;
        #[cfg(feature = "testing")]
        {
            sm_config.planted_skip_session_dedup = env.planted.skip_session_dedup;
            sm_config.planted_quota_off_by_one = env.planted.quota_off_by_one;
            sm_config.on_apply = env.on_apply.clone();
            sm_config.planted_pointer_before_sync = env.planted.pointer_before_sync;
            sm_config.planted_applied_id_apart = env.planted.applied_id_apart;
            sm_config.planted_pointer_not_durable = env.planted.pointer_not_durable;
            sm_config.on_disk = env.on_sm_disk.clone();
        }
        let sm = StateMachine::open(sm_config)
            .await
            .map_err(ServerError::StateMachine)?;
        Ok(Storage { data_dir, wal, sm })
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
        cluster_id: config.cluster_id.clone(),
        connect_timeout: None,
        dialer: env.peer_dialer.clone(),
        blocking: env.blocking,
    };
    let raft = Raft::new(config.member_id, raft_config, network, wal, sm);
    match env.seed {
        Some(seed) => crate::raft::seeded(seed, raft).await,
        None => raft.await,
    }
    .map_err(|e| ServerError::Raft(e.to_string()))
}

/// The connections a server serves: on the client listener and on the peer listener, with
/// the addresses they were accepted at.
pub struct Incoming<A, P> {
    pub api: A,
    pub api_addr: SocketAddr,
    pub peer: P,
    pub peer_addr: SocketAddr,
}

/// Builds the services: the client listener's router (health, reflection, graph, tenant,
/// cluster), with health reporting each as serving, and the peer listener's (Raft only).
async fn services(
    config: &ServerConfig,
    env: &ServerEnv,
    raft: &Raft,
    reader: &GraphReader,
    stager: crate::state_machine::Stager,
    wal_stats: crate::wal::WalStats,
) -> Result<
    (
        HealthReporter,
        tonic::transport::server::Router,
        tonic::transport::server::Router,
    ),
    ServerError,
> {
    let router = Router {
        dialer: env.dialer.clone(),
        peer_dialer: env.peer_dialer.clone(),
        cluster_id: config.cluster_id.clone(),
        #[cfg(feature = "testing")]
        planted_stale_follower_reads: env.planted.stale_follower_reads,
        #[cfg(feature = "testing")]
        planted_leader_reads_unconfirmed: env.planted.leader_reads_unconfirmed,
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    // Reflection lists what the client listener serves: not the Raft service.
    let reflection = || {
        let mut b = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name("grpc.health.v1.Health")
            .with_service_name("grpc.reflection.v1.ServerReflection")
            .with_service_name("grpc.reflection.v1alpha.ServerReflection");
        for svc in SERVICES {
            b = b.with_service_name(svc);
        }
        b
    };
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| ServerError::Serve(format!("reflection: {e}")))?;
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| ServerError::Serve(format!("reflection: {e}")))?;

    let secrets = Secrets::new(load_keyring(config)?);
    let admission = Admission::new(
        config.server.proposals_in_flight_max,
        config.server.proposal_bytes_in_flight_max,
    );
    let auth = Auth::new(
        reader.clone(),
        env.clock.clone(),
        config.auth,
        &config.cluster_id,
    )
    .with_members(raft.clone());
    // A call whose token this member has not applied yet waits to catch up first.
    let gate = Gate::new(auth.clone(), raft.clone(), router.clone());
    let tokens = Tokens {
        raft: raft.clone(),
        clock: env.clock.clone(),
        random: env.random.clone(),
    };
    let graph = GraphApi::new(raft.clone(), reader.clone(), env.clock.clone())
        .with_auth(auth.clone())
        .with_admission(admission.clone())
        .with_router(router.clone());
    let batch_stats = graph.batch_stats().clone();
    let graph = GraphServiceServer::new(graph)
        .max_decoding_message_size(CLIENT_REQUEST_BYTES_MAX)
        .max_encoding_message_size(CLIENT_ANSWER_BYTES_MAX);
    let tenants = TenantServiceServer::new(
        TenantApi::new(raft.clone(), reader.clone(), env.clock.clone())
            .with_auth(auth.clone())
            .with_secrets(secrets, env.random.clone())
            .with_admission(admission.clone())
            .with_router(router.clone()),
    )
    .max_decoding_message_size(CLIENT_REQUEST_BYTES_MAX)
    .max_encoding_message_size(CLIENT_ANSWER_BYTES_MAX);
    let token_service = TokenServiceServer::new(
        TokenApi::new(tokens.clone(), reader.clone(), auth.clone())
            .with_admission(admission)
            .with_router(router.clone()),
    )
    .max_decoding_message_size(CLIENT_REQUEST_BYTES_MAX)
    .max_encoding_message_size(CLIENT_ANSWER_BYTES_MAX);
    let snapshot_refused = Arc::new(std::sync::Mutex::new(None));
    let cluster = ClusterServiceServer::new(
        ClusterApi::new(raft.clone(), config.cluster_id.clone())
            .with_auth(auth, tokens)
            .with_reader(reader.clone(), env.clock.clone())
            .with_init_certificate(config.tls == TlsMode::On)
            .with_addresses(config.member())
            .with_snapshot_refusals(snapshot_refused.clone())
            .with_router(router)
            .with_wal_stats(wal_stats)
            .with_batch_stats(batch_stats),
    );
    // The caller's identity is checked on the headers, before a message body is read.
    let peers = RaftGrpc::new(raft.clone(), &config.cluster_id, stager)
        .with_blocking(env.blocking)
        .with_limits(config.snapshot_limits())
        .with_refusals(snapshot_refused)
        .with_peer_dialer(env.peer_dialer.clone())
        .into_service();

    for svc in SERVICES {
        health.set_service_status(svc, ServingStatus::Serving).await;
    }
    let builder = || {
        tonic::transport::Server::builder()
            .tcp_nodelay(true)
            // A client or peer that vanished without closing is noticed in seconds.
            .http2_keepalive_interval(Some(Duration::from_secs(1)))
            .http2_keepalive_timeout(Some(Duration::from_secs(3)))
    };
    let api = builder()
        .max_concurrent_streams(Some(API_STREAMS_PER_CONNECTION_MAX))
        .add_service(Metered(health_service))
        .add_service(Metered(reflection_v1))
        .add_service(Metered(reflection_v1alpha))
        // Their requests are counted from their first byte (`Metered`); their answers leave in
        // pieces, large ones counted until they have left (`Paced`).
        .add_service(Metered(Paced(Fresh::new(graph, gate.clone()))))
        .add_service(Metered(Paced(Fresh::new(tenants, gate.clone()))))
        .add_service(Metered(Paced(Fresh::new(token_service, gate.clone()))))
        .add_service(Metered(Fresh::new(cluster, gate)));
    let peer = builder()
        .max_concurrent_streams(Some(PEER_STREAMS_PER_CONNECTION_MAX))
        .add_service(peers);
    Ok((health, api, peer))
}

/// Binds the listeners, starts a server and serves until `signal` resolves (the binary passes
/// SIGTERM/SIGINT), re-reading its certificates whenever `reload` yields (SIGHUP).
pub async fn run(
    config: ServerConfig,
    signal: impl Future<Output = ()>,
    reload: impl Stream<Item = ()> + Unpin,
) -> Result<(), ServerError> {
    let listeners = Listeners::bind(&config).await?;
    Server::start(config, listeners)
        .await?
        .run_until(signal, reload)
        .await
}
