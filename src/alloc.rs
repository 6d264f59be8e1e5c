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

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Returns free pages to the system now (`mi_collect(true)`). Called when
/// the process has just gone quiet (connections parked, few active): under
/// load it would purge pages that are reused at once.
#[allow(unsafe_code)]
pub fn release_free_pages() {
    // SAFETY: `mi_collect` has no preconditions; it walks the calling
    // thread's heap (and abandoned ones) and purges its free pages.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

/// Turns transparent huge pages off for this process (`PR_SET_THP_DISABLE`);
/// called first thing, before the heap grows.
pub fn disable_huge_pages() {
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        // Only the memory figure suffers; say so once.
        eprintln!("gatehouse: cannot turn transparent huge pages off: {e}");
    }
}
