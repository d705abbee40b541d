//! Keeping the poller's log readable when the VMA flaps. A job's first failed poll and its first
//! good one after failures are logged (once per streak, not per poll); when many jobs flap at
//! once, at most [`LINES_PER_WINDOW`] such lines are written per window of ten poll intervals and
//! the rest are counted into one summary line per window.

use std::time::Duration;

use tokio::time::Instant;

/// Streak lines written per window before they are only counted.
pub const LINES_PER_WINDOW: u32 = 10;

/// What a streak line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streak {
    /// A job's polls started failing.
    Failing,
    /// A job's polls work again.
    Recovered,
}

#[derive(Debug)]
pub struct StreakLog {
    window: Duration,
    started: Instant,
    written: u32,
    held_failing: u32,
    held_recovered: u32,
}

impl StreakLog {
    pub fn new(poll_interval: Duration, now: Instant) -> StreakLog {
        StreakLog {
            window: (poll_interval * 10).max(Duration::from_secs(1)),
            started: now,
            written: 0,
            held_failing: 0,
            held_recovered: 0,
        }
    }

    /// Whether the line about `streak` may be written now; if not, it is counted for the summary.
    pub fn admit(&mut self, streak: Streak, now: Instant) -> bool {
        if now.duration_since(self.started) >= self.window {
            // The caller emits the previous window's summary through `close_window`, called first.
            self.started = now;
            self.written = 0;
        }
        if self.written < LINES_PER_WINDOW {
            self.written += 1;
            return true;
        }
        match streak {
            Streak::Failing => self.held_failing += 1,
            Streak::Recovered => self.held_recovered += 1,
        }
        false
    }

    /// At the end of a window, the summary of what was held back in it, if anything.
    pub fn close_window(&mut self, now: Instant) -> Option<String> {
        if now.duration_since(self.started) < self.window || (self.held_failing == 0 && self.held_recovered == 0) {
            return None;
        }
        let summary = format!(
            "⚠️ VMA polling is flapping: {} more jobs started failing and {} more recovered in the last {} \
             (lines held back; each job's state is on /api/v1/vma-polling/jobs/<id>)",
            self.held_failing,
            self.held_recovered,
            humantime::format_duration(self.window)
        );
        self.held_failing = 0;
        self.held_recovered = 0;
        self.started = now;
        self.written = 0;
        Some(summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_writes_ten_lines_then_counts_the_rest_into_one_summary() {
        let t0 = Instant::now();
        let mut log = StreakLog::new(Duration::from_millis(100), t0);
        let admitted =
            (0..30).filter(|i| log.admit(if i % 2 == 0 { Streak::Failing } else { Streak::Recovered }, t0)).count();
        assert_eq!(admitted, LINES_PER_WINDOW as usize);
        assert_eq!(log.close_window(t0 + Duration::from_millis(999)), None, "the window is one second");
        let summary = log.close_window(t0 + Duration::from_secs(1)).expect("a summary");
        assert!(summary.contains("10 more jobs started failing and 10 more recovered in the last 1s"), "{summary}");
        assert!(log.admit(Streak::Failing, t0 + Duration::from_secs(1)), "a new window writes again");
        assert_eq!(log.close_window(t0 + Duration::from_secs(3)), None, "nothing held back, no summary");
    }

    #[test]
    fn the_window_is_ten_intervals_and_at_least_a_second() {
        let t0 = Instant::now();
        assert_eq!(StreakLog::new(Duration::from_secs(5), t0).window, Duration::from_secs(50));
        assert_eq!(StreakLog::new(Duration::from_millis(20), t0).window, Duration::from_secs(1));
    }
}
