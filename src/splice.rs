//! Zero-copy forwarding with `splice(2)`: socket → pipe → socket, through a
//! bounded, process-wide pool of pipes, for L4 connections and for large
//! HTTP/1 response bodies (`http::body::UpstreamBody::splice_to`). A pipe is
//! leased only while bytes are in flight and goes back to the pool once it
//! is empty, so an idle connection holds no pipe (pipes per connection would
//! double the FDs). Past the bound the caller falls back to copying through
//! userspace. Pooled pipes unused for `IDLE_PIPE_TTL` are closed by `trim`,
//! so FDs return to their baseline when traffic stops.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Capacity requested for each pipe (the kernel may grant less).
const PIPE_SIZE: usize = 1024 * 1024;

/// Pooled pipes unused this long are closed by `trim`.
pub const IDLE_PIPE_TTL: Duration = Duration::from_secs(2);

struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    size: usize,
    last_used: Instant,
}

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());
static EXISTING: AtomicUsize = AtomicUsize::new(0);
/// Bytes that left a pipe for their destination, since start.
static SPLICED: AtomicU64 = AtomicU64::new(0);
static MAX_PIPES: AtomicUsize = AtomicUsize::new(crate::config::DEFAULT_SPLICE_PIPES);

/// Sets the bound on pipes (0 turns splicing off). Called once at start-up.
pub fn set_max_pipes(n: usize) {
    MAX_PIPES.store(n, Ordering::Relaxed);
}

/// Whether connections should try to splice at all.
pub fn enabled() -> bool {
    MAX_PIPES.load(Ordering::Relaxed) > 0
}

fn pool() -> MutexGuard<'static, Vec<Pipe>> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pipes that exist right now (leased + pooled).
pub fn pipes_existing() -> usize {
    EXISTING.load(Ordering::Relaxed)
}

/// Bytes moved through pipes since start (L4 and HTTP).
pub fn bytes_spliced() -> u64 {
    SPLICED.load(Ordering::Relaxed)
}

/// Pipes waiting in the pool.
pub fn pipes_pooled() -> usize {
    pool().len()
}

/// Closes pooled pipes unused for `IDLE_PIPE_TTL`.
pub fn trim() {
    let now = Instant::now();
    let mut closed = 0;
    pool().retain(|p| {
        let keep = now.duration_since(p.last_used) < IDLE_PIPE_TTL;
        closed += usize::from(!keep);
        keep
    });
    EXISTING.fetch_sub(closed, Ordering::Relaxed);
}

/// An empty pipe, leased from the pool. If it is dropped with bytes still in
/// it (the connection ended mid-transfer) it is closed, never pooled.
pub struct Lease {
    pipe: Option<Pipe>,
    in_pipe: usize,
}

impl Lease {
    /// `None` when `MAX_PIPES` exist and none is free, or pipes cannot be made.
    pub fn take() -> Option<Lease> {
        if let Some(pipe) = pool().pop() {
            return Some(Lease {
                pipe: Some(pipe),
                in_pipe: 0,
            });
        }
        if EXISTING.fetch_add(1, Ordering::Relaxed) >= MAX_PIPES.load(Ordering::Relaxed) {
            EXISTING.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        match rustix::pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC) {
            Ok((read, write)) => {
                let size = rustix::pipe::fcntl_setpipe_size(&write, PIPE_SIZE)
                    .or_else(|_| rustix::pipe::fcntl_getpipe_size(&write))
                    .unwrap_or(64 * 1024);
                Some(Lease {
                    pipe: Some(Pipe {
                        read,
                        write,
                        size,
                        last_used: Instant::now(),
                    }),
                    in_pipe: 0,
                })
            }
            Err(_) => {
                EXISTING.fetch_sub(1, Ordering::Relaxed);
                None
            }
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            if self.in_pipe == 0 {
                pipe.last_used = Instant::now();
                pool().push(pipe);
            } else {
                EXISTING.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

const FLAGS: SpliceFlags = SpliceFlags::MOVE.union(SpliceFlags::NONBLOCK);

impl Lease {
    /// Bytes waiting in the pipe.
    pub fn in_pipe(&self) -> usize {
        self.in_pipe
    }

    /// Splices what `src` has ready, at most `max` bytes, into the (empty)
    /// pipe. `Ok(0)` is EOF; `WouldBlock` means the socket has nothing (the
    /// pipe cannot be full).
    pub fn fill(&mut self, src: &TcpStream, max: usize) -> io::Result<usize> {
        let Some(pipe) = self.pipe.as_ref() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        debug_assert_eq!(self.in_pipe, 0);
        let n = src.try_io(Interest::READABLE, || {
            rustix::pipe::splice(src, None, &pipe.write, None, pipe.size.min(max), FLAGS)
                .map_err(errno)
        })?;
        self.in_pipe = n;
        Ok(n)
    }

    /// Splices bytes from the pipe into `dst`; `WouldBlock` when `dst` is full.
    pub fn flush(&mut self, dst: &TcpStream) -> io::Result<usize> {
        let Some(pipe) = self.pipe.as_ref() else {
            return Err(io::ErrorKind::NotConnected.into());
        };
        let pending = self.in_pipe;
        let n = dst.try_io(Interest::WRITABLE, || {
            rustix::pipe::splice(&pipe.read, None, dst, None, pending, FLAGS).map_err(errno)
        })?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        self.in_pipe -= n;
        SPLICED.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}
