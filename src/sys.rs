//! The one place with `unsafe` code, each use a thin, safe wrapper over
//! a foreign interface whose contract it keeps by itself:
//! - `Mimalloc`: the global allocator, mimalloc's entry points;
//! - `purge_thread_heap`: mimalloc's collection of the calling thread's heap;
//! - `register_fd`: an epoll set registered with tokio's reactor;
//! - `send_all`: non-blocking sends through io_uring, owning their bytes
//!   until the kernel is done with them.
//!
//! Everything else in the crate is `unsafe`-free (`unsafe_code = "deny"`).
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;
use std::os::fd::OwnedFd;
#[cfg(feature = "send-batch")]
use std::os::fd::RawFd;
use std::sync::Arc;

#[cfg(feature = "send-batch")]
use io_uring::{IoUring, opcode, types};
use libmimalloc_sys as mi;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// mimalloc, called the way its C users call it. (The `mimalloc` crate
/// asks for every block through the aligned entry points; mimalloc v3
/// serves blocks over 1 KiB through those by over-allocating, which costs
/// a slow path per allocation and makes frees of that page slower: the
/// request path's larger blocks, its futures and buffers, are over 1 KiB.)
pub struct Mimalloc;

/// Every mimalloc block is aligned to a word: its size classes are word
/// multiples, laid out from aligned page starts.
const WORD_ALIGN: usize = std::mem::align_of::<usize>();

// SAFETY: the four methods hand their arguments to mimalloc's matching
// functions, which meet `GlobalAlloc`'s contract: a block of at least
// `layout.size()` bytes at the requested alignment (the plain functions
// only where a word's alignment is all that is asked), or null; `mi_free`
// takes any block they returned, aligned or not.
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

/// Returns the calling thread's free pages to the system (`mi_collect(true)`).
pub fn purge_thread_heap() {
    // SAFETY: `mi_collect` has no preconditions; it walks the calling
    // thread's heap (and abandoned ones) and purges its free pages.
    unsafe { mi::mi_collect(true) }
}

/// An epoll set registered with tokio's reactor, readable when it has events.
pub fn register_fd(fd: Arc<OwnedFd>) -> std::io::Result<AsyncFd<Arc<OwnedFd>>> {
    // SAFETY: the `AsyncFd` owns an `Arc` of the `OwnedFd`, so the
    // descriptor stays open, and the same, for the `AsyncFd`'s whole life.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(Into::into)
}

/// A descriptor of our own (a duplicate of a socket, to watch it apart
/// from the registration it is read with) registered with tokio's reactor
/// for readability.
pub fn register_owned_fd(fd: OwnedFd) -> std::io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns the `OwnedFd`, so the descriptor stays
    // open, and the same, for the `AsyncFd`'s whole life.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(Into::into)
}

/// What became of one send of `send_all`.
#[cfg(feature = "send-batch")]
pub enum RingSend {
    /// Nothing was asked (the input was `None`).
    Skipped,
    /// The submission queue had no room: not sent, the bytes come back.
    NotQueued(Vec<u8>),
    /// The kernel's answer: bytes written, or a negated errno.
    Done { bytes: Vec<u8>, result: i32 },
    /// Submitted but not completed within the submission (non-blocking
    /// sends always complete in it): its bytes are leaked, as the kernel
    /// may still read them, and the ring must not be used again.
    Lost,
}

/// Sends each `(fd, bytes)` with `MSG_DONTWAIT | MSG_NOSIGNAL` in one
/// `io_uring_enter`, and returns what became of each, in order. The bytes
/// are owned here until their send has completed (or leaked, `Lost`), so
/// no buffer can be freed while the kernel may read it. The caller keeps
/// each `fd` open for the call (the socket's owner is alive).
#[cfg(feature = "send-batch")]
pub fn send_all(ring: &mut IoUring, sends: Vec<Option<(RawFd, Vec<u8>)>>) -> Vec<RingSend> {
    let mut out: Vec<RingSend> = Vec::with_capacity(sends.len());
    let mut pushed = 0usize;
    for (i, send) in sends.into_iter().enumerate() {
        let Some((fd, bytes)) = send else {
            out.push(RingSend::Skipped);
            continue;
        };
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let sqe = opcode::Send::new(types::Fd(fd), bytes.as_ptr(), len)
            .flags(libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
            .build()
            .user_data(i as u64);
        // SAFETY: the buffer is kept in `out` (a `Vec`'s heap bytes do not
        // move with it) until its entry has completed, or is leaked below
        // if it has not.
        let queued = unsafe { ring.submission().push(&sqe).is_ok() };
        if queued {
            pushed += 1;
            out.push(RingSend::Done {
                bytes,
                result: i32::MIN,
            });
        } else {
            out.push(RingSend::NotQueued(bytes));
        }
    }
    if pushed == 0 {
        return out;
    }
    // (A failed submission leaves sends without completions: `Lost`.)
    let _ = ring.submit();
    for cqe in ring.completion() {
        let i = usize::try_from(cqe.user_data()).unwrap_or(usize::MAX);
        if let Some(RingSend::Done { result, .. }) = out.get_mut(i) {
            *result = cqe.result();
        }
    }
    // (`i32::MIN` marks a send without its completion: no errno is that.)
    for send in &mut out {
        if matches!(send, RingSend::Done { result, .. } if *result == i32::MIN) {
            if let RingSend::Done { bytes, .. } = std::mem::replace(send, RingSend::Lost) {
                std::mem::forget(bytes);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout};

    use super::Mimalloc;

    /// Blocks come back at the asked alignment, across the plain and the
    /// aligned paths and the size classes, and keep their bytes when grown.
    #[test]
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
