//! The `raftgraph` binary: parses flags and calls into the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use raftgraph::cli;
use raftgraph::server::ServerConfig;

/// jemalloc rather than glibc's malloc: allocation (HTTP/2 frames, protobuf and bincode
/// buffers, per-request futures) is a large share of a server's CPU under load, and glibc
/// spends much of it in consolidation and free-list paths; mimalloc did worse than glibc
/// (BENCHMARKS.md has the measurements).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "raftgraph",
    version,
    about = "A Raft-replicated, multi-tenant property-graph store"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a server (one cluster member): `raftgraph server --config node.toml` (flags and RAFTGRAPH_* env override
    /// the file). Stops gracefully on SIGTERM or Ctrl-C.
    Server(ServerArgs),
    /// Tenants: create, get, list, quotas, enable, disable, delete.
    Tenant {
        #[command(flatten)]
        global: cli::Global,
        #[command(subcommand)]
        cmd: cli::TenantCmd,
    },
    /// Nodes: create, get, set, delete, by-label.
    Node {
        #[command(flatten)]
        global: cli::Global,
        #[command(subcommand)]
        cmd: cli::NodeCmd,
    },
    /// Edges: create, get, delete, neighbors.
    Edge {
        #[command(flatten)]
        global: cli::Global,
        #[command(subcommand)]
        cmd: cli::EdgeCmd,
    },
    /// The cluster: init, status, add-learner, promote, remove, transfer, snapshot.
    Cluster {
        #[command(flatten)]
        global: cli::Global,
        #[command(subcommand)]
        cmd: cli::ClusterCmd,
    },
    /// Tenant secrets: keygen (a keyring for `secrets_key_file`), rotate (re-seal every secret
    /// under the newest key).
    Secrets {
        #[command(flatten)]
        global: cli::Global,
        #[command(subcommand)]
        cmd: cli::SecretsCmd,
    },
    /// Load a raftgraph cluster (or, with --target etcd, an etcd cluster) with concurrent
    /// clients: throughput, p50/p99/p99.9 latency and errors.
    /// Certificates: the cluster's CA, member and client certificates (PEM, keys 0600).
    Certs {
        #[command(subcommand)]
        cmd: cli::CertsCmd,
    },
    Bench(raftgraph::bench::BenchArgs),
    /// Read `bench --output json` lines of raftgraph and etcd runs (several rounds) and print
    /// the medians, the raftgraph/etcd ratios and the bar, as a Markdown table.
    BenchCompare {
        /// The JSON lines file (`-` for standard input).
        file: PathBuf,
    },
    /// Measure WAL group commit: entries/s and entries per fsync with 1..N flushes in flight,
    /// beside one write+fdatasync per entry, on real files.
    WalBench {
        /// Directory for the benchmark's files (on the disk to measure). Emptied parts are removed.
        #[arg(long, default_value = "target/wal-bench")]
        dir: PathBuf,
        /// Entries appended per configuration (the one-fsync-per-entry runs use at most 5,000).
        #[arg(long, default_value_t = 50_000)]
        entries: u64,
        /// Flush callbacks allowed in flight, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
        pending: Vec<usize>,
        /// Payload bytes per entry.
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
    },
    /// Measure the state machine: node creates/s applied in entries of 1, 64, 512 operations,
    /// and snapshot build + install time and peak RSS growth for one large tenant.
    SmBench {
        /// Directory for the benchmark's databases (removed afterwards).
        #[arg(long, default_value = "target/sm-bench")]
        dir: PathBuf,
        /// Operations per entry, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "1,64,512")]
        ops: Vec<usize>,
        /// Nodes created per apply configuration.
        #[arg(long, default_value_t = 100_000)]
        nodes: u64,
        /// Bytes of the one property of each node in the apply runs.
        #[arg(long, default_value_t = 256)]
        value_bytes: usize,
        /// Logical size of the snapshot tenant in MiB (0 skips the snapshot run).
        #[arg(long, default_value_t = 1024)]
        snapshot_mib: u64,
    },
}

