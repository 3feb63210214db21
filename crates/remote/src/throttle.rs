//! A bandwidth limit: a token bucket that callers draw bytes from,
//! waiting (blocking or async, their choice) for as long as it says.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Throttle {
    rate: u64,
    next_free: Mutex<Instant>,
}

impl Throttle {
    /// At most `rate` bytes per second.
    pub fn new(rate: u64) -> Throttle {
        Throttle {
            rate: rate.max(1),
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Takes `n` bytes; returns how long the caller must wait before
    /// sending them.
    pub fn reserve(&self, n: usize) -> Duration {
        let mut next = self.next_free.lock().expect("throttle lock");
        let now = Instant::now();
        // An idle link saves up at most a tenth of a second of bytes.
        let floor = now.checked_sub(Duration::from_millis(100)).unwrap_or(now);
        let start = (*next).max(floor);
        *next = start + Duration::from_secs_f64(n as f64 / self.rate as f64);
        next.saturating_duration_since(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_add_up_to_the_rate() {
        let throttle = Throttle::new(1_000_000);
        let mut total = Duration::ZERO;
        for _ in 0..10 {
            total = throttle.reserve(100_000);
        }
        // A million bytes at a million a second: about a second from now,
        // less the tenth of a second saved up.
        assert!(total > Duration::from_millis(850) && total <= Duration::from_secs(1), "{total:?}");
    }
}
