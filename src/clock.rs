//! Instants a duration after another, saturating: no `Instant + Duration` in the crate
//! can panic on overflow (a timer of `Duration::MAX`, a grace period of years), and none
//! wraps around to fire at once (which would make a worker spin).

use std::time::{Duration, Instant};

/// The longest delay the engine schedules (about 100 years): any longer one waits this
/// long, which no process lives to see.
pub(crate) const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `now + d`, with `d` capped at [`FOREVER`].
#[inline]
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(FOREVER))
        .unwrap_or_else(|| now.checked_add(Duration::from_secs(3600)).unwrap_or(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_delays_saturate_instead_of_panicking() {
        let now = Instant::now();
        assert_eq!(after(now, Duration::MAX), now + FOREVER);
        assert_eq!(
            after(now, Duration::from_millis(5)),
            now + Duration::from_millis(5)
        );
    }
}
