//! Per-tenant throughput limits at the edge ([`Throttle`]): each graph call is charged to the
//! tenant it names, after it was authorized (a caller cannot spend another tenant's rate), in
//! token buckets ([`Bucket`]) sized by the tenant's replicated [`RateLimits`].
//!
//! Where a call is charged:
//! - a write, on the leader only (a follower forwards it uncharged), so one bucket holds the
//!   whole cluster's writes of a tenant: one request and its encoded bytes;
//! - a read, on the member that serves it (after its read index): one request, then its
//!   answer's encoded bytes, which may take the bucket into debt;
//! - a scan, one request when it starts; each page's bytes as it is read, and a scan whose
//!   tenant is in debt waits before its next page instead of failing.
//!
//! **Invariants**
//! - A refused call did nothing: RESOURCE_EXHAUSTED, its message naming the tenant and the
//!   limit, and `grpc-retry-pushback-ms` the wait after which it would be admitted.
//! - A refusal is answered late ([`Pacer`]): no sooner than the call could have been admitted,
//!   and a tenant's refusals no faster than its request rate (one per [`SPACING_DEFAULT`]
//!   without one), each held at most [`HOLD_MAX`]. A client that resends at once whatever the
//!   hint thus gets no more refusals a second than its rate plus its calls in flight, instead
//!   of as many as the member can answer: refusing costs the member, and the tenants it
//!   serves, little more than admitting would. A held call keeps nothing of the request, nor
//!   of the server's in-flight budget; only its HTTP/2 stream, bounded per connection.
//! - Buckets exist only for tenants that exist and have a limit set, and buckets that are full
//!   (which a fresh bucket would equal) are dropped once [`METERS_MAX`] are held, so whatever
//!   names clients send, memory stays bounded.
//!
//! **Caveats**
//! - Reads are metered per serving member: a tenant reading through every member may read up
//!   to members × its rate.
//! - Buckets live in memory: a new leader starts its tenants' write buckets full.
//! - A write is charged when this member leads as it is admitted: at a leadership change a
//!   write in flight may be charged by both the old and the new leader, or by neither.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Status;

use crate::state_machine::GraphReader;
use crate::tenant::{Bucket, RateLimits};
use crate::wire::RETRY_PUSHBACK_HEADER;

/// Buckets held before full ones are dropped.
pub const METERS_MAX: usize = 4096;

/// The longest a refusal is held before it is answered.
pub const HOLD_MAX: Duration = Duration::from_secs(1);

/// The spacing of a tenant's refusals when it has no request rate (a byte rate only).
pub const SPACING_DEFAULT: Duration = Duration::from_millis(1);

/// When a tenant's refusals are answered.
#[derive(Debug, Default)]
struct Pacer {
    /// The earliest the next refusal is answered.
    next: Option<Instant>,
}

impl Pacer {
    /// How long to hold a refusal at `now` of a call that could be admitted after `wait`:
    /// until then, and until `spacing` after the tenant's previous refusal, at most
    /// [`HOLD_MAX`].
    fn hold(&mut self, wait: Duration, spacing: Duration, now: Instant) -> Duration {
        let at = (now + wait).max(self.next.unwrap_or(now));
        let hold = at.saturating_duration_since(now).min(HOLD_MAX);
        self.next = Some(now + hold + spacing);
        hold
    }
}

/// The spacing of refusals for a tenant with `limits`: one per request its rate allows.
fn spacing(limits: &RateLimits) -> Duration {
    match limits.requests_per_sec {
        Some(r) if r > 0 => Duration::from_secs(1) / u32::try_from(r).unwrap_or(u32::MAX),
        _ => SPACING_DEFAULT,
    }
}

/// A call refused for its tenant's rate, not answered yet: [`Refusal::answer`] holds it as
/// its tenant's pacer decided, then makes the answer.
#[derive(Debug)]
#[must_use = "a refusal is answered by awaiting Refusal::answer"]
pub struct Refusal {
    tenant: String,
    limit: String,
    wait: Duration,
    hold: Duration,
}

impl Refusal {
    /// Waits out the hold, then RESOURCE_EXHAUSTED with what is left of the wait as its hint.
    pub async fn answer(self) -> Status {
        tokio::time::sleep(self.hold).await;
        refusal(
            &self.tenant,
            &self.limit,
            self.wait.saturating_sub(self.hold),
        )
    }
}

/// One tenant's buckets.
#[derive(Debug, Default)]
struct Meter {
    requests: Option<Bucket>,
    bytes: Option<Bucket>,
    refusals: Pacer,
}

