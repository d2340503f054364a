//! The nodes' own logs (tracing), captured per run in memory with simulated timestamps, and
//! written out with a failure.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut b = self.0.lock().expect("log buffer");
        // Bounded: a run that logs without end keeps its first 64 MiB.
        if b.len() < 64 << 20 {
            b.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'a self) -> Buffer {
        self.clone()
    }
}

struct SimTime;

impl FormatTime for SimTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        match turmoil::sim_elapsed() {
            Some(d) => write!(w, "{:>10.3}s", d.as_secs_f64()),
            None => write!(w, "{:>11}", "-"),
        }
    }
}

/// Runs `f` with this thread's logs captured; returns its result and the logs.
pub fn capture<T>(f: impl FnOnce() -> T) -> (T, Vec<u8>) {
    let buffer = Buffer::default();
    let filter = std::env::var("SIM_LOG").unwrap_or_else(|_| "info,openraft=warn,h2=warn".into());
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(buffer.clone())
        .with_timer(SimTime)
        .with_ansi(false)
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let logs = std::mem::take(&mut *buffer.0.lock().expect("log buffer"));
    (out, logs)
}
