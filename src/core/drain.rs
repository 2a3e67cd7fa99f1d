//! Drain timing: how long a pod that is going away may keep leading.
//!
//! A drain starts on SIGTERM/SIGINT or as soon as the pod gets a deletionTimestamp (a
//! native sidecar gets SIGTERM only after the app has exited, too late to hand over). It
//! ends before the kubelet's SIGKILL, leaving a margin to release the lease and relabel.

use std::time::{Duration, Instant};

/// Why the pod is draining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Signal,
    Deletion,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Drain {
    pub cause: Cause,
    pub started: Instant,
    /// A leader releases the lease at this moment, successor or not.
    pub deadline: Instant,
    /// Past this, the process exits even if the API server never answered.
    pub give_up: Instant,
    /// Signals received; a second one means "leave now".
    pub signals: u32,
}

/// Time kept back from the grace period for release and relabel: a tenth of it, at
/// least one second and at most five, never more than half of it.
pub fn margin(grace: Duration) -> Duration {
    (grace / 10)
        .clamp(Duration::from_secs(1), Duration::from_secs(5))
        .min(grace / 2)
}

/// Grace periods are taken at their word up to a year (the API allows up to i64::MAX
/// seconds, which no clock can add).
const MAX_GRACE: Duration = Duration::from_secs(365 * 24 * 3600);

/// Even without any grace (a force deletion) the release is sent, with this long for it:
/// the kubelet gives a container at least two seconds after SIGTERM.
const LAST_WORD: Duration = Duration::from_secs(1);

impl Drain {
    pub fn start(cause: Cause, now: Instant, grace: Duration) -> Drain {
        let grace = grace.min(MAX_GRACE);
        let m = margin(grace);
        Drain {
            cause,
            started: now,
            deadline: now + grace - m,
            give_up: now + (grace - m / 4).max(LAST_WORD),
            signals: u32::from(cause == Cause::Signal),
        }
    }

    /// Another reason to drain arrived: keep the earlier deadline; count signals.
    pub fn merge(&mut self, other: Drain) {
        self.signals += other.signals;
        if other.deadline < self.deadline {
            self.deadline = other.deadline;
            self.give_up = other.give_up;
        }
    }

    /// A second signal, or the deadline has come: release and go now.
    pub fn must_leave(&self, now: Instant) -> bool {
        self.signals >= 2 || now >= self.deadline
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margins() {
        assert_eq!(margin(Duration::from_secs(30)), Duration::from_secs(3));
        assert_eq!(margin(Duration::from_secs(5)), Duration::from_secs(1));
        assert_eq!(margin(Duration::from_secs(120)), Duration::from_secs(5));
        assert_eq!(margin(Duration::from_secs(1)), Duration::from_millis(500));
        assert_eq!(margin(Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn deadlines_and_signals() {
        let t0 = Instant::now();
        let mut d = Drain::start(Cause::Deletion, t0, Duration::from_secs(30));
        assert_eq!(d.deadline, t0 + Duration::from_secs(27));
        assert!(d.give_up > d.deadline);
        assert!(!d.must_leave(t0 + Duration::from_secs(26)));
        assert!(d.must_leave(t0 + Duration::from_secs(27)));
        // SIGTERM after the deletion: first signal, not a "second" one.
        d.merge(Drain::start(
            Cause::Signal,
            t0 + Duration::from_secs(1),
            Duration::from_secs(30),
        ));
        assert_eq!(d.signals, 1);
        assert_eq!(d.deadline, t0 + Duration::from_secs(27));
        d.merge(Drain::start(
            Cause::Signal,
            t0 + Duration::from_secs(2),
            Duration::from_secs(30),
        ));
        assert!(d.must_leave(t0 + Duration::from_secs(2)));
        // A shorter grace wins.
        let mut e = Drain::start(Cause::Signal, t0, Duration::from_secs(30));
        e.merge(Drain::start(Cause::Deletion, t0, Duration::from_secs(5)));
        assert_eq!(e.deadline, t0 + Duration::from_secs(4));
    }
}
