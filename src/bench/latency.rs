//! The load generator's latency recording: every client feeds one shared histogram.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;

/// One client's latencies, kept in a small buffer and added to the shared histogram when it
/// fills (and at the end).
pub(super) struct Latencies {
    shared: Arc<Mutex<Histogram<u64>>>,
    buf: Vec<u64>,
}

impl Latencies {
    const BUFFERED: usize = 512;

    pub(super) fn new(shared: Arc<Mutex<Histogram<u64>>>) -> Self {
        Latencies {
            shared,
            buf: Vec::with_capacity(Self::BUFFERED),
        }
    }

    pub(super) fn record(&mut self, took: Duration) {
        self.buf.push(took.as_micros().max(1) as u64);
        if self.buf.len() == Self::BUFFERED {
            self.flush();
        }
    }

    pub(super) fn flush(&mut self) {
        let mut h = self.shared.lock().expect("histogram");
        for us in self.buf.drain(..) {
            h.saturating_record(us);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_latency_reaches_the_shared_histogram_once_flushed() {
        let shared = Arc::new(Mutex::new(
            Histogram::new_with_bounds(1, 60_000_000, 3).unwrap(),
        ));
        let mut a = Latencies::new(shared.clone());
        let mut b = Latencies::new(shared.clone());
        for i in 0..(Latencies::BUFFERED as u64 + 7) {
            a.record(Duration::from_micros(i));
            b.record(Duration::from_millis(5));
        }
        // A full buffer is added as it fills; the rest waits for the flush.
        assert_eq!(shared.lock().unwrap().len(), 2 * Latencies::BUFFERED as u64);
        a.flush();
        b.flush();
        let h = shared.lock().unwrap();
        assert_eq!(h.len(), 2 * (Latencies::BUFFERED as u64 + 7));
        assert_eq!(h.min(), 1, "zero is recorded as 1 µs");
        assert_eq!(h.count_at(5_000), Latencies::BUFFERED as u64 + 7);
    }
}
