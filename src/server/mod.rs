//! The client-facing side of a node: the gRPC API's conversions at the edge, the one error →
//! status mapping, and the graph service ([`graph`]: writes through Raft with one forward from a
//! follower, linearizable reads by read index), the tenant service ([`tenant`]), the cluster
//! service ([`cluster`]: bootstrap, membership, leadership, snapshots, status) and admission
//! control ([`admission`]: a bounded number of proposals in flight per node).
//!
//! **Invariants**
//! - Nothing from the network reaches the log unchecked: [`convert`] refuses missing fields and
//!   unknown enum values, and runs `WriteRequest::validate` (the same bounds apply enforces).
//! - No response carries a secret: tenant configs go out with `api_key` empty and `api_key_set`
//!   telling whether one is stored.
//! - Every error a client sees comes through [`status`], with the code the table there gives.

pub mod admission;
pub mod batch;
pub mod cluster;
pub mod convert;
pub mod graph;
pub mod route;
pub mod status;
pub mod tenant;
