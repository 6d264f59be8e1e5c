//! Watching an upstream socket for the upstream ending its side while a
//! response waits on a client that takes nothing (`EndWatch`).

use std::os::fd::{AsFd, OwnedFd};
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;

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