fn follow(bucket: &mut Option<Bucket>, rate: Option<u64>, now: Instant) {
    match (bucket.as_mut(), rate) {
        (Some(b), Some(r)) if b.rate() != r => b.set_rate(r, now),
        (Some(_), Some(_)) => {}
        (None, Some(r)) => *bucket = Some(Bucket::new(r, now)),
        (_, None) => *bucket = None,
    }
}

impl Meter {
    /// Follows `limits` as they are now (a bucket per limit set, at its rate).
    fn follow(&mut self, limits: &RateLimits, now: Instant) {
        follow(&mut self.requests, limits.requests_per_sec, now);
        follow(&mut self.bytes, limits.bytes_per_sec, now);
    }

    fn is_full(&mut self, now: Instant) -> bool {
        [&mut self.requests, &mut self.bytes]
            .into_iter()
            .flatten()
            .all(|b| b.is_full(now))
    }
}

/// The buckets of one server's tenants.
#[derive(Clone)]
pub struct Throttle {
    reader: GraphReader,
    meters: Arc<Mutex<BTreeMap<String, Meter>>>,
}

impl std::fmt::Debug for Throttle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttle").finish_non_exhaustive()
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Throttle {
    /// Reads each tenant's limits through `reader`.
    pub fn new(reader: GraphReader) -> Self {
        Throttle {
            reader,
            meters: Arc::new(Mutex::new(BTreeMap::new())),
        }
    }

    /// The limits of `tenant` if it has any (a tenant that does not exist, or whose limits
    /// cannot be read, is not metered here: the call fails on its own).
    fn limits(&self, tenant: &str) -> Option<RateLimits> {
        match self.reader.rate_limits(tenant) {
            Ok(Some(l)) if !l.is_unlimited() => Some(l),
            _ => None,
        }
    }

    fn meters(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Meter>> {
        self.meters.lock().expect("rate meters lock poisoned")
    }

    /// Runs `f` on `tenant`'s meter, made or brought up to the tenant's current limits; `None`
    /// (and no meter kept) when the tenant has no limits or does not exist.
    fn with_meter<T>(
        &self,
        tenant: &str,
        f: impl FnOnce(&mut Meter, &RateLimits, Instant) -> T,
    ) -> Option<T> {
        let Some(limits) = self.limits(tenant) else {
            // A tenant deleted, or its limits lifted: a later one of that name starts afresh.
            let mut meters = self.meters();
            if !meters.is_empty() {
                meters.remove(tenant);
            }
            return None;
        };
        let now = now();
        let mut meters = self.meters();
        if meters.len() >= METERS_MAX && !meters.contains_key(tenant) {
            meters.retain(|_, m| !m.is_full(now));
        }
        let m = meters.entry(tenant.to_string()).or_default();
        m.follow(&limits, now);
        Some(f(m, &limits, now))
    }

    /// Admits one call naming `tenant` that brings `bytes` now (a write's encoded request; 0 for
    /// a read, whose answer is [`Throttle::charge`]d after), taking its cost; past either
    /// limit, a [`Refusal`] to be answered, having taken nothing.
    pub fn try_admit(&self, tenant: &str, bytes: u64) -> Result<(), Refusal> {
        self.with_meter(tenant, |m, limits, now| {
            if let Some(refusal) = refused(tenant, m, limits, bytes, now) {
                return Err(refusal);
            }
            if let Some(r) = m.requests.as_mut() {
                r.take(1, now);
            }
            if let Some(d) = m.bytes.as_mut() {
                d.take(bytes, now);
            }
            Ok(())
        })
        .unwrap_or(Ok(()))
    }

    /// [`Throttle::try_admit`], a refusal answered: RESOURCE_EXHAUSTED with a retry hint.
    pub async fn admit(&self, tenant: &str, bytes: u64) -> Result<(), Status> {
        match self.try_admit(tenant, bytes) {
            Ok(()) => Ok(()),
            Err(refusal) => Err(refusal.answer().await),
        }
    }

    /// What [`Throttle::admit`] would answer for a read now, taking nothing: checked before a
    /// read is routed, so a tenant over its rate costs no read index.
    pub async fn precheck(&self, tenant: &str) -> Result<(), Status> {
        let refused = self
            .with_meter(tenant, |m, limits, now| refused(tenant, m, limits, 0, now))
            .flatten();
        match refused {
            Some(refusal) => Err(refusal.answer().await),
            None => Ok(()),
        }
    }

    /// Charges `bytes` (a read's answer) to `tenant`'s bytes bucket, into debt if need be.
    pub fn charge(&self, tenant: &str, bytes: u64) {
        self.with_meter(tenant, |m, _, now| {
            if let Some(b) = m.bytes.as_mut() {
                b.take(bytes, now);
            }
        });
    }

    /// How long `tenant` must wait until it is out of debt on bytes (`None`: it is not).
    pub fn debt(&self, tenant: &str) -> Option<Duration> {
        self.with_meter(tenant, |m, _, now| {
            m.bytes.as_mut().and_then(|b| b.check(0, now).err())
        })
        .flatten()
    }
}

/// Why a call naming `tenant` bringing `bytes` would be refused at `now`: the longest wait
/// among the limits it is past (a retry after it is admitted by all of them), and those
/// limits; its hold taken from the tenant's pacer.
fn refused(
    tenant: &str,
    m: &mut Meter,
    limits: &RateLimits,
    bytes: u64,
    now: Instant,
) -> Option<Refusal> {
    let mut wait = Duration::ZERO;
    let mut past = Vec::new();
    if let Some(Err(w)) = m.requests.as_mut().map(|b| b.check(1, now)) {
        wait = wait.max(w);
        past.push(format!(
            "{} requests/s",
            limits.requests_per_sec.unwrap_or_default()
        ));
    }
    if let Some(Err(w)) = m.bytes.as_mut().map(|b| b.check(bytes, now)) {
        wait = wait.max(w);
        past.push(format!(
            "{} bytes/s",
            limits.bytes_per_sec.unwrap_or_default()
        ));
    }
    if past.is_empty() {
        return None;
    }
    let hold = m.refusals.hold(wait, spacing(limits), now);
    Some(Refusal {
        tenant: tenant.to_string(),
        limit: past.join(" and "),
        wait,
        hold,
    })
}

fn refusal(tenant: &str, limit: &str, wait: Duration) -> Status {
    // Rounded up: a retry after the hint is admitted if nothing else took the rate meanwhile.
    let ms = u64::try_from(wait.as_micros().div_ceil(1000))
        .unwrap_or(u64::MAX)
        .max(1);
    let mut s = Status::resource_exhausted(format!(
        "tenant {tenant}: over its rate limit of {limit}; nothing was done, retry after {ms} ms"
    ));
    s.metadata_mut().insert(
        RETRY_PUSHBACK_HEADER,
        ms.to_string().parse().expect("ASCII digits"),
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Refusals arriving together are answered one per spacing, none before its call could be
    /// admitted, none held past HOLD_MAX; the spacing follows the request rate.
    #[test]
    fn refusals_are_paced_and_bounded() {
        let t0 = now();
        let mut p = Pacer::default();
        let holds: Vec<_> = (0..5).map(|_| p.hold(3 * MS, 100 * MS, t0)).collect();
        assert_eq!(holds, [3, 103, 203, 303, 403].map(|ms| ms * MS));
        // A burst larger than HOLD_MAX's worth: the rest wait HOLD_MAX, and no longer.
        let holds: Vec<_> = (0..20).map(|_| p.hold(MS, 100 * MS, t0)).collect();
        assert!(holds.iter().all(|h| *h <= HOLD_MAX), "{holds:?}");
        assert_eq!(
            holds[..6],
            [503, 603, 703, 803, 903, 1000].map(|ms| ms * MS)
        );
        assert!(holds[6..].iter().all(|h| *h == HOLD_MAX), "{holds:?}");
        // Later, a refusal waits for its own call, and for the spacing after the last one.
        let later = t0 + 10 * HOLD_MAX;
        assert_eq!(p.hold(40 * MS, 100 * MS, later), 40 * MS);
        assert_eq!(p.hold(Duration::ZERO, 100 * MS, later + 50 * MS), 90 * MS);
        // A wait longer than HOLD_MAX (a byte debt) is held HOLD_MAX.
        assert_eq!(p.hold(60 * HOLD_MAX, 100 * MS, later + HOLD_MAX), HOLD_MAX);

        let limits = |r| RateLimits {
            requests_per_sec: r,
            bytes_per_sec: Some(4096),
        };
        assert_eq!(spacing(&limits(Some(4))), 250 * MS);
        assert_eq!(spacing(&limits(Some(1 << 40))), Duration::ZERO);
        assert_eq!(spacing(&limits(None)), SPACING_DEFAULT);
    }
}
