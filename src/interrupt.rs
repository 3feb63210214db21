//! Cooperative cancellation on SIGINT and SIGTERM: long jobs poll
//! [`check`] and stop with [`Error::Interrupted`], leaving the repository
//! as it was (nothing uncommitted becomes visible).

use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to the cancellation flag.
pub fn install() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        let _ = unsafe { sigaction(signal, &action) };
    }
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::Relaxed)
}

pub fn check() -> Result<()> {
    if requested() {
        Err(Error::Interrupted(
            "stopped by a signal; nothing of this run was committed".into(),
        ))
    } else {
        Ok(())
    }
}
