//! The memory that admission requests may hold at once, shared by all of
//! them (`--max-request-memory`).
//!
//! A request reserves its body's declared length before the body is read,
//! and the estimated size of what is built from the body (the JSON tree,
//! the engine's copy, the evaluation's own values; see
//! [`crate::admission::scan::Shape::memory_estimate`]) before any of it is
//! built. A reservation that cannot be had within the request's queue
//! deadline fails instead of waiting on: the request is then answered as
//! overloaded. Reservations are released when dropped, which for the trees
//! is when the evaluation really ends (the reservation travels into the
//! blocking task with the evaluation slot).

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A pool of bytes; cheap to clone (clones share the pool).
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    bytes: Arc<Semaphore>,
    total: usize,
    reserved: Gauge,
}

/// Bytes held from a [`MemoryBudget`] until dropped.
#[derive(Debug)]
pub struct Reservation {
    _permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
    reserved: Gauge,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.reserved.dec_by(gauge_value(self.bytes));
    }
}

/// A reservation could not be had in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{needed} bytes of request memory not free in time ({total} bytes in all)")]
pub struct Exhausted {
    /// The bytes asked for.
    pub needed: usize,
    /// The whole budget.
    pub total: usize,
}

impl MemoryBudget {
    /// A budget of `total` bytes; `reserved` follows the bytes held.
    pub fn new(total: usize, reserved: Gauge) -> Self {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(total)),
            total,
            reserved,
        }
    }

    /// The whole budget in bytes.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Waits until `bytes` are free, at most until `deadline`.
    pub async fn reserve(&self, bytes: usize, deadline: Instant) -> Result<Reservation, Exhausted> {
        let exhausted = Exhausted {
            needed: bytes,
            total: self.total,
        };
        if bytes == 0 {
            return Ok(self.held(None, 0));
        }
        // More than the semaphore can hand out at once, or than the whole
        // budget: waiting would never end.
        let n = u32::try_from(bytes).map_err(|_| exhausted)?;
        if bytes > self.total {
            return Err(exhausted);
        }
        let acquire = self.bytes.clone().acquire_many_owned(n);
        match tokio::time::timeout_at(deadline.into(), acquire).await {
            Ok(Ok(permit)) => Ok(self.held(Some(permit), bytes)),
            // Timed out, or the semaphore was closed (never happens).
            Ok(Err(_)) | Err(_) => Err(exhausted),
        }
    }

    fn held(&self, permit: Option<OwnedSemaphorePermit>, bytes: usize) -> Reservation {
        self.reserved.inc_by(gauge_value(bytes));
        Reservation {
            _permit: permit,
            bytes,
            reserved: self.reserved.clone(),
        }
    }
}

fn gauge_value(bytes: usize) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn reservations_wait_for_each_other_and_give_up_at_the_deadline() {
        let gauge = Gauge::default();
        let budget = MemoryBudget::new(100, gauge.clone());
        let soon = || Instant::now() + Duration::from_millis(50);
        let first = budget.reserve(60, soon()).await.expect("fits");
        assert_eq!(gauge.get(), 60);
        assert_eq!(
            budget.reserve(60, soon()).await.map(|_| ()),
            Err(Exhausted {
                needed: 60,
                total: 100
            })
        );
        let second = budget.reserve(40, soon()).await.expect("the rest fits");
        drop(first);
        assert_eq!(gauge.get(), 40);
        let third = budget.reserve(60, soon()).await.expect("freed");
        drop((second, third));
        assert_eq!(gauge.get(), 0);
        assert!(
            budget
                .reserve(101, Instant::now() + Duration::from_secs(60))
                .await
                .is_err(),
            "more than the whole budget fails at once"
        );
    }
}
