//! SIGINT/SIGTERM/SIGHUP/SIGQUIT handling: remember the signal for the main loop and
//! forward it to the enforced child (`exec`).

use std::sync::atomic::{AtomicI32, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static PENDING: AtomicI32 = AtomicI32::new(0);
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_signal(signal: libc::c_int) {
    PENDING.store(signal, Ordering::SeqCst);
    let pid = FORWARD_TO.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(pid, signal) };
    }
}

/// Installs the handlers (without SA_RESTART, so blocking calls return
/// EINTR and the loops see the signal).
pub fn install() -> Result<(), nix::Error> {
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        // SAFETY: the handler only touches atomics and calls kill(2).
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// From now on, forward SIGINT/SIGTERM/SIGHUP/SIGQUIT to `pid`.
pub fn forward_to(pid: i32) {
    FORWARD_TO.store(pid, Ordering::SeqCst);
}

/// The last signal received, if any (cleared).
pub fn take_pending() -> Option<i32> {
    match PENDING.swap(0, Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}
