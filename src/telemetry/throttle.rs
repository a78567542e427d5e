//! "At most once per interval" for log lines (and Sentry events) that a lasting fault would
//! otherwise repeat on every request: a database outage, Redis away, a misconfigured pooler.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// One clock for every throttle, so a throttle can be a `static`.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

pub struct Throttle {
    interval_ms: u64,
    /// Milliseconds since [`EPOCH`] (plus one, so 0 means never) of the last line let through.
    last_ms: AtomicU64,
    /// Occurrences held back since then.
    held_back: AtomicU64,
}

impl Throttle {
    pub const fn new(interval: Duration) -> Throttle {
        Throttle {
            interval_ms: interval.as_millis() as u64,
            last_ms: AtomicU64::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(n)` when a line is due now, `n` being how many occurrences were held back since
    /// the last one; `None` (counted) otherwise.
    pub fn due(&self) -> Option<u64> {
        let now = EPOCH.elapsed().as_millis() as u64 + 1;
        let last = self.last_ms.load(Ordering::Relaxed);
        let due = last == 0 || now.saturating_sub(last) >= self.interval_ms;
        if due
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lets_one_through_per_interval_and_counts_the_rest() {
        let throttle = Throttle::new(Duration::from_secs(3600));
        assert_eq!(throttle.due(), Some(0));
        assert_eq!(throttle.due(), None);
        assert_eq!(throttle.due(), None);
        let every_time = Throttle::new(Duration::ZERO);
        assert_eq!(every_time.due(), Some(0));
        assert_eq!(every_time.due(), Some(0));
    }
}
