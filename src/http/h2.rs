//! hyper's HTTP/2 server on one client connection, with the connection's
//! streams run inside the connection's own task: hyper hands each stream
//! (its request's handler and the response being sent) to its executor,
//! and ours keeps them in a set that the connection's future polls along
//! with the connection itself. No task per stream: no spawn, no scheduling
//! round through the runtime, and the connection's task owns everything
//! that belongs to it (its end drops what is left of its streams).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::stream::{FuturesUnordered, StreamExt};

/// A stream's future, as hyper hands it over.
type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor given to hyper: streams handed over wait here until the
/// connection's future takes them into its set.
#[derive(Clone, Default)]
pub struct StreamExec(Arc<Mutex<Handed>>);

#[derive(Default)]
struct Handed {
    streams: Vec<StreamFuture>,
    /// The connection's task, woken when a stream is handed over outside
    /// its poll (hyper hands them over while polled: this is a backstop).
    waker: Option<Waker>,
}

impl<F> hyper::rt::Executor<F> for StreamExec
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        let mut handed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        handed.streams.push(Box::pin(fut));
        if let Some(w) = handed.waker.take() {
            w.wake();
        }
    }
}

impl StreamExec {
    /// Moves the streams handed over since the last call into `set`;
    /// whether there were any.
    fn take_into(&self, set: &mut FuturesUnordered<StreamFuture>, waker: &Waker) -> bool {
        let mut handed = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if !handed.waker.as_ref().is_some_and(|w| w.will_wake(waker)) {
            handed.waker = Some(waker.clone());
        }
        let any = !handed.streams.is_empty();
        set.extend(handed.streams.drain(..));
        any
    }
}

pin_project_lite::pin_project! {
    /// A hyper HTTP/2 server connection and its streams, polled together.
    /// It ends when the connection does; streams still running then are
    /// dropped with it (their client is gone, or the connection was
    /// dropped at the drain deadline), which cancels their upstream requests.
    pub struct WithStreams<C> {
        #[pin]
        conn: C,
        exec: StreamExec,
        streams: FuturesUnordered<StreamFuture>,
    }
}

impl<C> WithStreams<C> {
    pub fn new(conn: C, exec: StreamExec) -> Self {
        WithStreams {
            conn,
            exec,
            streams: FuturesUnordered::new(),
        }
    }

    /// The connection itself (to ask it to shut down gracefully).
    pub fn conn(self: Pin<&mut Self>) -> Pin<&mut C> {
        self.project().conn
    }
}

impl<C: Future> Future for WithStreams<C> {
    type Output = C::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let mut this = self.project();
        loop {
            // The connection first: it reads frames and hands new streams
            // over; then the streams, which queue their responses for the
            // connection to write; again while that handed over more.
            if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            this.exec.take_into(this.streams, cx.waker());
            // `Ready(None)`: the set is empty; `Pending`: every stream waits
            // (or the set yielded to be fair and woke the task again).
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {}
            if !this.exec.take_into(this.streams, cx.waker()) {
                return Poll::Pending;
            }
        }
    }
}