#[derive(clap::Args)]
struct ServerArgs {
    /// The server's TOML file (see deploy/node1.toml). Without it every required value must come
    /// from flags or the environment.
    #[arg(long, env = "RAFTGRAPH_CONFIG")]
    config: Option<PathBuf>,
    /// Names the cluster (`cluster_id`).
    #[arg(long, env = "RAFTGRAPH_CLUSTER_ID")]
    cluster_id: Option<String>,
    /// This member's id, at least 1 (`member_id`). `--node-id` and `RAFTGRAPH_NODE_ID` are
    /// older spellings.
    #[arg(long, alias = "node-id", env = "RAFTGRAPH_MEMBER_ID")]
    member_id: Option<u64>,
    /// The client listener, `ip:port` (`listen`).
    #[arg(long, env = "RAFTGRAPH_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// The address clients dial (`advertise`).
    #[arg(long, env = "RAFTGRAPH_ADVERTISE")]
    advertise: Option<String>,
    /// The peer listener, `ip:port` (`peer_listen`); always mutual TLS.
    #[arg(long, env = "RAFTGRAPH_PEER_LISTEN")]
    peer_listen: Option<std::net::SocketAddr>,
    /// The address other members dial (`peer_advertise`).
    #[arg(long, env = "RAFTGRAPH_PEER_ADVERTISE")]
    peer_advertise: Option<String>,
    /// TLS on the client listener (`tls`): on (default) or off (plaintext, local experiments).
    #[arg(long, env = "RAFTGRAPH_TLS")]
    tls: Option<raftgraph::server::TlsMode>,
    /// Authentication on the client listener (`auth`): on (default) or off (local experiments).
    #[arg(long, env = "RAFTGRAPH_AUTH")]
    auth: Option<raftgraph::auth::AuthMode>,
    /// The keyring tenant secrets are sealed with (`secrets_key_file`; mode 0600).
    #[arg(long, env = "RAFTGRAPH_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    /// The cluster's CA certificate, PEM (`certs.ca`).
    #[arg(long, env = "RAFTGRAPH_CA")]
    ca: Option<PathBuf>,
    /// This member's certificate, PEM (`certs.cert`).
    #[arg(long, env = "RAFTGRAPH_CERT")]
    cert: Option<PathBuf>,
    /// This member's private key, PEM (`certs.key`).
    #[arg(long, env = "RAFTGRAPH_KEY")]
    key: Option<PathBuf>,
    /// The data directory (`data_dir`).
    #[arg(long, env = "RAFTGRAPH_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

fn server_config(a: ServerArgs) -> anyhow::Result<ServerConfig> {
    // The older spelling of the member id's variable, when the new one is not set.
    let member_id = match a.member_id {
        Some(id) => Some(id),
        None => match std::env::var("RAFTGRAPH_NODE_ID") {
            Ok(v) => Some(
                v.parse()
                    .map_err(|_| anyhow::anyhow!("RAFTGRAPH_NODE_ID={v:?}: not a member id"))?,
            ),
            Err(_) => None,
        },
    };
    let mut c = match &a.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("config {}: {e}", path.display()))?;
            ServerConfig::from_toml(&text)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
        }
        None => {
            let missing = |what: &str| anyhow::anyhow!("no --config: --{what} is required");
            ServerConfig::new(
                a.cluster_id
                    .as_deref()
                    .ok_or_else(|| missing("cluster-id"))?,
                member_id.ok_or_else(|| missing("member-id"))?,
                a.listen.ok_or_else(|| missing("listen"))?,
                a.peer_listen.ok_or_else(|| missing("peer-listen"))?,
                a.data_dir.as_deref().ok_or_else(|| missing("data-dir"))?,
            )
        }
    };
    if let Some(v) = a.cluster_id {
        c.cluster_id = v;
    }
    if let Some(v) = member_id {
        c.member_id = v;
    }
    if let Some(v) = a.listen {
        c.listen = v;
    }
    if let Some(v) = a.advertise {
        c.advertise = Some(v);
    }
    if let Some(v) = a.peer_listen {
        c.peer_listen = v;
    }
    if let Some(v) = a.peer_advertise {
        c.peer_advertise = Some(v);
    }
    if let Some(v) = a.auth {
        c.auth = v;
    }
    if let Some(v) = a.secrets_key_file {
        c.secrets_key_file = Some(v);
    }
    if let Some(v) = a.tls {
        c.tls = v;
    }
    match (a.ca, a.cert, a.key, &mut c.certs) {
        (None, None, None, _) => {}
        (ca, cert, key, Some(files)) => {
            files.ca = ca.unwrap_or_else(|| files.ca.clone());
            files.cert = cert.unwrap_or_else(|| files.cert.clone());
            files.key = key.unwrap_or_else(|| files.key.clone());
        }
        (Some(ca), Some(cert), Some(key), None) => {
            c.certs = Some(raftgraph::tls::CertFiles { ca, cert, key });
        }
        _ => anyhow::bail!("--ca, --cert and --key go together (or name them in [certs])"),
    }
    if let Some(v) = a.data_dir {
        c.data_dir = v;
    }
    c.validate()?;
    Ok(c)
}

