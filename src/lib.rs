//! raftgraph: a Raft-replicated, multi-tenant property-graph store.
//!
//! A client write becomes a Raft entry (openraft). The Raft log **is** the write-ahead log
//! ([`wal`]): once a quorum has an entry synced it is committed and applied to a RocksDB state
//! machine with one column family per tenant. Snapshots are RocksDB checkpoints. See
//! `../shared/DESIGN.md` for the whole shape; each module's docs give its design, invariants and
//! caveats.
//!
//! Modules (dependencies point inward: `wal` knows nothing of tonic, RocksDB or tenants):
//! - [`codec`]: the one serializer for everything in the log and on disk.
//! - [`wal`]: the Raft log storage — segments, CRC32C records, group commit, recovery.
//! - [`tenant`]: tenant ids, quotas, usage and configs as pure logic.
//! - [`state_machine`]: the RocksDB state machine — apply, reads, snapshots, digests.
//! - [`raft`]: the openraft type configuration.
//! - [`proto`]: the gRPC API generated from `proto/raftgraph/v1`.
//! - [`server`]: the gRPC services (graph, tenant, cluster), routing to the leader, admission
//!   control, conversions at the edge and the one error → status mapping.
//! - [`node`]: one node's lifecycle — config, data directory (lock + identity), serving, shutdown.
//! - [`client`]: the Rust client (leader discovery, deadlines, exactly-once retries).
//! - [`cli`]: the `raftgraph tenant|node|edge|cluster` commands.
//! - [`bench`]: `raftgraph bench`, the load generator for raftgraph and etcd.

#[cfg(not(tokio_unstable))]
compile_error!(
    "build with `--cfg tokio_unstable` (set in .cargo/config.toml; do not override RUSTFLAGS)"
);

pub mod bench;
pub mod cli;
pub mod client;
pub mod codec;
pub mod node;
pub mod proto;
pub mod raft;
pub mod server;
pub mod state_machine;
pub mod tenant;
pub mod transport;
pub mod wal;
