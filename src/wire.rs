//! The wire contract: every limit, header name and stream bound that both ends of a connection
//! must agree on — client and server, or two members. Client, server and peer code import
//! these from here; none reaches into another's internals for them.
//!
//! A leaf module: it imports nothing from the crate.
//!
//! **Invariants** (checked at compile time below)
//! - A proposal plus the entry's own framing fits one WAL record:
//!   `PROPOSAL_BYTES_MAX + ENTRY_FRAMING_BYTES <= WAL_RECORD_BYTES`.
//! - One replication message (its first entry, which may be a whole record, plus at most
//!   `REPLICATION_BATCH_BYTES_MAX` of further entries, plus framing) fits a peer message:
//!   `WAL_RECORD_BYTES + REPLICATION_BATCH_BYTES_MAX + ENTRY_FRAMING_BYTES <= PEER_MESSAGE_BYTES_MAX`.
//! - A snapshot chunk fits a peer message.
//! - The batcher never builds an entry a member would refuse: `BATCH_REQUESTS_MAX <=
//!   PROPOSAL_REQUESTS_MAX` and `BATCH_BYTES_MAX <= PROPOSAL_BYTES_MAX`.
//! - Every stored or logged value decodes within the codec's bound: `WAL_RECORD_BYTES <=
//!   DECODE_BYTES_MAX`.
//! - A client request is no larger than the largest proposal plus framing
//!   (`CLIENT_REQUEST_BYTES_MAX = PROPOSAL_BYTES_MAX + ENTRY_FRAMING_BYTES`): a message the
//!   server accepts is one it could propose, give or take protobuf's and bincode's different
//!   sizes (a request between the two limits is refused by the proposal check, naming it).

/// The largest encoded request the leader proposes. A larger write is refused with
/// INVALID_ARGUMENT before it reaches the log: the WAL's refusal of an oversized record would
/// stop the leader.
pub const PROPOSAL_BYTES_MAX: usize = 15 << 20;

/// Requests one Raft entry may carry (a member refuses to apply an entry with more).
pub const PROPOSAL_REQUESTS_MAX: usize = 1_024;

/// Room in a WAL record for an entry's own fields around its proposal (log id, payload tag,
/// the proposal's length prefixes, the codec's format byte).
pub const ENTRY_FRAMING_BYTES: usize = 1 << 20;

/// The WAL record limit a member runs with (`WalConfig::record_bytes_max`'s default; a server
/// does not let it be configured).
pub const WAL_RECORD_BYTES: usize = 16 << 20;

/// Encoded bytes one replication read returns at most beyond its first entry.
pub const REPLICATION_BATCH_BYTES_MAX: usize = 32 << 20;

/// The largest gRPC message two members exchange: a maximum-size replication batch plus
/// framing.
pub const PEER_MESSAGE_BYTES_MAX: usize = 80 << 20;

/// The largest gRPC message a client sends the client-facing services (graph, tenant): what a
/// server decodes, and so holds, per call before admission sees it.
pub const CLIENT_REQUEST_BYTES_MAX: usize = PROPOSAL_BYTES_MAX + ENTRY_FRAMING_BYTES;

/// The largest answer of the client-facing services: a page stops at 8 MiB of records plus one
/// record of at most 4 MiB (`state_machine::PAGE_BYTES_MAX`, `RECORD_BYTES_MAX`), and protobuf
/// may encode a stored value up to 4 times larger (a null is 1 byte stored, 4 in protobuf).
pub const CLIENT_ANSWER_BYTES_MAX: usize = 64 << 20;

/// The most bytes of answers one read or write stream holds unsent (reserved before a call is
/// read, resized to its answer once computed, given back when the transport takes it); past it
/// the stream stops reading calls until answers go out. Room for four pages of 8 MiB at once,
/// so a page read does not hold up a stream's point reads. One reservation always passes when
/// nothing is held, so a single answer larger than this still flows.
pub const STREAM_ANSWER_BYTES_MAX: usize = 32 << 20;

