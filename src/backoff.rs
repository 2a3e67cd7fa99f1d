//! Retry pacing: exponential back-off with jitter, and logging of failure streaks so a
//! flaky API server produces two log lines (start and end of the streak), not a storm.

use std::time::{Duration, Instant};

/// A tiny xorshift generator: enough for jitter, no extra crate.
#[derive(Debug, Clone)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        Jitter(seed | 1)
    }

    /// Seeded from the clock and the process id, different in every thread and process.
    pub fn from_entropy() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let tid = format!("{:?}", std::thread::current().id());
        let mut seed = nanos ^ (u64::from(std::process::id()) << 32);
        for b in tid.bytes() {
            seed = seed.rotate_left(7) ^ u64::from(b);
        }
        Jitter::new(seed)
    }

    /// A uniform number in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `base` stretched by a random factor in [1, 1 + factor).
    pub fn stretch(&mut self, base: Duration, factor: f64) -> Duration {
        base.mul_f64(1.0 + factor * self.next_unit())
    }
}

/// Exponential back-off between `min` and `max`, with up to 50% jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    jitter: Jitter,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max,
            current: min,
            jitter: Jitter::from_entropy(),
        }
    }

    /// The next pause; each call doubles the base up to `max`.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.jitter.stretch(self.current, 0.5).min(self.max);
        self.current = (self.current * 2).min(self.max);
        d
    }

    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Logs the first failure of a streak as a warning, the rest at debug level, and one line
/// when it ends.
#[derive(Debug)]
pub struct Streak {
    what: &'static str,
    failures: u32,
    since: Option<Instant>,
}

impl Streak {
    pub fn new(what: &'static str) -> Self {
        Streak {
            what,
            failures: 0,
            since: None,
        }
    }

    pub fn failed(&mut self, error: &dyn std::fmt::Display) {
        self.failures += 1;
        if self.failures == 1 {
            self.since = Some(Instant::now());
            log::warn!("{} failing: {error}; retrying with back-off", self.what);
        } else {
            log::debug!("{} still failing ({}x): {error}", self.what, self.failures);
        }
    }

    pub fn succeeded(&mut self) {
        if self.failures > 0 {
            let secs = self.since.map(|s| s.elapsed().as_secs_f64()).unwrap_or(0.0);
            log::info!(
                "{} recovered after {} failure(s) over {secs:.1}s",
                self.what,
                self.failures
            );
        }
        self.failures = 0;
        self.since = None;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range() {
        let mut j = Jitter::new(42);
        for _ in 0..1000 {
            let u = j.next_unit();
            assert!((0.0..1.0).contains(&u));
            let d = j.stretch(Duration::from_secs(2), 1.2);
            assert!(d >= Duration::from_secs(2) && d < Duration::from_millis(4400));
        }
    }

    #[test]
    fn backoff_doubles_to_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] < Duration::from_millis(150));
        assert!(delays[1] >= Duration::from_millis(200));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        assert_eq!(delays[5], Duration::from_secs(1));
        b.reset();
        assert!(b.next_delay() < Duration::from_millis(150));
    }

    #[test]
    fn streak_counts_and_resets() {
        let mut s = Streak::new("test");
        s.failed(&"boom");
        s.failed(&"boom");
        assert_eq!(s.failures(), 2);
        s.succeeded();
        assert_eq!(s.failures(), 0);
    }
}
