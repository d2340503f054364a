//! The RocksDB state machine: committed Raft entries become graph data here.
//!
//! **Design.** One RocksDB database holds a `meta` column family (applied log id, membership,
//! tenant registry, counters and usage, client sessions) and one column family per tenant (its
//! nodes, edges and indexes); `keys` documents every key. Applying an entry runs its request
//! against a `txn` overlay of the database; the overlay, the session record and the new
//! applied id then go into **one** `WriteBatch`. Column-family create and drop cannot be in a
//! batch: a tenant's CF is created before the batch that registers it and dropped after the
//! batch that unregisters it (with every memtable flushed first), and [`StateMachine::open`]
//! reconciles CFs with the registry, so an interruption at any point converges.
//!
//! Writes are not synced and skip RocksDB's WAL: the synced Raft log ([`crate::wal`]) is the
//! durability point. A flush writes every column family's memtable in one MANIFEST commit
//! (`atomic_flush`), so after a crash — a `kill -9` included, which loses the memtables — the
//! database is exactly "the state after entry N" for the N it reports, and openraft replays the
//! log after it. Every snapshot flushes first and the log is purged only behind a snapshot, so
//! the entries after N are still in the log. (RocksDB's own WAL would give the same atomicity
//! at the cost of a second copy of every write on disk and the CPU to write it; BENCHMARKS.md
//! has the measurement.)
//!
//! Snapshots: a builder checkpoints the database (hard links, memtables flushed) on the
//! state-machine task, then, off it, writes the checkpoint's logical content as a [`stream`]
//! file — sorted pairs per column family, CRC32C per frame, a BLAKE3 digest at the end — the same
//! bytes on every replica. Installing verifies a stream while building SST files, ingests them
//! into a fresh `db-<gen>` directory, fsyncs it, and only then switches the durable `CURRENT`
//! pointer; readers holding the old database finish on it. Blocking RocksDB work goes through
//! [`Blocking`]: the blocking pool in production, inline in the simulation. The state
//! machine's own file steps (the pointer, streams, new database directories, checkpoints, each
//! entry's write) go through `disk::SmDisk`, which with the `testing` feature announces each to
//! a hook first: the simulation cuts the power at one and knows what was not yet durable.
//!
//! **Invariants**
//! - The applied index advances by exactly one per entry; anything else is a fatal error.
//! - Every effect of an entry and its applied id are in one batch: after any crash the database
//!   is the state after some entry N and reports N.
//! - Apply is a function of the log alone: ids from per-tenant counters, times stamped by the
//!   leader, ordered maps, usage from logical key + value bytes.
//! - A refused request (validation, precondition, not found, quota) writes nothing of itself;
//!   only its session record (so a retry gets the same answer) and the applied id. A request
//!   whose token owner was revoked, has expired (at the request's stamped time) or does not allow
//!   it, and a write to a tenant that does not exist, record no session either.
//! - Sessions live in their owner's space (`Request::owner`): a request reads, advances and
//!   evicts only sessions of the credential that made it.
//! - A tenant's usage equals a recount of its column family: nodes, edges, key + value bytes.
//! - A request for tenant A reads and writes only A's column family and A's meta keys.
//! - A client's repeated sequence (in its owner's space) with the same command returns the stored response and
//!   applies nothing; with another command it is refused (`SequenceReused`); an older one, or
//!   one above 1 from a client without a session, is refused as session-expired.
//! - One entry's work is bounded whatever it asks: at most `entry_write_bytes_max` bytes
//!   buffered and `cascade_edges_max` edges cascaded (both replicated `ClusterLimits`), at most
//!   `EVICTIONS_PER_ENTRY_MAX` sessions evicted.
//! - Stored tenant configs hold sealed secrets only (apply refuses a plain one); apply never
//!   opens them, so a member without the keyring applies alike.
//! - I/O errors and undecodable stored bytes are fatal (returned as `io::Error`, which stops
//!   openraft), never a client error: a replica that cannot apply must not diverge.
//!
//! **Caveats**
//! - An owner's sessions are evicted least-recently-written first past its
//!   `sessions_per_principal_max` or `session_bytes_per_principal_max`. A retried *first*
//!   request (sequence 1) whose session was evicted is refused as session-expired only when the
//!   client marked it resent ([`crate::command::RESENT`]) and its owner had a session evicted
//!   in the ten minutes before it (the latest eviction's stamped time is kept under
//!   `E<owner>`); unmarked, or later, it cannot be told from a new client's first request and
//!   applies again.
//! - Apply itself runs RocksDB writes on the state-machine task (memtable writes, not synced);
//!   only a tenant delete blocks there on a flush of every memtable (before the drop).
//! - A restart after a crash re-applies what the memtables held: up to the meta column
//!   family's memtable (`META_WRITE_BUFFER_BYTES`, some 100,000 create-node writes) or a
//!   snapshot interval, whichever is less.
//! - `ClusterLimits` are replicated through the log (`Command::SetLimits`), not server config.
//! - The latest checkpoint is kept beside the stream it produced; its hard links hold on to SST
//!   files that compaction has since replaced, until the next snapshot.
//! - Decoding a stored value recurses over nested property values; apply bounds nesting
//!   (`VALUE_DEPTH_MAX`) before anything is stored, and the server must bound it before
//!   proposing.

mod apply;
pub mod bench;
mod config;
mod disk;
mod install;
mod keys;
mod machine;
mod ops;
mod read;
mod shared;
mod snapshot;
mod store;
pub mod stream;
mod txn;
mod verify;

#[cfg(feature = "testing")]
#[doc(hidden)]
pub use config::ApplyObserver;
pub use config::{Blocking, StateMachineConfig};
#[cfg(feature = "testing")]
#[doc(hidden)]
pub use disk::{DiskHook, DiskStep, Phase};
pub use install::Stager;
pub use machine::{Builder, StateMachine};

/// The openraft handle of a member, over this state machine.
pub type Raft = openraft::Raft<crate::raft::TypeConfig, StateMachine>;
pub use read::{
    Closing, GraphReader, Neighbor, PAGE_BYTES_MAX, PAGE_ITEMS_MAX, Page, ReadError, SessionInfo,
};
pub use snapshot::SnapshotFile;
pub use verify::TenantCheck;
