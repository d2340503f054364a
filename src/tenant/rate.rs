//! Per-tenant throughput limits (requests and bytes per second) and the token bucket that
//! enforces them.
//!
//! The limits are replicated (a tenant's settings, changed through the log); the buckets are
//! not: each member keeps its own, for the calls it serves, and refills them from its own clock.
//! A bucket holds at most one second of its rate, so a tenant may burst to one second's worth
//! after a pause and is held to the rate on average.
//!
//! **Invariants**
//! - Over any interval of `t` seconds a bucket admits at most `rate × (1 + t)` units plus the
//!   cost of one call (a call larger than the burst may take the bucket into debt, and then
//!   nothing more is admitted until the debt is repaid).
//! - A refused call takes nothing, and its hint is the time after which the same call would be
//!   admitted if nothing else took from the bucket.
//! - Integer arithmetic only: the same sequence of calls and instants gives the same answers.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The largest rate either limit may be set to (per second): 2^40, about 1.1 T.
pub const RATE_MAX: u64 = 1 << 40;
/// The smallest bytes-per-second limit: lower would refuse an ordinary write for minutes.
pub const BYTES_PER_SEC_MIN: u64 = 1024;

/// A tenant's throughput limits; `None` means unlimited. A tenant has none until they are set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    /// Calls per second (each write, each read, each stream call and each scan counts one).
    pub requests_per_sec: Option<u64>,
    /// Bytes per second: a write's encoded request, a read's encoded answer.
    pub bytes_per_sec: Option<u64>,
}

impl RateLimits {
    /// No limit on either.
    pub const UNLIMITED: RateLimits = RateLimits {
        requests_per_sec: None,
        bytes_per_sec: None,
    };

    pub fn is_unlimited(&self) -> bool {
        *self == Self::UNLIMITED
    }

    /// Checks each limit is within its range: the field at fault and why.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let checks = [
            ("requests_per_sec", self.requests_per_sec, 1),
            ("bytes_per_sec", self.bytes_per_sec, BYTES_PER_SEC_MIN),
        ];
        for (field, v, lo) in checks {
            if let Some(v) = v
                && !(lo..=RATE_MAX).contains(&v)
            {
                return Err((field, format!("{v} outside {lo}..={RATE_MAX}")));
            }
        }
        Ok(())
    }
}

/// Credit is kept in millionths of a unit: a rate of `r` per second adds exactly `r` of them
/// per microsecond.
const SCALE: i128 = 1_000_000;

/// A token bucket: `rate` units per second, holding at most one second's worth.
#[derive(Clone, Debug)]
pub struct Bucket {
    rate: u64,
    /// Millionths of a unit; negative while in debt.
    credit: i128,
    at: Instant,
}

impl Bucket {
    /// A full bucket of `rate` (at least 1) units per second, as of `now`.
    pub fn new(rate: u64, now: Instant) -> Bucket {
        let rate = rate.max(1);
        Bucket {
            rate,
            credit: Self::capacity_of(rate),
            at: now,
        }
    }

    fn capacity_of(rate: u64) -> i128 {
        i128::from(rate) * SCALE
    }

