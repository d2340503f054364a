//! Where the WAL's blocking file I/O runs.
//!
//! All file work — recovery, writes, `fdatasync`, truncation, purge, reads that miss the cache —
//! happens in one I/O task that owns the files. [`IoRuntime`] decides where that task runs:
//!
//! - [`IoRuntime::Thread`]: on a dedicated OS thread with its own single-threaded tokio runtime,
//!   so a 0.5 ms `fdatasync` never blocks a tokio worker (production).
//! - [`IoRuntime::Inline`]: as a plain task on the caller's runtime, file calls made inline. The
//!   deterministic simulation uses this with [`super::MemFs`]: no OS thread, so nothing it awaits
//!   depends on the real clock, and group commit still happens because the task drains its queue.

use std::future::Future;
use std::io;

/// Where the WAL's I/O task runs. See the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IoRuntime {
    /// A dedicated OS thread (production).
    #[default]
    Thread,
    /// A task on the current tokio runtime, file calls inline (simulation, with `MemFs`).
    Inline,
}

impl IoRuntime {
    /// Starts `task`. Must be called from within a tokio runtime when `Inline`.
    pub fn spawn<F>(self, name: &str, task: F) -> io::Result<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self {
            IoRuntime::Thread => {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build()?;
                std::thread::Builder::new()
                    .name(name.to_string())
                    .spawn(move || rt.block_on(task))?;
                Ok(())
            }
            IoRuntime::Inline => {
                tokio::spawn(task);
                Ok(())
            }
        }
    }
}
