//! The client-facing side of a node: the gRPC API's conversions at the edge and the one error →
//! status mapping. The services themselves (leader forwarding, admission control, reads at read
//! index) come with the cluster.
//!
//! **Invariants**
//! - Nothing from the network reaches the log unchecked: [`convert`] refuses missing fields and
//!   unknown enum values, and runs `WriteRequest::validate` (the same bounds apply enforces).
//! - No response carries a secret: tenant configs go out with `api_key` empty and `api_key_set`
//!   telling whether one is stored.
//! - Every error a client sees comes through [`status`], with the code the table there gives.

pub mod convert;
pub mod status;