/// Yields once per SIGHUP (nothing if the handler cannot be installed).
fn hangups() -> impl futures::Stream<Item = ()> + Unpin {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => Box::pin(futures::stream::poll_fn(move |cx| {
            hup.poll_recv(cx)
                .map(|o| o.map(|_| tracing::info!("SIGHUP: reloading certificates")))
        })) as std::pin::Pin<Box<dyn futures::Stream<Item = ()> + Send>>,
        Err(e) => {
            tracing::warn!("no SIGHUP handler ({e}): certificates reload only on restart");
            Box::pin(futures::stream::pending())
        }
    }
}

async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // No signal handling: run until killed.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
}

/// Prints a client error as `error: CODE: message` and exits 1.
fn client_result(r: Result<(), tonic::Status>) -> anyhow::Result<()> {
    if let Err(s) = r {
        eprintln!("error: {:?}: {}", s.code(), s.message());
        std::process::exit(1);
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    // Errors print as one line of context (`error: a: b: c`), never as a backtrace.
    match real_main() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Parses the command line and, for a server, its configuration, then runs the command on a
/// multi-threaded runtime: `server.worker_threads` threads for a server, one per core otherwise.
fn real_main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    // Tokio runs a task woken by the running one next (the "LIFO slot"). Here that is the
    // connection task each time a gRPC handler finishes, so every response left in its own
    // write syscall. Without the slot, the handlers that finish together (a batch of writes
    // applied, a round of reads released by one heartbeat) share one write (BENCHMARKS.md
    // measures the gain for reads and writes).
    // (`disable_lifo_slot` needs `--cfg tokio_unstable`, which .cargo/config.toml sets.)
    builder.disable_lifo_slot();
    let command = match cli.command {
        Command::Server(args) => {
            let config = server_config(args)?;
            if let Some(n) = config.server.worker_threads {
                builder.worker_threads(n);
            }
            Run::Server(Box::new(config))
        }
        other => Run::Other(Box::new(other)),
    };
    builder
        .build()
        .map_err(|e| anyhow::anyhow!("start the async runtime: {e}"))?
        .block_on(run(command))
}

enum Run {
    Server(Box<ServerConfig>),
    Other(Box<Command>),
}

async fn run(command: Run) -> anyhow::Result<()> {
    // A server logs its lifecycle; client commands keep stderr for errors.
    let default = if matches!(command, Run::Server(_)) {
        "info"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let command = match command {
        Run::Server(config) => {
            raftgraph::server::run(*config, terminated(), hangups()).await?;
            return Ok(());
        }
        Run::Other(c) => *c,
    };
    match command {
        Command::Server(_) => unreachable!("handled above"),
        Command::Tenant { global, cmd } => client_result(cli::tenant(&global, cmd).await)?,
        Command::Node { global, cmd } => client_result(cli::node(&global, cmd).await)?,
        Command::Edge { global, cmd } => client_result(cli::edge(&global, cmd).await)?,
        Command::Cluster { global, cmd } => client_result(cli::cluster(&global, cmd).await)?,
        Command::Certs { cmd } => cli::certs(cmd)?,
        Command::Secrets { global, cmd } => client_result(cli::secrets(&global, cmd).await)?,
        Command::Bench(mut args) => {
            args.validate().map_err(|e| anyhow::anyhow!(e))?;
            let report = raftgraph::bench::run(&args).await?;
            match args.output {
                raftgraph::bench::Output::Table => print!("{}", report.table()),
                raftgraph::bench::Output::Json => println!("{}", report.json()),
            }
        }
        Command::BenchCompare { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?
            };
            print!(
                "{}",
                raftgraph::bench::compare(&text).map_err(|e| anyhow::anyhow!(e))?
            );
        }
        Command::WalBench {
            dir,
            entries,
            pending,
            value_bytes,
        } => {
            if pending.is_empty() || pending.contains(&0) {
                anyhow::bail!("--pending takes window sizes of at least 1, got {pending:?}");
            }
            let rows = raftgraph::wal::bench::run_all(&dir, entries, &pending, value_bytes).await?;
            print!("{}", raftgraph::wal::bench::table(&rows));
        }
        Command::SmBench {
            dir,
            ops,
            nodes,
            value_bytes,
            snapshot_mib,
        } => {
            use raftgraph::command::OPERATIONS_MAX;
            use raftgraph::state_machine::bench;
            if ops.is_empty() || ops.iter().any(|&o| o == 0 || o > OPERATIONS_MAX) {
                anyhow::bail!("--ops takes sizes in 1..={OPERATIONS_MAX}, got {ops:?}");
            }
            let rows = bench::run_apply(&dir, &ops, nodes, value_bytes).await?;
            print!("{}", bench::apply_table(&rows));
            if snapshot_mib > 0 {
                let report = bench::run_snapshot(&dir, snapshot_mib << 20).await?;
                print!("\n{}", bench::snapshot_table(&report));
            }
        }
    }
    Ok(())
}
