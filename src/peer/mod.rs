//! The peer side of openraft's network over gRPC: [`GrpcNetworkFactory`] dials other members
//! and sends Raft RPCs and snapshots; [`RaftGrpc`] receives them, decodes the payloads and hands them to
//! openraft. Beside the client-facing services ([`crate::api`]) at the edge of the crate.

mod gate;
mod network;
mod service;

pub use gate::{Asker, Gated, PeerGate, PeerMembership};
pub use network::{GrpcNetwork, GrpcNetworkFactory};
pub use service::{FreeSpace, RaftGrpc, SNAPSHOT_SPACE_FACTOR, SnapshotLimits, free_bytes};
