//! The one source of "now". Token expiry, rotation and timestamps all read it, so tests can
//! move time instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Wall-clock time in Unix seconds (or milliseconds), either the system's or one a test sets.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// Unix milliseconds of a manual clock.
    manual: Option<Arc<AtomicI64>>,
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Clock { manual: None }
    }

    /// A clock that stands still at `unix_seconds` until [`Clock::advance`] or [`Clock::set`].
    pub fn manual(unix_seconds: i64) -> Self {
        Clock {
            manual: Some(Arc::new(AtomicI64::new(unix_seconds.saturating_mul(1000)))),
        }
    }

    /// Now, in Unix seconds.
    pub fn now(&self) -> i64 {
        self.now_millis().div_euclid(1000)
    }

    /// Now, in Unix milliseconds (for windows shorter than a second, such as the refresh grace).
    pub fn now_millis(&self) -> i64 {
        match &self.manual {
            Some(t) => t.load(Ordering::SeqCst),
            None => {
                #[allow(clippy::disallowed_methods)] // the one sanctioned read of the system clock
                let now = std::time::SystemTime::now();
                now.duration_since(std::time::UNIX_EPOCH)
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    .unwrap_or(0)
            }
        }
    }

    /// Moves a manual clock forward; no effect on the system clock.
    pub fn advance(&self, seconds: i64) {
        self.advance_millis(seconds.saturating_mul(1000));
    }

    /// Moves a manual clock forward by milliseconds; no effect on the system clock.
    pub fn advance_millis(&self, millis: i64) {
        if let Some(t) = &self.manual {
            t.fetch_add(millis, Ordering::SeqCst);
        }
    }

    /// Sets a manual clock; no effect on the system clock.
    pub fn set(&self, unix_seconds: i64) {
        if let Some(t) = &self.manual {
            t.store(unix_seconds.saturating_mul(1000), Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = Clock::manual(100);
        let shared = c.clone();
        assert_eq!(c.now(), 100);
        shared.advance(5);
        assert_eq!(c.now(), 105);
        c.set(7);
        assert_eq!(shared.now(), 7);
        c.advance_millis(1999);
        assert_eq!((c.now(), c.now_millis()), (8, 8999));
    }

    #[test]
    fn system_clock_is_after_2024() {
        assert!(Clock::system().now() > 1_700_000_000);
    }
}
