//! The process allocator. Small, short-lived allocations dominate the
//! request path (heads, header maps, boxed bodies), and mimalloc serves them
//! several times cheaper than glibc's allocator. It returns freed pages to
//! the system lazily, during later allocator calls; an idle process makes
//! none, so housekeeping asks for it when the process has just gone quiet
//! (connections parked since the last look, few active): memory freed when
//! connections go idle (their tasks, their buffers) leaves the RSS.
//! Transparent huge pages are turned off for the process: a 2 MiB page
//! stays whole while any of its bytes is used, so a few hundred bytes per
//! idle connection spread over the heap would pin megabytes (Redis and
//! others ask the same of the system for the same reason).

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys::Mimalloc;

#[global_allocator]
static ALLOCATOR: Mimalloc = Mimalloc;

/// Asks every worker to return its free pages to the system, and does so
/// for the calling thread now. Called when the process has just gone
/// quiet (connections parked, or a flood's connections ended): under load
/// it would purge pages that are reused at once. mimalloc's heaps are per
/// thread and a thread can only collect its own, so each worker does it in
/// `on_worker_park`, the next time it runs out of work.
pub fn release_free_pages() {
    RELEASE_EPOCH.fetch_add(1, Ordering::Relaxed);
    collect();
}

/// Bumped by each `release_free_pages`.
static RELEASE_EPOCH: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The epoch this thread last collected at.
    static COLLECTED_AT: Cell<u64> = const { Cell::new(0) };
}

/// The runtime's park hook: a worker about to wait for work collects its
/// heap once per `release_free_pages` (an atomic load otherwise).
pub fn on_worker_park() {
    let epoch = RELEASE_EPOCH.load(Ordering::Relaxed);
    if COLLECTED_AT.with(Cell::get) != epoch {
        collect();
    }
}

fn collect() {
    COLLECTED_AT.with(|c| c.set(RELEASE_EPOCH.load(Ordering::Relaxed)));
    crate::sys::purge_thread_heap();
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`);
/// called first thing, before the heap grows.
pub fn disable_huge_pages() {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // Only the memory figure suffers; say so once.
        eprintln!("gatehouse: cannot turn transparent huge pages off: {e}");
    }
}
