//! The event loop's building block: wait for kernel records on the ring
//! buffer and hand each to the [`Reporter`].

use std::{os::fd::AsRawFd as _, time::Duration};

use aya::maps::{MapData, RingBuf};

use crate::report::events::{Reporter, ViolationRecord};

/// Records handled per [`Monitor::drain`] (a full ring buffer holds about
/// 800).
pub const MAX_BATCH: usize = 4096;

/// Ring buffer plus reporter.
pub struct Monitor {
    ring: RingBuf<MapData>,
    pub reporter: Reporter,
}

impl Monitor {
    pub fn new(ring: RingBuf<MapData>, reporter: Reporter) -> Monitor {
        Monitor { ring, reporter }
    }

    /// Handles the records already in the ring buffer, at most
    /// [`MAX_BATCH`]; returns them all, audit-mode repeats (not written
    /// again) included. Bounded: while reports arrive faster than they
    /// are handled, the ring never empties, and the caller's loop (the
    /// node agent's enforcement) must still get its turn.
    pub fn drain(&mut self) -> Vec<ViolationRecord> {
        let mut reported = Vec::new();
        let mut handled = 0;
        while handled < MAX_BATCH
            && let Some(item) = self.ring.next()
        {
            handled += 1;
            match self.reporter.handle(&item) {
                Ok(record) => reported.push(record),
                Err(e) => tracing::error!(error = %e, "dropping event"),
            }
        }
        reported
    }

    /// Waits up to `timeout` for records (returns early on a signal), then
    /// drains.
    pub fn wait(&mut self, timeout: Duration) -> Vec<ViolationRecord> {
        self.wait_also(timeout, None)
    }

    /// [`Monitor::wait`], returning early too when `other` (another ring
    /// buffer's descriptor) becomes readable.
    pub fn wait_also(
        &mut self,
        timeout: Duration,
        other: Option<std::os::fd::RawFd>,
    ) -> Vec<ViolationRecord> {
        let ready = |fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = [ready(self.ring.as_raw_fd()), ready(other.unwrap_or(-1))];
        let count = if other.is_some() { 2 } else { 1 };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `count` valid pollfds; EINTR and errors just end the wait.
        unsafe { libc::poll(fds.as_mut_ptr(), count, millis) };
        self.drain()
    }
}
