//! Raft wiring: the openraft type configuration, and openraft's network over gRPC
//! ([`network`]: the client side, [`service`]: the server side). Node bootstrap comes with the
//! cluster.
//!
//! Entries carry a [`crate::state_machine::Proposal`] (one request, or client writes the leader
//! batched); applying one yields [`crate::state_machine::Responses`], one per request. Node ids
//! are `u64`; a node is known by its address (`BasicNode`).

pub mod network;
pub mod runtime;
pub mod service;

use crate::state_machine::{Proposal, Responses};

openraft::declare_raft_types!(
    /// raftgraph's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = Responses,
        AsyncRuntime = runtime::SeededTokio,
);

pub type NodeId = u64;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
