//! The `raftgraph` binary: parses flags and calls into the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    match Cli::parse().command {
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
            use raftgraph::state_machine::{OPERATIONS_MAX, bench};
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
