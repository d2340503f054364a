//! A server's configuration: a TOML file (see `deploy/node1.toml`), overridden by flags and
//! `RAFTGRAPH_*` environment variables (the binary applies those). [`ServerConfig::validate`]
//! refuses bad values and bad combinations with a message naming the field.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::PROPOSAL_BYTES_IN_FLIGHT_DEFAULT;
use crate::auth::AuthMode;
use crate::state_machine::StateMachineConfig;
use crate::tls::{CertFiles, check_nameable};
use crate::transport::check_addr;
use crate::wal::WalConfig;
use crate::wire::CLIENT_REQUEST_BYTES_MAX;

/// The most proposals in flight a server may be configured for.
pub const PROPOSALS_IN_FLIGHT_MAX: usize = 1_000_000;
/// The largest `server.proposal_bytes_in_flight_max` accepted (64 GiB).
pub const PROPOSAL_BYTES_IN_FLIGHT_MAX: usize = 64 << 30;
/// Most runtime threads `server.worker_threads` may ask for.
pub const WORKER_THREADS_MAX: usize = 1_024;

/// The longest cluster id.
pub const CLUSTER_ID_BYTES_MAX: usize = 64;

/// Everything a server needs to start.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Names the cluster; recorded in the data directory on first start and checked on every
    /// later one, so a server never starts on another cluster's data. `[A-Za-z0-9_.-]`, 1..=64.
    pub cluster_id: String,
    /// This member's Raft id, unique in the cluster, at least 1. Recorded in the data directory.
    /// This member's id. `node_id`, the key's older spelling, is read too.
    #[serde(alias = "node_id")]
    pub member_id: u64,
    /// Address to listen on for clients (`ip:port`): graph, tenant, cluster, health and
    /// reflection services. Never serves Raft messages.
    pub listen: SocketAddr,
    /// Address clients dial (`host:port`); defaults to `listen`. Must be set when `listen` is a
    /// wildcard address (0.0.0.0 or ::).
    #[serde(default)]
    pub advertise: Option<String>,
    /// Address to listen on for other members (`ip:port`): Raft messages, read index,
    /// snapshots. Always mutual TLS.
    pub peer_listen: SocketAddr,
    /// Address other members dial (`host:port`); defaults to `peer_listen`, and must be set
    /// when it is a wildcard address.
    #[serde(default)]
    pub peer_advertise: Option<String>,
    /// TLS on the client listener: `on` (the default) or `off` (plaintext, for local
    /// experiments only; logged as a warning at start). The peer listener always uses TLS.
    #[serde(default)]
    pub tls: TlsMode,
    /// Authentication on the client listener: `on` (the default: every call needs a bearer
    /// token or a member's certificate) or `off` (every caller may do everything; for local
    /// experiments only, logged as a warning at start).
    #[serde(default)]
    pub auth: AuthMode,
    /// The cluster's CA certificate and this member's certificate and key (`raftgraph certs`
    /// writes them). Required by a server that listens on TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certs: Option<CertFiles>,
    /// The keyring tenant secrets are sealed with (`raftgraph secrets keygen` writes one): one
    /// `<id> <64 hex digits>` line per key, the last one sealing. Every member needs the same
    /// file; without one, configs that carry a secret are refused. Mode 0600: a file others
    /// may read is refused at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_key_file: Option<PathBuf>,
    /// The data directory: `wal/`, `sm/`, `IDENTITY` and `LOCK` live here.
    pub data_dir: PathBuf,
    #[serde(default)]
    pub raft: RaftSection,
    #[serde(default)]
    pub server: ServerSection,
    #[serde(default)]
    pub storage: StorageSection,
}

/// Whether the client listener speaks TLS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    #[default]
    On,
    Off,
}

