//! The shutdown signal every task watches: its phases (running →
//! draining → closing) and a cheap future that resolves at one of them.
//! A signal may have children (a route's, which a reload that removes
//! the route closes on its own): a child reaches every phase its parent
//! reaches.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

/// Shutdown phases, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    Running,
    /// Listeners closed; live connections may finish.
    Draining,
    /// Drain deadline passed: every connection ends now.
    Closing,
}

/// The shutdown phase, shared by every task. Waiting on it costs a task
/// only a `Notified` (a few words), since every connection task holds one.
#[derive(Clone)]
pub struct ShutdownSignal(Arc<PhaseState>);

struct PhaseState {
    phase: AtomicU8,
    changed: Notify,
    children: std::sync::Mutex<Vec<std::sync::Weak<PhaseState>>>,
    /// Closed on its own (a removed route's), not by its parent.
    alone: std::sync::atomic::AtomicBool,
}

impl PhaseState {
    fn advance(&self, phase: Phase) {
        let before = self.phase.fetch_max(phase as u8, Ordering::AcqRel);
        if before < phase as u8 {
            self.changed.notify_waiters();
        }
        let children: Vec<Arc<PhaseState>> = self
            .children
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .collect();
        for c in children {
            c.advance(phase);
        }
    }
}

impl ShutdownSignal {
    pub fn new() -> ShutdownSignal {
        ShutdownSignal(Arc::new(PhaseState {
            phase: AtomicU8::new(Phase::Running as u8),
            changed: Notify::new(),
            children: Default::default(),
            alone: Default::default(),
        }))
    }

    /// A signal that reaches every phase this one reaches, and can be
    /// advanced on its own.
    pub fn child(&self) -> ShutdownSignal {
        let child = Arc::new(PhaseState {
            phase: AtomicU8::new(Phase::Running as u8),
            changed: Notify::new(),
            children: Default::default(),
            alone: Default::default(),
        });
        {
            let mut children = self.0.children.lock().unwrap_or_else(|p| p.into_inner());
            children.retain(|w| w.strong_count() > 0);
            children.push(Arc::downgrade(&child));
        }
        // (A phase reached before the child was registered.)
        child
            .phase
            .fetch_max(self.0.phase.load(Ordering::Acquire), Ordering::AcqRel);
        ShutdownSignal(child)
    }

    fn phase(&self) -> u8 {
        self.0.phase.load(Ordering::Acquire)
    }

    /// Moves to `phase` (never backwards), its children too, and wakes
    /// every waiter.
    pub fn advance(&self, phase: Phase) {
        self.0.advance(phase);
    }

    fn reached(&self, phase: Phase) -> Reached<'_> {
        // The waiter exists before the phase is read: a change after the
        // read wakes it (`notify_waiters` reaches waiters not yet polled).
        let notified = self.0.changed.notified();
        Reached {
            made_at: self.phase(),
            state: &self.0,
            target: phase as u8,
            notified,
            polled_with: None,
        }
    }

    /// Closes this signal (and its children) on its own: what waits on it
    /// ends with `route_removed` (`end_reason`), not `shutdown`.
    pub fn close_alone(&self) {
        self.0.alone.store(true, Ordering::Release);
        self.advance(Phase::Closing);
    }

    /// Why what waited on this signal ended, when it ended because the
    /// signal closed: `route_removed` if it was closed on its own.
    pub fn end_reason(&self) -> crate::conn::EndReason {
        if self.0.alone.load(Ordering::Acquire) {
            crate::conn::EndReason::RouteRemoved
        } else {
            crate::conn::EndReason::Shutdown
        }
    }

    /// `reason`, or, for `shutdown`, why this signal closed.
    pub fn blame(&self, reason: crate::conn::EndReason) -> crate::conn::EndReason {
        if reason == crate::conn::EndReason::Shutdown {
            self.end_reason()
        } else {
            reason
        }
    }

    /// Draining (or closing) has begun. A plain read, no waiter registered.
    pub fn is_draining(&self) -> bool {
        self.phase() >= Phase::Draining as u8
    }

    /// The drain is over: every connection ends now.
    pub fn is_closing(&self) -> bool {
        self.phase() >= Phase::Closing as u8
    }

    pub fn draining(&self) -> Reached<'_> {
        self.reached(Phase::Draining)
    }

    pub fn closing(&self) -> Reached<'_> {
        self.reached(Phase::Closing)
    }
}

pin_project_lite::pin_project! {
    /// Resolves once the shutdown reaches a phase. Cheap to poll again,
    /// which a connection's `select!` does at every wake-up: while the phase
    /// and the task's waker are unchanged, a poll is one atomic read (tokio's
    /// `Notified` would take its lock each time).
    pub struct Reached<'a> {
        state: &'a PhaseState,
        target: u8,
        #[pin]
        notified: Notified<'a>,
        // The phase when `notified` was made: each change wakes it once.
        made_at: u8,
        // The waker `notified` was last polled with.
        polled_with: Option<Waker>,
    }
}

impl Future for Reached<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let now = this.state.phase.load(Ordering::Acquire);
            if now >= *this.target {
                return Poll::Ready(());
            }
            if now != *this.made_at {
                // That waiter was for an earlier change: a new one.
                this.notified.set(this.state.changed.notified());
                *this.made_at = now;
                *this.polled_with = None;
                continue;
            }
            if this
                .polled_with
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
            {
                return Poll::Pending;
            }
            match this.notified.as_mut().poll(cx) {
                Poll::Ready(()) => *this.made_at = u8::MAX, // spent: a new one
                Poll::Pending => {
                    *this.polled_with = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        }
    }
}

impl Default for ShutdownSignal {
    fn default() -> Self {
        Self::new()
    }
}
