//! WAL errors.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the WAL. Any of these during a write is fatal for the WAL:
/// later calls fail with [`WalError::Stopped`] instead of acknowledging anything.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("invalid WAL config: {0}")]
    Config(String),
    #[error("WAL I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("WAL corrupt: {} at offset {offset}: {reason}", file.display())]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("log entry {index} encodes to {bytes} bytes, over record_bytes_max {limit}")]
    RecordTooLarge {
        index: u64,
        bytes: usize,
        limit: u32,
    },
    #[error("log entry {index} cannot be encoded: {reason}")]
    Encode { index: u64, reason: String },
    #[error("append out of order: got log index {got}, expected {expected}")]
    OutOfOrder { got: u64, expected: u64 },
    #[error("WAL stopped after an earlier fatal error: {0}")]
    Stopped(String),
}

impl WalError {
    pub(crate) fn corrupt(
        file: impl Into<PathBuf>,
        offset: u64,
        reason: impl Into<String>,
    ) -> Self {
        Self::Corrupt {
            file: file.into(),
            offset,
            reason: reason.into(),
        }
    }
}

impl From<WalError> for io::Error {
    fn from(e: WalError) -> Self {
        match e {
            WalError::Io(io) => io,
            WalError::Corrupt { .. } => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            WalError::RecordTooLarge { .. } | WalError::Config(_) | WalError::OutOfOrder { .. } => {
                io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
            }
            WalError::Encode { .. } | WalError::Stopped(_) => io::Error::other(e.to_string()),
        }
    }
}
