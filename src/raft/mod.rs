//! The openraft type configuration, its aliases and its runtime ([`SeededTokio`]: tokio with a
//! seedable generator). Near the bottom of the crate: it names the replicated vocabulary
//! ([`crate::command`]) and nothing above it. The gRPC adapters of openraft's network live at
//! the edge ([`crate::peer`]); the `Raft` handle over the state machine is
//! [`crate::state_machine::Raft`].
//!
//! Entries carry a [`crate::command::Proposal`] (one request, or client writes the leader
//! batched); applying one yields [`crate::command::Responses`], one per request. Member ids
//! (openraft's `NodeId`) are `u64`; a member is recorded as a [`Member`]: its peer address (what
//! Raft dials) and its client address (where followers forward client calls and clients are
//! sent).
//!
//! Leader ids are standard Raft's: one leader per term (a vote is for one candidate per term).
//! openraft's default would let a member that voted in a term vote again for a candidate with
//! a higher member id in the same term, so two members could both lead one term (safe for
//! openraft, which orders leaders by term and member id, but not Raft's election safety, which
//! the simulation checks and operators expect when they read terms).

mod runtime;

pub use runtime::SeededTokio;
pub(crate) use runtime::seeded;
#[doc(hidden)] // for the simulation's determinism check
pub use runtime::unseeded_draws;

use crate::command::{Proposal, Responses};

openraft::declare_raft_types!(
    /// raftgraph's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = Responses,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
        Node = Member,
        AsyncRuntime = runtime::SeededTokio,
);

/// A member as the replicated membership records it. **Format:** part of every membership
/// entry and snapshot (bincode, positional); data written before it (members as openraft's
/// one-address `BasicNode`) is refused at start (see `docs/design.md`, "Formats").
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// `host:port` of the member's peer listener (mutual TLS): Raft RPCs, read index,
    /// snapshots.
    pub peer_addr: String,
    /// `host:port` of the member's client listener: forwarded client calls, leader hints.
    pub api_addr: String,
}

impl Member {
    pub fn new(peer_addr: impl Into<String>, api_addr: impl Into<String>) -> Member {
        Member {
            peer_addr: peer_addr.into(),
            api_addr: api_addr.into(),
        }
    }
}

pub type NodeId = u64;
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;
