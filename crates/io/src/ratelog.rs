//! Rate limits for log lines that a failing downstream or a hostile peer could otherwise
//! repeat thousands of times a second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// Lines allowed per window by default; the rest are counted and reported with the next
/// allowed line.
const PER_WINDOW: u64 = 10;
/// The default window, in milliseconds.
const WINDOW_MS: u64 = 1000;

/// A per-site log budget (by default ten lines a second): [`RateLog::allow`] says whether to
/// log now, and how many lines were suppressed since the last one that was.
#[derive(Debug)]
pub struct RateLog {
    /// Lines allowed per window.
    per_window: u64,
    /// The window, in milliseconds.
    window_ms: u64,
    /// Start of the current window, in ms since the process's first use of a rate log.
    window: AtomicU64,
    /// Lines asked for in the current window.
    count: AtomicU64,
    /// Lines suppressed and not yet reported.
    suppressed: AtomicU64,
}

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

impl Default for RateLog {
    fn default() -> Self {
        Self::new(PER_WINDOW, std::time::Duration::from_millis(WINDOW_MS))
    }
}

impl RateLog {
    /// A budget of `per_window` lines per `window`.
    pub fn new(per_window: u64, window: std::time::Duration) -> Self {
        Self {
            per_window,
            window_ms: window.as_millis() as u64,
            // The first window starts at the clock's origin (a process's first use).
            window: AtomicU64::new(0),
            count: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed)` when this line may be logged (with the number of lines left out
    /// since the last logged one), `None` when it is over the budget.
    pub fn allow(&self) -> Option<u64> {
        let now = now_ms();
        let window = self.window.load(Ordering::Relaxed);
        if now.saturating_sub(window) >= self.window_ms
            && self
                .window
                .compare_exchange(window, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.count.store(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < self.per_window {
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_long_window_reports_how_many_were_left_out() {
        let log = RateLog::new(1, std::time::Duration::from_millis(50));
        assert_eq!(log.allow(), Some(0));
        assert_eq!((0..5).filter(|_| log.allow().is_some()).count(), 0);
        // The window runs out: the next line says five were left out.
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert_eq!(log.allow(), Some(5));
    }

    #[test]
    fn ten_lines_a_second_then_a_count_of_the_rest() {
        let log = RateLog::default();
        let allowed = (0..100).filter(|_| log.allow().is_some()).count();
        assert_eq!(allowed, PER_WINDOW as usize);
        // A new window reports what was left out.
        log.window.store(0, Ordering::Relaxed);
        log.count.store(0, Ordering::Relaxed);
        let _ = now_ms();
        std::thread::sleep(std::time::Duration::from_millis(5));
        log.window
            .store(now_ms().saturating_sub(WINDOW_MS), Ordering::Relaxed);
        assert_eq!(log.allow(), Some(90));
    }
}
