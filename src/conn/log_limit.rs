//! Rate limits for log lines a flood of hostile clients would multiply:
//! client-caused connection endings (invalid ClientHellos and PROXY
//! headers, failed handshakes, stalled heads) and accept failures. Each
//! kind gets `BURST` lines per `WINDOW`; past that its lines are counted,
//! not written, and the next line after the window says how many were
//! suppressed. Metrics count every ending either way.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Lines of one kind written per window.
pub const BURST: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(10);

/// One kind of line's window.
#[derive(Default)]
struct Window {
    /// The window's index (time since start / `WINDOW`).
    index: u64,
    written: u32,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write it; `suppressed` lines of its kind were left out before it.
    Write { suppressed: u64 },
    /// Leave it out (counted).
    Suppress,
}

/// Windows for `N` kinds of line.
pub struct LogLimit<const N: usize> {
    windows: [Mutex<Window>; N],
}

impl<const N: usize> Default for LogLimit<N> {
    fn default() -> Self {
        LogLimit {
            windows: std::array::from_fn(|_| Mutex::new(Window::default())),
        }
    }
}

fn since_start() -> Duration {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed()
}

impl<const N: usize> LogLimit<N> {
    /// Whether a line of kind `kind` (< N) may be written now.
    pub fn admit(&self, kind: usize) -> Admit {
        self.admit_at(kind, since_start())
    }

    fn admit_at(&self, kind: usize, now: Duration) -> Admit {
        let Some(slot) = self.windows.get(kind) else {
            return Admit::Write { suppressed: 0 };
        };
        let mut w = slot.lock().unwrap_or_else(|p| p.into_inner());
        let index = (now.as_millis() / WINDOW.as_millis()) as u64;
        let mut suppressed = 0;
        if index != w.index {
            suppressed = std::mem::take(&mut w.suppressed);
            w.index = index;
            w.written = 0;
        }
        if w.written >= BURST {
            w.suppressed += 1;
            return Admit::Suppress;
        }
        w.written += 1;
        Admit::Write { suppressed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_per_window_then_a_count_of_what_was_left_out() {
        let limit = LogLimit::<2>::default();
        let t = Duration::from_secs(1);
        for _ in 0..BURST {
            assert_eq!(limit.admit_at(0, t), Admit::Write { suppressed: 0 });
        }
        for _ in 0..500 {
            assert_eq!(limit.admit_at(0, t), Admit::Suppress);
        }
        // Another kind has its own window.
        assert_eq!(limit.admit_at(1, t), Admit::Write { suppressed: 0 });
        // The next window's first line says how many were left out.
        assert_eq!(
            limit.admit_at(0, t + WINDOW),
            Admit::Write { suppressed: 500 }
        );
        assert_eq!(
            limit.admit_at(0, t + WINDOW),
            Admit::Write { suppressed: 0 }
        );
    }
}
