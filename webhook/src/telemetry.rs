//! Logging set-up: `tracing` with `RUST_LOG` (default `info`), text or JSON,
//! and the helpers that keep log lines useful: an error with its causes on
//! one line, and a warning that repeats at most once per interval.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use mapguard_kube::telemetry::error_chain;
use mapguard_kube::telemetry::{Format, Telemetry};

use crate::config::LogFormat;

/// rustls logs a WARN for each peer that misbehaves in a handshake (an IP
/// address as SNI, ...): one line per bad connection. Those handshakes are
/// counted and logged, rate-limited, by the server; rustls' own lines only
/// show when `RUST_LOG` names rustls.
const RUSTLS_DEFAULT: &str = "rustls=error";

/// Installs the global subscriber (default filter `info`); later calls are
/// ignored.
pub fn init(format: LogFormat) {
    Telemetry {
        format: match format {
            LogFormat::Text => Format::Text,
            LogFormat::Json => Format::Json,
        },
        quiet: &[RUSTLS_DEFAULT],
        ..Telemetry::new("info")
    }
    .init();
}

/// A warning that may be logged once per `interval`; the occurrences in
/// between are counted and reported with the next one.
#[derive(Debug)]
pub struct RateLimited {
    interval: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl RateLimited {
    /// At most one warning per `interval`.
    pub fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new((None, 0)),
        }
    }

    /// Whether this occurrence may be logged as a warning; if so, how many
    /// occurrences were held back since the last one.
    pub fn check(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, held_back) = &mut *state;
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < self.interval) {
            *held_back += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle: repeats inner")]
    struct Middle(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("repeats inner")]
    struct Inner(#[source] std::io::Error);

    #[test]
    fn the_chain_holds_every_cause_once() {
        let error = Outer(Middle(Inner(std::io::Error::other("the root cause"))));
        assert_eq!(
            error_chain(&error),
            "outer: middle: repeats inner: the root cause"
        );
    }

    #[test]
    fn one_warning_per_interval_then_the_count_held_back() {
        let limit = RateLimited::new(Duration::from_millis(200));
        assert_eq!(limit.check(), Some(0), "the first one is logged");
        assert_eq!(limit.check(), None);
        assert_eq!(limit.check(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(
            limit.check(),
            Some(2),
            "the next one says how many were held back"
        );
        assert_eq!(limit.check(), None);
    }
}
