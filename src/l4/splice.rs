//! Zero-copy forwarding with `splice(2)`: socket → pipe → socket, through a
//! bounded, process-wide pool of pipes. A pipe is leased only while bytes are
//! in flight and goes back to the pool once it is empty, so an idle
//! connection holds no pipe (pipes per connection would double the FDs).
//! Past the bound the caller falls back to copying through userspace. Pooled
//! pipes unused for `IDLE_PIPE_TTL` are closed by `trim`, so FDs return to
//! their baseline when traffic stops.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Capacity requested for each pipe (the kernel may grant less).
const PIPE_SIZE: usize = 256 * 1024;
/// Pipes in existence at once, leased or pooled (each holds two FDs).
const MAX_PIPES: usize = 1024;
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

fn pool() -> MutexGuard<'static, Vec<Pipe>> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Pipes that exist right now (leased + pooled).
pub fn pipes_existing() -> usize {
    EXISTING.load(Ordering::Relaxed)
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
        if EXISTING.fetch_add(1, Ordering::Relaxed) >= MAX_PIPES {
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

/// How a splice burst ended.
pub enum Burst {
    /// The source has no more bytes for now.
    Drained,
    /// The source sent EOF (all earlier bytes were delivered).
    Eof,
    ReadFailed,
    WriteFailed,
}

/// Moves bytes from `src` to `dst` until `src` has none ready, calling
/// `moved(n)` after each delivered chunk. The lease's pipe is empty again
/// whenever this returns `Drained` or `Eof`.
pub async fn burst(
    lease: &mut Lease,
    src: &TcpStream,
    dst: &TcpStream,
    mut moved: impl FnMut(usize),
) -> Burst {
    let Some(pipe) = lease.pipe.as_ref() else {
        return Burst::ReadFailed;
    };
    let (pipe_r, pipe_w, size) = (&pipe.read, &pipe.write, pipe.size);
    loop {
        // The pipe is empty here, so EAGAIN can only mean the socket is.
        let filled = src.try_io(Interest::READABLE, || {
            rustix::pipe::splice(src, None, pipe_w, None, size, FLAGS).map_err(errno)
        });
        let n = match filled {
            Ok(0) => return Burst::Eof,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Burst::Drained,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return Burst::ReadFailed,
        };
        lease.in_pipe = n;
        while lease.in_pipe > 0 {
            let pending = lease.in_pipe;
            let sent = dst.try_io(Interest::WRITABLE, || {
                rustix::pipe::splice(pipe_r, None, dst, None, pending, FLAGS).map_err(errno)
            });
            match sent {
                Ok(0) => return Burst::WriteFailed,
                Ok(m) => {
                    lease.in_pipe -= m;
                    moved(m);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if dst.writable().await.is_err() {
                        return Burst::WriteFailed;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Burst::WriteFailed,
            }
        }
    }
}
