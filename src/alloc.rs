//! The process allocator. Small, short-lived allocations dominate the
//! request path (heads, header maps, boxed bodies), and mimalloc serves them
//! several times cheaper than glibc's allocator. It returns freed pages to
//! the system lazily, during later allocator calls; an idle process makes
//! none, so housekeeping asks for it when the process has just gone quiet
//! (connections parked since the last look, few active): memory freed when
//! connections go idle (their tasks, their buffers) leaves the RSS.

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
