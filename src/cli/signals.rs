//! SIGINT and SIGTERM cancel the running job: the handler sets a flag the
//! job's [`CancelToken`] observes, and the job stops at its next check,
//! leaving the repository as it was.

use std::sync::atomic::{AtomicBool, Ordering};

use strata::cancel::CancelToken;

/// Static so that the handler reaches it without touching anything a
/// signal handler may not (allocation, locks).
static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to the returned token.
pub fn install() -> CancelToken {
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
    CancelToken::from_static(&REQUESTED)
}
