//! What the services take from outside, injected so the simulation can supply its own: the time
//! and randomness.

use std::sync::Arc;

/// Wall-clock microseconds since the Unix epoch (entries' timestamps, token expiry).
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Fills a buffer with random bytes: tokens are made from it.
pub type Random = Arc<dyn Fn(&mut [u8]) + Send + Sync>;

/// The operating system's generator.
pub fn os_random() -> Random {
    Arc::new(|buf: &mut [u8]| {
        use rand::TryRngCore;
        rand::rngs::OsRng
            .try_fill_bytes(buf)
            .expect("the operating system's random generator failed");
    })
}