/// Raft timing and log compaction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RaftSection {
    /// Leader heartbeat interval, ms.
    pub heartbeat_ms: u64,
    /// An election starts after a random timeout in `[min, max)` ms without a leader.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one (0 = never
    /// automatically; `raftgraph cluster snapshot` still works).
    pub snapshot_every_entries: u64,
    /// Entries kept in the log behind a snapshot, so briefly lagging followers catch up from
    /// the log rather than a whole snapshot.
    pub log_kept_behind_snapshot: u64,
    /// A snapshot transfer to this member is abandoned when no chunk arrives for this long, ms:
    /// a stalled sender cannot hold the one receive slot.
    pub snapshot_chunk_timeout_ms: u64,
}

impl Default for RaftSection {
    fn default() -> Self {
        RaftSection {
            heartbeat_ms: 100,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            snapshot_every_entries: 100_000,
            log_kept_behind_snapshot: 10_000,
            snapshot_chunk_timeout_ms: 30_000,
        }
    }
}

/// The client-facing server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Writes and admin commands in flight on this server before new ones are refused with
    /// UNAVAILABLE and a retry hint.
    pub proposals_in_flight_max: usize,
    /// Encoded bytes of those writes and admin commands in flight before new ones are refused
    /// the same way (at least 16 MiB, the largest request a client may send).
    pub proposal_bytes_in_flight_max: usize,
    /// Threads of the server's async runtime (`raftgraph server` builds it from this). Unset:
    /// one per CPU core. Where several servers share one machine, as in the local cluster, one
    /// each spares the cores the wake-ups between a server's own threads (measured in
    /// BENCHMARKS.md). The WAL's I/O thread and RocksDB's are extra.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            proposals_in_flight_max: 4096,
            proposal_bytes_in_flight_max: PROPOSAL_BYTES_IN_FLIGHT_DEFAULT,
            worker_threads: None,
        }
    }
}

/// Memory and file sizes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// WAL segment size, bytes.
    pub wal_segment_bytes: u64,
    /// RocksDB memtables, all tenants together, bytes.
    pub write_buffer_bytes: usize,
    /// RocksDB block cache, bytes.
    pub block_cache_bytes: usize,
    /// The largest snapshot this member accepts from a leader, bytes (the sender declares the
    /// size first; the member also refuses one it has no room for: see docs/security.md).
    pub snapshot_receive_bytes_max: u64,
}

impl Default for StorageSection {
    fn default() -> Self {
        let wal = WalConfig::new("");
        let sm = StateMachineConfig::new("");
        StorageSection {
            wal_segment_bytes: wal.segment_bytes,
            write_buffer_bytes: sm.write_buffer_bytes,
            block_cache_bytes: sm.block_cache_bytes,
            snapshot_receive_bytes_max: 1 << 40,
        }
    }
}

/// A configuration that cannot run, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("config {field}: {reason}")]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> Result<(), ConfigError> {
    Err(ConfigError {
        field: field.into(),
        reason: reason.into(),
    })
}

/// An advertised address: required when `listen` is a wildcard or port 0, else `host:port`.
fn check_advertise(
    field: &str,
    advertise: &Option<String>,
    listen: SocketAddr,
) -> Result<(), ConfigError> {
    match advertise {
        None if listen.ip().is_unspecified() => bad(
            field,
            format!("required when listening on the wildcard {listen}: nobody can dial it"),
        ),
        None if listen.port() == 0 => bad(
            field,
            "required when listening on port 0: nobody can dial an unknown port",
        ),
        Some(a) => check_addr(a).map_err(|e| ConfigError {
            field: field.into(),
            reason: e.to_string(),
        }),
        None => Ok(()),
    }
}

/// `[A-Za-z0-9_.-]`, 1..=64 bytes.
pub fn check_cluster_id(id: &str) -> Result<(), ConfigError> {
    let ok_chars = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if id.is_empty() || id.len() > CLUSTER_ID_BYTES_MAX || !ok_chars {
        return bad(
            "cluster_id",
            format!("{id:?}: use 1..={CLUSTER_ID_BYTES_MAX} of [A-Za-z0-9_.-]"),
        );
    }
    Ok(())
}

