//! The socket of an upstream connection hyper's client drives, shared: the
//! connection's I/O reads and writes it through an `Arc`, and the pool keeps
//! a `Weak` to it (`Sender::H1`), so that a response stalled on its client
//! can watch the socket for the upstream ending its side
//! (`EndWatch`), as our own client's connections are watched. The socket
//! closes when hyper drops its I/O, whatever the `Weak`s.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Most bytes one read takes (and zeroes first: the buffer hyper lends
/// may be uninitialized).
const READ_MAX: usize = 64 * 1024;

pub struct SharedIo(Arc<TcpStream>);

impl SharedIo {
    /// The I/O for hyper, and the pool's handle on its socket.
    pub fn new(stream: TcpStream) -> (SharedIo, Weak<TcpStream>) {
        let shared = Arc::new(stream);
        let weak = Arc::downgrade(&shared);
        (SharedIo(shared), weak)
    }

    /// The socket alone again (an upgraded connection handed to the pump);
    /// `None` while a watch holds it for a moment.
    pub fn into_stream(self) -> Option<TcpStream> {
        Arc::try_unwrap(self.0).ok()
    }
}

impl AsyncRead for SharedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            let n = buf.remaining().min(READ_MAX);
            let dst = buf.initialize_unfilled_to(n);
            match self.0.try_read(dst) {
                Ok(read) => {
                    buf.advance(read);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write(data) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match self.0.try_write_vectored(bufs) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

/// Watches an upstream socket for the upstream ending its side (FIN or
/// reset) while nothing reads it: a second registration of the socket (a
/// duplicated descriptor), whose readiness can be cleared without touching
/// the one the connection is read with. Made at the first poll; dropped
/// (`clear`) when the watch is no longer needed.
#[derive(Default)]
pub struct EndWatch(Option<Box<AsyncFd<OwnedFd>>>);

impl EndWatch {
    /// Ready once the upstream has ended its side. Pending when the socket
    /// cannot be watched (no descriptor to spare).
    pub fn poll_ended(&mut self, cx: &mut Context<'_>, socket: &TcpStream) -> Poll<()> {
        if self.0.is_none() {
            match socket
                .as_fd()
                .try_clone_to_owned()
                .and_then(crate::sys::register_owned_fd)
            {
                Ok(w) => self.0 = Some(Box::new(w)),
                Err(_) => return Poll::Pending,
            }
        }
        let Some(watch) = self.0.as_ref() else {
            return Poll::Pending;
        };
        // (An error on the registration ends the watch as the upstream's end would.)
        while let Ok(mut ready) = ready!(watch.poll_read_ready(cx)) {
            let r = ready.ready();
            if r.is_read_closed() || r.is_error() {
                break;
            }
            // Bytes arrived, nothing more: wait for the next event.
            ready.clear_ready();
        }
        self.0 = None;
        Poll::Ready(())
    }

    pub fn clear(&mut self) {
        self.0 = None;
    }
}