/// The most bytes of unsent stream answers one connection holds over all its streams (a client
/// that opens many streams and never reads holds about this much of the server's memory in
/// them). A connection whose client stops reading one stream stalls its other streams once this
/// is spent.
pub const CONNECTION_ANSWER_BYTES_MAX: usize = 64 << 20;

/// The most bytes of request messages one connection may have on their way in — a message
/// counts in full (as its header declares) from its first bytes until tonic has decoded it —
/// over all its streams. A message that does not fit is refused (UNAVAILABLE, nothing done):
/// before, 1,024 streams could each have 16 MiB buffered before any handler saw a byte.
pub const CONNECTION_REQUEST_BYTES_MAX: usize = 64 << 20;

/// Bytes of snapshot stream per chunk.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;

/// The most bytes the codec lets one decoded value claim (the last line against a garbage
/// length; records are bounded well below it).
pub const DECODE_BYTES_MAX: usize = 64 << 20;

/// Requests the leader's batcher puts in one entry.
pub const BATCH_REQUESTS_MAX: usize = 256;

/// Encoded bytes of one batch's requests (a single larger request still goes alone, up to
/// [`PROPOSAL_BYTES_MAX`]).
pub const BATCH_BYTES_MAX: usize = 1 << 20;

/// Unanswered calls one write or read stream may have, counting both calls still running and
/// answers not yet taken by the transport; past it the server stops reading the stream (HTTP/2
/// flow control then holds the client back) until answers go out.
pub const STREAM_CALLS_MAX: usize = 1024;

/// The longest `host:port` accepted for a member or an endpoint.
pub const ADDR_BYTES_MAX: usize = 256;

/// The metadata key a member sets on a call it forwards to the leader, so the leader never
/// forwards it again.
pub const FORWARDED_HEADER: &str = "x-raftgraph-forwarded";

/// The metadata key of the retry hint, in milliseconds (gRPC's retry pushback).
pub const RETRY_PUSHBACK_HEADER: &str = "grpc-retry-pushback-ms";
/// Set by a member on a call it forwards for a caller that authenticated with a member's
/// certificate (and no token): only then does the leader take the forwarding member's own
/// certificate as the caller's credential. A forward without it and without a token is refused,
/// so a member that does not authenticate (`auth = "off"`) cannot lend its certificate.
pub const MEMBER_CALLER_HEADER: &str = "x-raftgraph-member-caller";

/// The bearer token of a call on the client listener: `authorization: Bearer <token>`. A
/// follower forwards it with a call it passes to the leader, which checks it again.
pub const AUTHORIZATION_HEADER: &str = "authorization";

const _: () = {
    assert!(PROPOSAL_BYTES_MAX + ENTRY_FRAMING_BYTES <= WAL_RECORD_BYTES);
    assert!(
        WAL_RECORD_BYTES + REPLICATION_BATCH_BYTES_MAX + ENTRY_FRAMING_BYTES
            <= PEER_MESSAGE_BYTES_MAX
    );
    assert!(SNAPSHOT_CHUNK_BYTES + ENTRY_FRAMING_BYTES <= PEER_MESSAGE_BYTES_MAX);
    assert!(BATCH_REQUESTS_MAX <= PROPOSAL_REQUESTS_MAX);
    assert!(BATCH_BYTES_MAX <= PROPOSAL_BYTES_MAX);
    assert!(WAL_RECORD_BYTES <= DECODE_BYTES_MAX);
    assert!(PROPOSAL_BYTES_MAX < CLIENT_REQUEST_BYTES_MAX);
    assert!(CLIENT_REQUEST_BYTES_MAX <= WAL_RECORD_BYTES);
    assert!(STREAM_ANSWER_BYTES_MAX <= CONNECTION_ANSWER_BYTES_MAX);
    // Three of the largest messages (with their 5-byte gRPC headers) fit in one connection.
    assert!(3 * (CLIENT_REQUEST_BYTES_MAX + 5) <= CONNECTION_REQUEST_BYTES_MAX);
};
