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
    }
    Ok(())
}
