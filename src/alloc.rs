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

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicU64, Ordering};

use libmimalloc_sys as mi;

#[global_allocator]
static ALLOCATOR: Mimalloc = Mimalloc;

/// mimalloc, called the way its C users call it. (The `mimalloc` crate
/// asks for every block through the aligned entry points; mimalloc v3
/// serves blocks over 1 KiB through those by over-allocating, which costs
/// a slow path per allocation and makes frees of that page slower: the
/// request path's larger blocks, its futures and buffers, are over 1 KiB.)
struct Mimalloc;

/// Every mimalloc block is aligned to a word: its size classes are word
/// multiples, laid out from aligned page starts.
const WORD_ALIGN: usize = std::mem::align_of::<usize>();

// SAFETY: the four methods hand their arguments to mimalloc's matching
// functions, which meet `GlobalAlloc`'s contract: a block of at least
// `layout.size()` bytes at the requested alignment (the plain functions
// only where a word's alignment is all that is asked), or null; `mi_free`
// takes any block they returned, aligned or not.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: see the impl.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: see the impl; `ptr` came from one of the functions above.
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: see the impl; `ptr` came from one of the functions above.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
            }
        }
    }
}

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

#[allow(unsafe_code)]
fn collect() {
    COLLECTED_AT.with(|c| c.set(RELEASE_EPOCH.load(Ordering::Relaxed)));
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

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::Mimalloc;

    /// Blocks come back at the asked alignment, across the plain and the
    /// aligned paths and the size classes, and keep their bytes when grown.
    #[test]
    #[allow(unsafe_code)]
    fn blocks_are_aligned_and_reallocation_keeps_their_bytes() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 7, 8, 24, 40, 100, 1000, 1488, 2376, 5000, 70_000] {
                let Ok(layout) = Layout::from_size_align(size, align) else {
                    continue;
                };
                // SAFETY: a non-zero size; every block is freed with its layout.
                unsafe {
                    let p = Mimalloc.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    std::ptr::write_bytes(p, 0xa5, size);
                    let q = Mimalloc.realloc(p, layout, size * 3);
                    assert!(!q.is_null());
                    assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                    assert!(
                        std::slice::from_raw_parts(q, size)
                            .iter()
                            .all(|&b| b == 0xa5)
                    );
                    Mimalloc.dealloc(q, Layout::from_size_align_unchecked(size * 3, align));
                    let z = Mimalloc.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    Mimalloc.dealloc(z, layout);
                }
            }
        }
    }
}