    fn capacity(&self) -> i128 {
        Self::capacity_of(self.rate)
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// Changes the rate, keeping the credit (cut to the new capacity).
    pub fn set_rate(&mut self, rate: u64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(1);
        self.credit = self.credit.min(self.capacity());
    }

    fn refill(&mut self, now: Instant) {
        // An instant before the last one (never from a monotonic clock) adds nothing.
        let elapsed = now.saturating_duration_since(self.at);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let credit = self
            .credit
            .saturating_add(i128::from(micros).saturating_mul(i128::from(self.rate)));
        if credit >= self.capacity() {
            self.credit = self.capacity();
            self.at = self.at.max(now);
        } else {
            // Only whole microseconds are credited: the fraction left over counts next time,
            // so frequent refills lose nothing.
            self.credit = credit;
            self.at += Duration::from_micros(micros);
        }
    }

    /// Whether a call of `cost` units would be admitted at `now`: `Err(wait)` when not. A call
    /// needs the bucket to hold its cost, or, for a cost above one second's worth, to be full.
    pub fn check(&mut self, cost: u64, now: Instant) -> Result<(), Duration> {
        self.refill(now);
        let need = (i128::from(cost) * SCALE).min(self.capacity());
        if self.credit >= need {
            return Ok(());
        }
        // Rounded up, so a retry after the hint is admitted.
        let micros = (need - self.credit + i128::from(self.rate) - 1) / i128::from(self.rate);
        Err(Duration::from_micros(
            u64::try_from(micros).unwrap_or(u64::MAX),
        ))
    }

    /// Takes `cost` units, into debt if the bucket holds less (a read's answer is charged
    /// after it was served).
    pub fn take(&mut self, cost: u64, now: Instant) {
        self.refill(now);
        self.credit = self.credit.saturating_sub(i128::from(cost) * SCALE);
    }

    /// Whether the bucket is full at `now` (it then remembers nothing a fresh one would not).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.credit == self.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> Instant {
        tokio::time::Instant::now().into_std()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_bucket_admits_its_burst_then_its_rate() {
        let t0 = now();
        let mut b = Bucket::new(10, t0);
        for _ in 0..10 {
            b.check(1, t0).unwrap();
            b.take(1, t0);
        }
        // Empty: the 11th call waits a tenth of a second, exactly.
        assert_eq!(b.check(1, t0), Err(ms(100)));
        assert_eq!(b.check(1, t0 + ms(99)), Err(ms(1)));
        b.check(1, t0 + ms(100)).unwrap();
        // Refill stops at one second's worth, however long the pause.
        assert!(b.is_full(t0 + Duration::from_secs(3600)));
        let mut admitted = 0;
        while b.check(1, t0 + Duration::from_secs(3600)).is_ok() {
            b.take(1, t0 + Duration::from_secs(3600));
            admitted += 1;
        }
        assert_eq!(admitted, 10);
    }

    #[test]
    fn a_call_larger_than_the_burst_needs_a_full_bucket_and_leaves_a_debt() {
        let t0 = now();
        let mut b = Bucket::new(1000, t0);
        b.check(5000, t0).unwrap();
        b.take(5000, t0);
        // 4,000 units in debt, plus one unit for the next call: 4.001 s.
        assert_eq!(b.check(1, t0), Err(ms(4001)));
        assert!(b.check(0, t0 + ms(3999)).is_err());
        b.check(0, t0 + ms(4000)).unwrap();
        // A refused check takes nothing.
        assert_eq!(b.check(1, t0 + ms(4000)), Err(ms(1)));
    }

    #[test]
    fn a_new_rate_keeps_the_credit_up_to_the_new_capacity() {
        let t0 = now();
        let mut b = Bucket::new(100, t0);
        b.set_rate(10, t0);
        assert_eq!(b.rate(), 10);
        assert!(b.is_full(t0));
        b.take(10, t0);
        b.set_rate(1000, t0);
        assert_eq!(b.check(1, t0), Err(ms(1)));
        // A zero rate is taken as 1, never a division by zero.
        let mut z = Bucket::new(0, t0);
        z.take(1, t0);
        assert_eq!(z.check(1, t0), Err(ms(1000)));
    }

    #[test]
    fn admitted_units_never_exceed_the_burst_plus_the_rate_over_time() {
        // Calls of varying cost every 7 ms for 10 s against 1,000 units/s.
        let t0 = now();
        let mut b = Bucket::new(1000, t0);
        let mut admitted = 0u64;
        let mut largest = 0u64;
        for i in 0..1430u64 {
            let now = t0 + ms(7 * i);
            let cost = 1 + (i * 37) % 90;
            if b.check(cost, now).is_ok() {
                b.take(cost, now);
                admitted += cost;
                largest = largest.max(cost);
            }
        }
        let secs = 7 * 1429 / 1000;
        assert!(admitted <= 1000 * (1 + secs) + largest, "{admitted}");
        // And the bucket was not needlessly strict: at least 90% of the rate got through.
        assert!(admitted >= 900 * secs, "{admitted}");
    }

    #[test]
    fn refills_at_sub_microsecond_steps_lose_nothing() {
        // 10,000 refills 0.5 µs apart (5 ms) at 1,000,000 units/s: exactly 5,000 units back.
        let t0 = now();
        let mut b = Bucket::new(1_000_000, t0);
        b.take(1_000_000, t0);
        for i in 1..=10_000u64 {
            b.take(0, t0 + Duration::from_nanos(500 * i));
        }
        let end = t0 + Duration::from_millis(5);
        b.check(5_000, end).unwrap();
        assert!(b.check(5_001, end).is_err());
    }

    #[test]
    fn limits_are_checked_against_their_ranges() {
        assert!(RateLimits::UNLIMITED.validate().is_ok());
        assert!(RateLimits::default().is_unlimited());
        let ok = RateLimits {
            requests_per_sec: Some(1),
            bytes_per_sec: Some(BYTES_PER_SEC_MIN),
        };
        assert!(ok.validate().is_ok());
        for (bad, field) in [
            (
                RateLimits {
                    requests_per_sec: Some(0),
                    bytes_per_sec: None,
                },
                "requests_per_sec",
            ),
            (
                RateLimits {
                    requests_per_sec: None,
                    bytes_per_sec: Some(BYTES_PER_SEC_MIN - 1),
                },
                "bytes_per_sec",
            ),
            (
                RateLimits {
                    requests_per_sec: Some(RATE_MAX + 1),
                    bytes_per_sec: None,
                },
                "requests_per_sec",
            ),
        ] {
            assert_eq!(bad.validate().unwrap_err().0, field);
        }
    }
}
