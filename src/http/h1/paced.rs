//! The send deadline toward an HTTP/1 client: a stream wrapper whose
//! writes must make progress. A write (or flush) that stays pending for
//! the listener's `send_timeout` after the last one that moved bytes fails
//! with `TimedOut`, which the connection loop turns into
//! `client_send_timeout`. The timer is armed only when a write finds the
//! socket full, so a client that reads costs no timer at all.
//! A stall that lasts `WATCH_UPSTREAM_AFTER` is reported (`stalled_long`),
//! so that the writer can start watching its upstream meanwhile.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Buf;
use tokio::io::AsyncWrite;
use tokio::time::{Instant, Sleep};

use crate::http::body::{Body, WATCH_UPSTREAM_AFTER};

pub struct Paced<'a, S> {
    io: &'a mut S,
    limit: Duration,
    /// Allocated at the first write that finds the socket full.
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer runs: no write has moved bytes since it was set.
    armed: bool,
    /// When the stall began, while `armed`.
    since: Instant,
}

impl<'a, S: AsyncWrite + Unpin> Paced<'a, S> {
    pub fn new(io: &'a mut S, limit: Duration) -> Paced<'a, S> {
        Paced {
            io,
            limit,
            timer: None,
            armed: false,
            since: Instant::now(),
        }
    }

    /// No write has moved bytes for `WATCH_UPSTREAM_AFTER` (and the send
    /// deadline has not passed yet).
    pub fn stalled_long(&self) -> bool {
        self.armed && self.since.elapsed() >= WATCH_UPSTREAM_AFTER
    }

    pub fn get_ref(&self) -> &S {
        self.io
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }

    /// The write is pending: arm the deadline if it is not running, and
    /// fail once it passes.
    fn stalled(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let now = Instant::now();
        if !self.armed {
            self.since = now;
        }
        let deadline = self.since + self.limit;
        // The timer wakes first when the stall turns long (`stalled_long`),
        // then at the deadline.
        let checkpoint = (self.since + WATCH_UPSTREAM_AFTER).min(deadline);
        let timer = match &mut self.timer {
            Some(t) => {
                if !self.armed {
                    t.as_mut().reset(checkpoint);
                }
                t
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(checkpoint))),
        };
        self.armed = true;
        ready!(timer.as_mut().poll(cx));
        if Instant::now() < deadline {
            timer.as_mut().reset(deadline);
            ready!(timer.as_mut().poll(cx));
        }
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "client send timeout",
        ))
    }

    /// Writes and flushes all of `out`. While the client has taken nothing
    /// for `WATCH_UPSTREAM_AFTER`, the upstream connection `body` reads
    /// from is watched: if the upstream ends its side meanwhile, the
    /// connection gives up its pool slot at once (`Body::poll_upstream_ended`),
    /// and its bytes still go to the client.
    pub async fn write_all_watching(
        &mut self,
        body: &mut Body,
        out: &mut impl Buf,
    ) -> io::Result<()>
    where
        S: AsyncWrite + Unpin,
    {
        let mut watched = false;
        let mut flushed = false;
        let r = poll_fn(|cx| {
            let r = self.poll_write_all(cx, out, &mut flushed);
            if r.is_pending() && self.stalled_long() {
                watched = true;
                let _ = body.poll_upstream_ended(cx);
            }
            r
        })
        .await;
        if watched {
            body.unwatch();
        }
        r
    }

    fn poll_write_all(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut impl Buf,
        flushed: &mut bool,
    ) -> Poll<io::Result<()>>
    where
        S: AsyncWrite + Unpin,
    {
        while out.has_remaining() {
            let n = if self.io.is_write_vectored() {
                let mut slices = [io::IoSlice::new(&[]); 4];
                let count = out.chunks_vectored(&mut slices);
                ready!(Pin::new(&mut *self).poll_write_vectored(cx, &slices[..count]))?
            } else {
                ready!(Pin::new(&mut *self).poll_write(cx, out.chunk()))?
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            out.advance(n);
        }
        if !*flushed {
            ready!(Pin::new(&mut *self).poll_flush(cx))?;
            *flushed = true;
        }
        Poll::Ready(Ok(()))
    }

    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.stalled(cx).map(Err),
            done => {
                self.armed = false;
                done
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Paced<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.io).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut *self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut *self.io).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut *self.io).poll_shutdown(cx);
        self.watch(cx, r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A reader that stops reading makes the writer fail after the limit;
    /// one that reads keeps it going however long the whole write takes.
    #[tokio::test(start_paused = true)]
    async fn fails_only_without_progress() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let limit = Duration::from_secs(10);
        let mut w = Paced::new(&mut a, limit);
        let data = vec![7u8; 64 * 1024];
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; 64 * 1024];
            for chunk in got.chunks_mut(512) {
                // Slower than the limit in total, never stalled for it.
                tokio::time::sleep(Duration::from_secs(1)).await;
                b.read_exact(chunk).await.unwrap();
            }
            b
        });
        w.write_all(&data).await.unwrap();
        let _b = reader.await.unwrap();
        // Now nobody reads: the next write stalls and fails at the limit.
        let started = Instant::now();
        let err = w.write_all(&data).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= limit);
        assert!(started.elapsed() < limit + Duration::from_secs(1));
    }
}