impl ServerConfig {
    /// A configuration with defaults for everything but identity, addresses and directory
    /// (and no certificate files).
    pub fn new(
        cluster_id: &str,
        member_id: u64,
        listen: SocketAddr,
        peer_listen: SocketAddr,
        data_dir: &Path,
    ) -> Self {
        ServerConfig {
            cluster_id: cluster_id.into(),
            member_id,
            listen,
            advertise: None,
            peer_listen,
            peer_advertise: None,
            tls: TlsMode::On,
            auth: AuthMode::On,
            certs: None,
            secrets_key_file: None,
            data_dir: data_dir.into(),
            raft: RaftSection::default(),
            server: ServerSection::default(),
            storage: StorageSection::default(),
        }
    }

    /// Parses a TOML file's text; unknown keys are errors (a typo must not be ignored).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError {
            field: "file".into(),
            reason: e.to_string(),
        })
    }

    /// The address clients dial.
    pub fn advertise_addr(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| self.listen.to_string())
    }

    /// The address other members dial.
    pub fn peer_advertise_addr(&self) -> String {
        self.peer_advertise
            .clone()
            .unwrap_or_else(|| self.peer_listen.to_string())
    }

    /// This member as the membership records it.
    pub fn member(&self) -> crate::raft::Member {
        crate::raft::Member::new(self.peer_advertise_addr(), self.advertise_addr())
    }

    /// Refuses values that cannot work, naming the field and the value.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_cluster_id(&self.cluster_id)?;
        if self.member_id == 0 {
            return bad("member_id", "0; member ids start at 1");
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "empty");
        }
        check_advertise("advertise", &self.advertise, self.listen)?;
        check_advertise("peer_advertise", &self.peer_advertise, self.peer_listen)?;
        if self.listen == self.peer_listen && self.listen.port() != 0 {
            return bad(
                "peer_listen",
                format!(
                    "{} is also `listen`: peers and clients need separate listeners",
                    self.peer_listen
                ),
            );
        }
        check_nameable(&self.cluster_id).map_err(|reason| ConfigError {
            field: "cluster_id".into(),
            reason,
        })?;
        let r = &self.raft;
        if !(10..=60_000).contains(&r.heartbeat_ms) {
            return bad(
                "raft.heartbeat_ms",
                format!("{}; use 10..=60000", r.heartbeat_ms),
            );
        }
        if r.election_timeout_min_ms < 3 * r.heartbeat_ms {
            return bad(
                "raft.election_timeout_min_ms",
                format!(
                    "{} ms is under 3 heartbeats ({} ms each): followers would start \
                     elections while the leader is healthy",
                    r.election_timeout_min_ms, r.heartbeat_ms
                ),
            );
        }
        if r.election_timeout_max_ms <= r.election_timeout_min_ms {
            return bad(
                "raft.election_timeout_max_ms",
                format!(
                    "{} must exceed election_timeout_min_ms ({}): the spread is what keeps \
                     candidates from splitting the vote forever",
                    r.election_timeout_max_ms, r.election_timeout_min_ms
                ),
            );
        }
        if !(100..=3_600_000).contains(&r.snapshot_chunk_timeout_ms) {
            return bad(
                "raft.snapshot_chunk_timeout_ms",
                format!("{}; use 100..=3600000", r.snapshot_chunk_timeout_ms),
            );
        }
        if self.storage.snapshot_receive_bytes_max == 0 {
            return bad(
                "storage.snapshot_receive_bytes_max",
                "0: this member could never catch up from a snapshot",
            );
        }
        if !(1..=PROPOSALS_IN_FLIGHT_MAX).contains(&self.server.proposals_in_flight_max) {
            return bad(
                "server.proposals_in_flight_max",
                format!(
                    "{}; use 1..={PROPOSALS_IN_FLIGHT_MAX}",
                    self.server.proposals_in_flight_max
                ),
            );
        }
        let bytes = self.server.proposal_bytes_in_flight_max;
        if !(CLIENT_REQUEST_BYTES_MAX..=PROPOSAL_BYTES_IN_FLIGHT_MAX).contains(&bytes) {
            return bad(
                "server.proposal_bytes_in_flight_max",
                format!(
                    "{bytes}; use {CLIENT_REQUEST_BYTES_MAX}..={PROPOSAL_BYTES_IN_FLIGHT_MAX} (at \
                     least one request of the largest size a client may send)"
                ),
            );
        }
        if let Some(n) = self.server.worker_threads
            && !(1..=WORKER_THREADS_MAX).contains(&n)
        {
            return bad(
                "server.worker_threads",
                format!("{n}; use 1..={WORKER_THREADS_MAX}, or leave it unset for one per core"),
            );
        }
        self.wal_config().validate().map_err(|e| ConfigError {
            field: "storage.wal_segment_bytes".into(),
            reason: e.to_string(),
        })?;
        self.sm_config().validate().map_err(|e| ConfigError {
            field: "storage".into(),
            reason: e.to_string(),
        })?;
        Ok(())
    }

    pub fn wal_config(&self) -> WalConfig {
        let mut c = WalConfig::new(self.data_dir.join("wal"));
        c.segment_bytes = self.storage.wal_segment_bytes;
        c
    }

    pub fn sm_config(&self) -> StateMachineConfig {
        let mut c = StateMachineConfig::new(self.data_dir.join("sm"));
        c.write_buffer_bytes = self.storage.write_buffer_bytes;
        // One tenant's memtable may take up to a quarter of the shared budget.
        c.cf_write_buffer_bytes = c
            .cf_write_buffer_bytes
            .min(c.write_buffer_bytes / 4)
            .max(64 << 10);
        c.block_cache_bytes = self.storage.block_cache_bytes;
        c
    }

    /// openraft's configuration: pre-vote on (a member cut off and healed must not depose a
    /// healthy leader), snapshots by entry count.
    pub fn raft_config(&self) -> Result<Arc<openraft::Config>, ConfigError> {
        let r = &self.raft;
        let policy = if r.snapshot_every_entries == 0 {
            openraft::SnapshotPolicy::Never
        } else {
            openraft::SnapshotPolicy::LogsSinceLast(r.snapshot_every_entries)
        };
        let c = openraft::Config {
            cluster_name: self.cluster_id.clone(),
            heartbeat_interval: r.heartbeat_ms,
            election_timeout_min: r.election_timeout_min_ms,
            election_timeout_max: r.election_timeout_max_ms,
            enable_pre_vote: Some(true),
            // A leader restarted within its term would otherwise resume leading at once, with
            // the committed id it read back — which may lag what it acknowledged, since the
            // WAL syncs a lone committed id only with the next group and the state machine
            // syncs nothing — and answer a linearizable read with a state that misses an
            // acknowledged write (the simulation found this after a power cut of all three
            // members). Off, it must win a new term first; its first entry in that term is
            // committed only after every earlier entry, so every read index covers them.
            enable_leader_restore: Some(false),
            snapshot_policy: policy,
            max_in_snapshot_log_to_keep: r.log_kept_behind_snapshot,
            ..Default::default()
        };
        c.validate().map(Arc::new).map_err(|e| ConfigError {
            field: "raft".into(),
            reason: e.to_string(),
        })
    }

    /// How snapshot transfers to this member are bounded.
    pub fn snapshot_limits(&self) -> crate::peer::SnapshotLimits {
        crate::peer::SnapshotLimits {
            chunk_timeout: Duration::from_millis(self.raft.snapshot_chunk_timeout_ms),
            bytes_max: self.storage.snapshot_receive_bytes_max,
        }
    }

    /// The election timeout's upper bound, for callers that wait "a few elections".
    pub fn election_timeout_max(&self) -> Duration {
        Duration::from_millis(self.raft.election_timeout_max_ms)
    }
}
