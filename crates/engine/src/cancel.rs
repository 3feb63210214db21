//! Cooperative cancellation: long jobs take a [`CancelToken`], poll
//! [`CancelToken::check`] between units of work and stop with
//! [`Error::Interrupted`], leaving the repository as it was (nothing
//! uncommitted becomes visible). Who cancels is the caller's business; the
//! `strata` binary cancels from its SIGINT/SIGTERM handler.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};

/// A flag shared by a job and whoever may stop it. Clones observe the same
/// flag.
#[derive(Clone, Debug)]
pub struct CancelToken {
    flag: Flag,
}

#[derive(Clone, Debug)]
enum Flag {
    Shared(Arc<AtomicBool>),
    /// A flag that outlives every job, such as one a signal handler sets:
    /// a handler may touch nothing but an atomic it can reach statically.
    Static(&'static AtomicBool),
}

impl CancelToken {
    pub fn new() -> Self {
        CancelToken {
            flag: Flag::Shared(Arc::new(AtomicBool::new(false))),
        }
    }

    /// A token cancelled whenever `flag` becomes true.
    pub fn from_static(flag: &'static AtomicBool) -> Self {
        CancelToken {
            flag: Flag::Static(flag),
        }
    }

    fn flag(&self) -> &AtomicBool {
        match &self.flag {
            Flag::Shared(flag) => flag,
            Flag::Static(flag) => flag,
        }
    }

    pub fn cancel(&self) {
        self.flag().store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.flag().load(Ordering::Relaxed)
    }

    /// Fails with [`Error::Interrupted`] once cancelled.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Interrupted(
                "stopped by a signal; nothing of this run was committed".into(),
            ))
        } else {
            Ok(())
        }
    }
}

impl Default for CancelToken {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_flag() {
        let token = CancelToken::new();
        let clone = token.clone();
        assert!(clone.check().is_ok());
        token.cancel();
        assert!(clone.is_cancelled());
        assert!(matches!(clone.check(), Err(Error::Interrupted(_))));
    }

    #[test]
    fn a_static_flag_cancels_its_tokens() {
        static FLAG: AtomicBool = AtomicBool::new(false);
        let token = CancelToken::from_static(&FLAG);
        assert!(!token.is_cancelled());
        FLAG.store(true, Ordering::SeqCst);
        assert!(token.check().is_err());
    }
}
