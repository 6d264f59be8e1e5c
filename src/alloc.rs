//! The process allocator. Small, short-lived allocations dominate the
//! request path (heads, header maps, boxed bodies), and mimalloc serves them
//! several times cheaper than glibc's allocator. It returns freed pages to
//! the system lazily, during later allocator calls; an idle process makes
//! none, so each runtime worker asks for it when it idles, at most once a
//! second (`on_worker_idle`): memory freed when connections go idle (their
//! tasks, their buffers) leaves the RSS.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::cell::Cell;
use std::time::{Duration, Instant};

/// For the runtime's thread-park hook: releases this thread's free pages
/// when the last release was a second ago or more.
pub fn on_worker_idle() {
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| {
        let due = last
            .get()
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1));
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        release_free_pages();
    }
}

/// mimalloc's `mi_option_purge_delay` (the binding names no constant for it).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Call once at start-up: free pages become returnable after 100 ms (1 s
/// by default), so the idle-time release finds them soon after connections
/// go idle, while pages freed and reused under load are not churned.
#[allow(unsafe_code)]
pub fn configure() {
    // SAFETY: setting an option has no preconditions.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 100) }
}

/// Returns pages that are free, but still held, to the system.
#[allow(unsafe_code)]
pub fn release_free_pages() {
    // SAFETY: `mi_collect` has no preconditions; it walks the calling
    // thread's heap (and abandoned ones) and purges free pages (`true`:
    // all of them now, not only those past the purge delay).
    unsafe { libmimalloc_sys::mi_collect(true) }
}
