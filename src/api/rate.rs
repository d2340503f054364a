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

/// One tenant's buckets.
#[derive(Debug, Default)]
struct Meter {
    requests: Option<Bucket>,
    bytes: Option<Bucket>,
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
    /// a read, whose answer is [`Throttle::charge`]d after), taking its cost; RESOURCE_EXHAUSTED
    /// with a retry hint, having taken nothing, past either limit.
    pub fn admit(&self, tenant: &str, bytes: u64) -> Result<(), Status> {
        self.with_meter(tenant, |m, limits, now| {
            if let Some((wait, limit)) = refused(m, limits, bytes, now) {
                return Err(refusal(tenant, &limit, wait));
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

    /// What [`Throttle::admit`] would answer for a read now, taking nothing: checked before a
    /// read is routed, so a tenant over its rate costs no read index.
    pub fn precheck(&self, tenant: &str) -> Result<(), Status> {
        self.with_meter(tenant, |m, limits, now| match refused(m, limits, 0, now) {
            Some((wait, limit)) => Err(refusal(tenant, &limit, wait)),
            None => Ok(()),
        })
        .unwrap_or(Ok(()))
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

/// Why a call bringing `bytes` would be refused at `now`: the longest wait among the limits it
/// is past (a retry after it is admitted by all of them), and those limits.
fn refused(
    m: &mut Meter,
    limits: &RateLimits,
    bytes: u64,
    now: Instant,
) -> Option<(Duration, String)> {
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
    (!past.is_empty()).then(|| (wait, past.join(" and ")))
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
