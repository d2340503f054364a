//! The replicated vocabulary: the graph model as stored (property values, node and edge records
//! and their input limits: `graph.rs`) and what a Raft entry carries and returns (requests,
//! commands, proposals, responses, apply errors: `request.rs`). Pure data and validation: no I/O,
//! no RocksDB, no tonic; the state machine applies these, the server builds them from protobuf,
//! and the openraft type configuration ([`crate::raft`]) names [`Proposal`] and [`Responses`].

mod graph;
mod request;

pub use graph::{
    Direction, Edge, EdgeRecord, LABELS_MAX, NAME_BYTES_MAX, Node, NodeRecord, PROPERTIES_MAX,
    Properties, RECORD_BYTES_MAX, VALUE_BYTES_MAX, VALUE_DECODE_DEPTH_MAX, VALUE_DEPTH_MAX,
    VALUE_ITEMS_MAX, Value, validate_name,
};
pub use request::{
    ApplyError, ClusterLimits, Command, Fingerprint, LimitChanges, Need, NewToken, NodeRef,
    OPERATIONS_MAX, Op, OpResult, Outcome, PRECONDITIONS_MAX, Precondition, Proposal, RESEALED_MAX,
    RESENT, Request, Resealed, Response, Responses, WriteRequest, fingerprint,
};
