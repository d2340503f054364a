//! A budget of bytes held for someone who may never take them: the answers of a stream a client
//! does not read. [`ByteBudget::reserve`] waits while the budget is spent (always letting one
//! reservation through when nothing is held, so a single answer larger than the whole budget
//! still flows); a reservation is resized to what the answer turned out to be without waiting
//! ([`Reservation::resize`]: waiting there could deadlock calls that each hold a part), and
//! gives its bytes back when dropped.
//!
//! A leaf module: it imports nothing from the crate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Notify;

/// Bytes held against a limit, shared by everyone who reserves from it.
#[derive(Debug)]
pub struct ByteBudget {
    limit: usize,
    used: AtomicUsize,
    freed: Notify,
}

impl ByteBudget {
    pub fn new(limit: usize) -> Arc<ByteBudget> {
        Arc::new(ByteBudget {
            limit,
            used: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// Bytes held now (may exceed the limit by what resized reservations added).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Reserves `bytes`, waiting until they fit under the limit or nothing is held.
    pub async fn reserve(self: &Arc<Self>, bytes: usize) -> Reservation {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release between the check and the wait wakes it.
            freed.as_mut().enable();
            let used = self.used.load(Ordering::Acquire);
            if used == 0 || used.saturating_add(bytes) <= self.limit {
                if self
                    .used
                    .compare_exchange(used, used + bytes, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    return Reservation {
                        budget: self.clone(),
                        bytes,
                    };
                }
                continue;
            }
            freed.await;
        }
    }

    /// Reserves `bytes` if they fit under the limit or nothing is held; never waits.
    pub fn try_reserve(self: &Arc<Self>, bytes: usize) -> Option<Reservation> {
        let mut used = self.used.load(Ordering::Acquire);
        loop {
            if used != 0 && used.saturating_add(bytes) > self.limit {
                return None;
            }
            match self.used.compare_exchange(
                used,
                used + bytes,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    return Some(Reservation {
                        budget: self.clone(),
                        bytes,
                    });
                }
                Err(now) => used = now,
            }
        }
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.used.fetch_sub(bytes, Ordering::AcqRel);
            self.freed.notify_waiters();
        }
    }
}

/// Bytes reserved from a [`ByteBudget`], given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Reservation {
    /// Holds `bytes` instead of what was reserved, at once: more may take the budget past its
    /// limit (later reservations then wait), less gives the difference back.
    pub fn resize(&mut self, bytes: usize) {
        if bytes > self.bytes {
            self.budget
                .used
                .fetch_add(bytes - self.bytes, Ordering::AcqRel);
        } else {
            self.budget.release(self.bytes - bytes);
        }
        self.bytes = bytes;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Takes over `other`'s bytes (of the same budget): one reservation to give back.
    pub fn absorb(&mut self, mut other: Reservation) {
        debug_assert!(Arc::ptr_eq(&self.budget, &other.budget));
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reservations_wait_for_room_and_one_always_passes() {
        let b = ByteBudget::new(100);
        // Larger than the whole budget, but nothing is held: it passes.
        let big = b.reserve(500).await;
        assert_eq!(b.used(), 500);
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.reserve(60).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "reserved past the limit");
        drop(big);
        let mut r = waiting.await.unwrap();
        assert_eq!(b.used(), 60);
        // Resizing never waits: up past the limit, then down.
        r.resize(150);
        assert_eq!(b.used(), 150);
        let blocked = tokio::spawn({
            let b = b.clone();
            async move { b.reserve(1).await }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!blocked.is_finished());
        r.resize(10);
        let one = blocked.await.unwrap();
        assert_eq!((b.used(), one.bytes()), (11, 1));
        drop((r, one));
        assert_eq!(b.used(), 0);
    }
}
