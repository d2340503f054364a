//! raftgraph: a Raft-replicated, multi-tenant property-graph store.
//!
//! A client write becomes a Raft entry (openraft). The Raft log **is** the write-ahead log
//! ([`wal`]): once a quorum has an entry synced it is committed and applied to a RocksDB state
//! machine with one column family per tenant. Snapshots are RocksDB checkpoints. The design and
//! its decisions are in `docs/design.md`, the path of a write and a read in
//! `docs/architecture.md`; each module's docs give its design, invariants and caveats.
//!
//! **Words.** A *node* is a graph vertex; a *member* is one of the cluster's Raft participants
//! (voter or learner; `NodeId` is openraft's name for its id); a *server* is the process that
//! hosts a member ([`server::Server`] runs one).
//!
//! **Layers.** A module imports only the modules its row names; every row names only modules
//! above it, so there is no circle. `tests/architecture.rs` reads this table, parses every file
//! in `src/`, and fails on a `crate::…` (or `super::…`) path that breaks it, and on files of one
//! directory module that import each other in a circle.
//!
//! | module | what it owns | may import |
//! |---|---|---|
//! | [`wire`] | limits, header names and stream bounds both ends of a connection agree on | — |
//! | [`proto`] | the gRPC API generated from `proto/raftgraph/v1` | — |
//! | [`budget`] | bytes held for a reader that may never take them (unsent stream answers) | — |
//! | [`codec`] | the one serializer for everything in the log and on disk | `wire` |
//! | [`tenant`] | tenant ids, quotas, usage and configs as pure logic; secrets sealed at rest | `codec`, `wire` |
//! | [`auth`] | bearer tokens, their scopes and roles, the principal a call runs as, as pure logic | `tenant` |
//! | [`command`] | the replicated vocabulary: graph values, requests, responses | `auth`, `tenant`, `codec`, `wire` |
//! | [`raft`] | the openraft type configuration and its runtime | `command` |
//! | [`wal`] | the Raft log storage: segments, CRC32C records, group commit, recovery | `codec`, `wire` |
//! | [`tls`] | certificates (names, generation), TLS configs and their reload, the TLS listener | `budget`, `wire` |
//! | [`transport`] | outgoing channels (the network seam, TLS when asked) and address checks | `wire` |
//! | [`state_machine`] | RocksDB: apply, reads, snapshots, digests; the `Raft` handle over it | `raft`, `command`, `auth`, `tenant`, `codec`, `wire` |
//! | [`client`] | the Rust client: leader discovery, deadlines, exactly-once retries | `transport`, `proto`, `wire` |
//! | [`api`] | the client-facing gRPC services, authentication and authorization, routing, admission, edge conversions | `budget`, `state_machine`, `wal`, `raft`, `command`, `auth`, `tenant`, `codec`, `tls`, `transport`, `proto`, `wire` |
//! | [`peer`] | openraft's network over gRPC between members, and who may call it | `state_machine`, `raft`, `codec`, `tls`, `transport`, `proto`, `wire` |
//! | [`server`] | the server process: config, data directory, two listeners, serving, shutdown | `api`, `peer`, `state_machine`, `wal`, `raft`, `command`, `auth`, `tenant`, `codec`, `tls`, `transport`, `proto`, `wire` |
//! | [`cli`] | the `raftgraph tenant\|node\|edge\|cluster\|certs\|secrets` commands | `client`, `command`, `tenant`, `tls`, `transport`, `proto`, `wire` |
//! | [`bench`](mod@bench) | `raftgraph bench`, the load generator for raftgraph and etcd | `client`, `command`, `tls`, `transport`, `proto`, `wire` |
//!
//! `wal`, `state_machine`, `tenant` and `command` never see tonic or generated protobuf types:
//! the client-facing services and the peer service convert at the edge.

#[cfg(not(tokio_unstable))]
compile_error!(
    "build with `--cfg tokio_unstable` (set in .cargo/config.toml; do not override RUSTFLAGS)"
);

pub mod api;
pub mod auth;
pub mod bench;
pub mod budget;
pub mod cli;
pub mod client;
pub mod codec;
pub mod command;
pub mod peer;
pub mod proto;
pub mod raft;
pub mod server;
pub mod state_machine;
pub mod tenant;
pub mod tls;
pub mod transport;
pub mod wal;
pub mod wire;
