//! The gRPC API generated from `proto/raftgraph/v1` (tonic + prost). Only the server and the
//! client use these types; `wal`, `state_machine` and `tenant` never see them.

/// `raftgraph.v1`: the graph and tenant services and their messages.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("raftgraph.v1");
}
