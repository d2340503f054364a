//! The client-facing side of a server: the gRPC API's conversions at the edge, the one error →
//! status mapping (`status.rs`), and the graph service ([`GraphApi`]: writes through Raft with
//! one forward from a follower, linearizable reads by read index), the tenant service
//! ([`TenantApi`]), the cluster service ([`ClusterApi`]: bootstrap, membership, leadership,
//! snapshots, status) and admission control ([`Admission`]: a bounded number of proposals in
//! flight per server).
//!
//! **Invariants**
//! - Nothing from the network reaches the log unchecked: [`convert`] refuses missing fields and
//!   unknown enum values, and runs `WriteRequest::validate` (the same bounds apply enforces).
//! - No response carries a secret: tenant configs go out with `api_key` empty and `api_key_set`
//!   telling whether one is stored.
//! - No plain secret is proposed: [`Secrets`] seals a config's secrets before the request is
//!   fingerprinted.
//! - Every error a client sees comes through `status.rs`, with the code the table there gives.

mod admission;
mod auth;
mod batch;
mod cluster;
#[doc(hidden)] // the conversions, public for their tests only
pub mod convert;
mod fresh;
mod graph;
mod intake;
mod paced;
mod rate;
mod route;
mod secrets;
mod sources;
mod status;
mod tenant;
mod token;

pub use admission::{Admission, PROPOSAL_BYTES_IN_FLIGHT_DEFAULT, Permit};
pub use auth::{Auth, Caller};
pub use batch::BatchStats;
pub use cluster::ClusterApi;
pub use fresh::{CATCH_UP_MAX, CATCH_UPS_MAX, Fresh, Gate};
pub use graph::GraphApi;
pub use intake::Metered;
pub use paced::Paced;
pub use rate::{Refusal, Throttle};
pub use route::Router;
pub use secrets::Secrets;
pub use sources::{Clock, Random, os_random};
pub use tenant::TenantApi;
pub use token::{TokenApi, Tokens};
