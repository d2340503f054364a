//! A member's data directory: an exclusive lock (`LOCK`, held while the server runs, so no
//! second process starts on it) and its identity (`IDENTITY`: cluster id and member id, written
//! on first start and checked on every later one, so a server never starts on another member's
//! data).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The format of the data this build writes (WAL entries, snapshots, the state machine).
/// **3**: every request names the credential that made it, sessions are kept per credential,
/// and tenant secrets are sealed (codec version 4). **2**: members are recorded with a peer
/// address and a client address ([`crate::raft::Member`]). Neither older format is read:
/// format 1's log and snapshots cannot be decoded with the new member type (and a cluster of
/// that format accepted unauthenticated peers, so its membership cannot be carried over as it
/// stands); format 2's session table has no owners to file its sessions under, and its
/// snapshots hold plain secrets.
pub const DATA_FORMAT: u32 = 3;

fn format_1() -> u32 {
    1
}

/// What a data directory belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub cluster_id: String,
    /// The member's id (the file's key keeps its first spelling).
    #[serde(rename = "node_id")]
    pub member_id: u64,
    /// Absent in directories written before formats were recorded: format 1.
    #[serde(default = "format_1")]
    pub format: u32,
}

impl Identity {
    /// Member `member_id` of `cluster_id`, in this build's [`DATA_FORMAT`].
    pub fn new(cluster_id: &str, member_id: u64) -> Identity {
        Identity {
            cluster_id: cluster_id.into(),
            member_id,
            format: DATA_FORMAT,
        }
    }
}

/// Why a data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {dir}: locked by another process (is this server already running?)")]
    Locked { dir: PathBuf },
    #[error(
        "data directory {dir} belongs to cluster {found_cluster:?} member {found_member}, \
         but this server is configured as cluster {cluster:?} member {member}; \
         point data_dir at this member's own directory"
    )]
    WrongIdentity {
        dir: PathBuf,
        found_cluster: String,
        found_member: u64,
        cluster: String,
        member: u64,
    },
    #[error(
        "data directory {dir} holds data of format {found}; this build reads format {DATA_FORMAT} \
         only (format 2: members have separate peer and client addresses and authenticate with \
         certificates; format 3: requests and sessions belong to the credential that made them, \
         and tenant secrets are sealed). Start this member with an empty data directory and add \
         it to a cluster of the new format; see docs/security.md, \"Upgrading from format 1 or \
         2\""
    )]
    OldFormat { dir: PathBuf, found: u32 },
    #[error("data directory {dir}: IDENTITY is unreadable: {reason}")]
    BadIdentity { dir: PathBuf, reason: String },
    #[error("data directory {dir}: {source}")]
    Io {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An open, locked data directory. The lock is released when this is dropped (or the process
/// dies: the OS drops the lock with the file descriptor).
#[derive(Debug)]
pub struct DataDir {
    dir: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `dir` if needed, locks it, and records or checks `identity`.
    pub fn open(dir: &Path, identity: &Identity) -> Result<DataDir, DataDirError> {
        let io_err = |source| DataDirError::Io {
            dir: dir.into(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))
            .map_err(io_err)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::Locked { dir: dir.into() });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err(e)),
        }
        let path = dir.join("IDENTITY");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let found: Identity =
                    toml::from_str(&text).map_err(|e| DataDirError::BadIdentity {
                        dir: dir.into(),
                        reason: e.to_string(),
                    })?;
                if found.format != identity.format
                    && found.cluster_id == identity.cluster_id
                    && found.member_id == identity.member_id
                {
                    return Err(DataDirError::OldFormat {
                        dir: dir.into(),
                        found: found.format,
                    });
                }
                if &found != identity {
                    return Err(DataDirError::WrongIdentity {
                        dir: dir.into(),
                        found_cluster: found.cluster_id,
                        found_member: found.member_id,
                        cluster: identity.cluster_id.clone(),
                        member: identity.member_id,
                    });
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A directory with data but no identity is not adopted: it may be anyone's.
                for sub in ["wal", "sm"] {
                    if dir.join(sub).exists() {
                        return Err(DataDirError::BadIdentity {
                            dir: dir.into(),
                            reason: format!(
                                "IDENTITY is missing but {sub}/ exists; restore IDENTITY \
                                 (cluster_id, node_id) or point data_dir elsewhere"
                            ),
                        });
                    }
                }
                write_identity(dir, identity).map_err(io_err)?;
            }
            Err(e) => return Err(io_err(e)),
        }
        Ok(DataDir {
            dir: dir.into(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

/// Temp file, fsync, rename, directory fsync: a crash leaves the old file or the new one.
fn write_identity(dir: &Path, identity: &Identity) -> io::Result<()> {
    let text = toml::to_string(identity).map_err(io::Error::other)?;
    let tmp = dir.join("IDENTITY.tmp");
    let mut f = File::create(&tmp)?;
    f.write_all(
        b"# Written on first start; a node refuses a data directory of another identity.\n",
    )?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("IDENTITY"))?;
    File::open(dir)?.sync_all()
}
