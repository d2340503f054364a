//! Random bytes as WAL files: opening never panics, never returns anything but a prefix of what
//! was written, and allocates no more than the record limit (plus fixed-size scan buffers) for any
//! single allocation — checked with a counting global allocator.

mod helpers;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use helpers::wal_log::*;
use raftgraph::wal::MemFs;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Tracks the largest single allocation since the last reset.
struct Counting;
static LARGEST: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const RECORD_MAX: u32 = 4096;
/// The record limit plus the 64 KiB window recovery scans with, plus slack for bookkeeping.
const ALLOC_BOUND: usize = RECORD_MAX as usize + 64 * 1024 + 4096;

#[tokio::test(flavor = "current_thread")]
async fn random_and_mutated_segment_files_never_panic_and_allocate_within_bounds() {
    let mut c = cfg(2048);
    c.record_bytes_max = RECORD_MAX;
    c.cache_bytes_max = 0;
    for seed in 0..400u64 {
        let mut rng = SmallRng::seed_from_u64(seed);
        let fs = MemFs::new();
        let mut wal = open(&fs, &c).await.unwrap();
        let mut written = Vec::new();
        for i in 0..rng.random_range(1..40u64) {
            written.push(key(&ent(1, i)));
            append_acked(&mut wal, vec![ent(1, i)]).await.unwrap();
        }
        drop(wal);
        let paths = fs.paths();
        let victim = paths[rng.random_range(0..paths.len())].clone();
        let mut bytes = fs.read_file(&victim).unwrap();
        match seed % 3 {
            // Flip a few random bytes anywhere.
            0 => {
                for _ in 0..rng.random_range(1..6) {
                    if !bytes.is_empty() {
                        let at = rng.random_range(0..bytes.len());
                        bytes[at] = rng.random();
                    }
                }
            }
            // Keep the header, replace the rest with up to 1 MiB of random bytes (huge lengths).
            1 => {
                let keep = bytes.len().min(24);
                bytes.truncate(keep);
                let extra = rng.random_range(0..(1 << 20));
                bytes.extend((0..extra).map(|_| rng.random::<u8>()));
            }
            // Entirely random bytes.
            _ => {
                bytes = (0..rng.random_range(0..200_000))
                    .map(|_| rng.random::<u8>())
                    .collect()
            }
        }
        fs.write_file_durable(&victim, bytes);

        LARGEST.store(0, Ordering::Relaxed);
        let opened = open(&fs, &c).await;
        let largest = LARGEST.load(Ordering::Relaxed);
        assert!(
            largest <= ALLOC_BOUND,
            "seed {seed}: an allocation of {largest} bytes during open"
        );
        if let Ok(mut wal) = opened {
            assert_prefix(
                &read_all(&mut wal).await,
                &written,
                0,
                &format!("seed {seed}"),
            );
        }
    }
}
