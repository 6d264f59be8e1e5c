//! The client-side stream wrapper shared by HTTP and TLS connections: it
//! replays bytes already read (after a PROXY header, or a ClientHello read
//! for routing) before reading from the socket, and counts every byte each
//! way into the connection's table entry (the idle backstop reads those).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::conn::ConnEntry;

/// A stream that yields `prefix` before reading from `inner`.
pub struct Prefixed<S> {
    /// Counts bytes each way into the connection's table entry.
    entry: Arc<ConnEntry>,
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            self.entry.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.entry.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<S> Prefixed<S> {
    pub fn new(inner: S, prefix: Vec<u8>, entry: Arc<ConnEntry>) -> Prefixed<S> {
        Prefixed {
            entry,
            prefix,
            pos: 0,
            inner,
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The stream underneath (bytes still to replay are dropped: callers
    /// check `has_prefix` first).
    pub fn into_inner(self) -> S {
        self.inner
    }

    /// Bytes read earlier are still waiting to be replayed.
    pub fn has_prefix(&self) -> bool {
        self.pos < self.prefix.len()
    }

    /// Bytes written to the stream underneath without passing through
    /// this wrapper (spliced): counted like the ones that did.
    pub fn count_down(&self, n: u64) {
        self.entry.bytes_down.fetch_add(n, Ordering::Relaxed);
    }

    fn count_written(&self, r: &Poll<io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = r {
            self.entry
                .bytes_down
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count_written(&r);
        r
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count_written(&r);
        r
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
