//! openraft's async runtime: tokio, with openraft's randomness (election timeouts, the first
//! tick) drawn from a seed when a server is started with one.
//!
//! The seed lives in a task-local set around `Raft::new`; every task openraft spawns from
//! there derives its own seed from its parent's, so a member's random choices depend only on its
//! seed and the order of its own events — what the deterministic simulation needs. Code that
//! runs outside such a scope (a production server started without a seed, or openraft tasks
//! spawned from a gRPC handler, which draw no randomness) falls back to the OS generator and
//! counts the draw in [`unseeded_draws`], which the simulation requires to stay zero.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use openraft::OptionalSend;
use openraft::rt::AsyncRuntime;
use openraft_rt_tokio::TokioRuntime;
use rand_openraft::SeedableRng;
use rand_openraft::rngs::SmallRng;

tokio::task_local! {
    static SEED: Cell<u64>;
}

/// SplitMix64: a bijective mixer; two different gammas give independent sequences.
fn splitmix64(seed: u64, gamma: u64) -> u64 {
    let z = seed.wrapping_add(gamma);
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The current task's seed, advanced; `None` outside a seeded scope.
fn take_seed() -> Option<u64> {
    SEED.try_with(|c| {
        let s = c.get();
        c.set(splitmix64(s, 0x6a09_e667_f3bc_c908));
        s
    })
    .ok()
}

/// Draws of openraft's randomness that came from the OS generator, in this process.
static UNSEEDED_DRAWS: AtomicU64 = AtomicU64::new(0);

/// How many times openraft drew randomness outside a seeded scope in this process: always
/// some in production; the simulation checks it stays zero, since an OS draw cannot be
/// replayed.
pub fn unseeded_draws() -> u64 {
    UNSEEDED_DRAWS.load(Ordering::Relaxed)
}

/// Runs `f` with openraft's randomness seeded by `seed` (see the module docs).
pub fn seeded<F: Future>(seed: u64, f: F) -> impl Future<Output = F::Output> {
    SEED.scope(Cell::new(seed), f)
}

/// tokio with seedable randomness; raftgraph's `TypeConfig::AsyncRuntime`.
#[derive(Debug)]
pub struct SeededTokio {
    inner: TokioRuntime,
}

impl AsyncRuntime for SeededTokio {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> =
        <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = SmallRng;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        match take_seed() {
            Some(s) => {
                tokio::spawn(SEED.scope(Cell::new(splitmix64(s, 0x9e37_79b9_7f4a_7c15)), future))
            }
            None => tokio::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        match take_seed() {
            Some(s) => SmallRng::seed_from_u64(s),
            None => {
                UNSEEDED_DRAWS.fetch_add(1, Ordering::Relaxed);
                rand_openraft::make_rng()
            }
        }
    }

    type Mpsc = <TokioRuntime as AsyncRuntime>::Mpsc;
    type Watch = <TokioRuntime as AsyncRuntime>::Watch;
    type Oneshot = <TokioRuntime as AsyncRuntime>::Oneshot;
    type Mutex<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::Mutex<T>;

    fn new(threads: usize) -> Self {
        SeededTokio {
            inner: TokioRuntime::new(threads),
        }
    }

    fn block_on<F, T>(&mut self, future: F) -> T
    where
        F: Future<Output = T>,
    {
        self.inner.block_on(future)
    }

    fn spawn_blocking<F, T>(f: F) -> impl Future<Output = Result<T, io::Error>> + Send
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        TokioRuntime::spawn_blocking(f)
    }
}
