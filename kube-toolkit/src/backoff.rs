//! Exponential back-off with jitter, so that agents on every node do not
//! retry in step after an API server restart.
//!
//! Watches use kube-runtime's own back-off (inside
//! [`Reflector::run`](crate::cache::Reflector::run)); this one serves the
//! retry loops around single requests (writes, discovery, CRD creation).

use std::time::Duration;

/// Delays that double from `min` up to `max`, each shortened by up to half
/// at random.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// From `min` (at least 1 ms) up to `max` (at least `min`).
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            next: min,
        }
    }

    /// The delay to wait now: the current step, minus up to half of it.
    #[allow(clippy::should_implement_trait)] // not an iterator: it never ends
    pub fn next(&mut self) -> Duration {
        let step = self.next;
        self.next = (self.next * 2).min(self.max);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        step.mul_f64(1.0 - f64::from(nanos % 1000) / 2000.0)
    }

    /// After a success: the next delay is `min` again.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_bound_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(700));
        let steps: Vec<Duration> = (0..5).map(|_| b.next()).collect();
        for (got, step) in steps.iter().zip([100, 200, 400, 700, 700]) {
            let step = Duration::from_millis(step);
            assert!(*got <= step && *got >= step / 2, "{got:?} for {step:?}");
        }
        b.reset();
        assert!(b.next() <= Duration::from_millis(100));
    }
}
