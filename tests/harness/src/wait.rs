//! Waiting with a deadline, the one way the tests wait: [`until`] polls a condition
//! (the API server, a process, a file), [`Watched`] is a value that threads update and
//! tests wait on as an event (an observer's pods, a proxy's log). A wait that times out
//! panics with "timed out after {timeout:?} waiting for {what}", then what the condition
//! last saw when it returns `Err(seen)`.
//!
//! ```ignore
//! let spec = wait::until("pod-b holds the Lease", secs(10), || {
//!     let spec = ns.get_lease()?["spec"].clone();
//!     (spec["holderIdentity"] == "pod-b").then_some(spec)
//! });
//! let seen = Watched::new(0u32);
//! seen.update(|n| *n += 1); // wakes every waiter
//! seen.wait_until("one event", secs(1), |n| (*n >= 1).then_some(()));
//! ```

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How often [`until`] polls.
pub const POLL: Duration = Duration::from_millis(50);

/// The panic message of a wait that timed out.
pub fn timed_out(what: &str, timeout: Duration) -> String {
    format!("timed out after {timeout:?} waiting for {what}")
}

/// Panics with [`timed_out`], then each detail that is not empty on a line of its own.
fn give_up(what: &str, timeout: Duration, details: &[&str]) -> ! {
    let mut message = timed_out(what, timeout);
    for d in details.iter().filter(|d| !d.is_empty()) {
        message.push('\n');
        message.push_str(d);
    }
    panic!("{message}")
}

/// What a condition returns: `bool` (true when done), `Option<R>` (Some when done, with
/// the value the wait returns) or `Result<R, E>` (Err with what it saw instead, shown if
/// the wait times out).
pub trait Done {
    /// What the wait returns.
    type Out;
    /// Ok when the condition holds; else what it saw, if it says.
    fn done(self) -> Result<Self::Out, Option<String>>;
}

impl Done for bool {
    type Out = ();
    fn done(self) -> Result<(), Option<String>> {
        self.then_some(()).ok_or(None)
    }
}

impl<R> Done for Option<R> {
    type Out = R;
    fn done(self) -> Result<R, Option<String>> {
        self.ok_or(None)
    }
}

impl<R, E: std::fmt::Display> Done for Result<R, E> {
    type Out = R;
    fn done(self) -> Result<R, Option<String>> {
        self.map_err(|seen| Some(format!("last seen: {seen}")))
    }
}

/// Polls `cond` every [`POLL`] until it holds; returns its value. Panics after `timeout`.
pub fn until<D: Done>(what: &str, timeout: Duration, cond: impl FnMut() -> D) -> D::Out {
    until_every(what, timeout, POLL, cond)
}

/// [`until`], polling every `every`.
pub fn until_every<D: Done>(
    what: &str,
    timeout: Duration,
    every: Duration,
    cond: impl FnMut() -> D,
) -> D::Out {
    poll(what, timeout, every, cond, String::new)
}

/// Like [`until`]; the panic message also shows `show()` (a log tail, a process's
/// output): what the person reading a failed run needs next.
pub fn until_showing<D: Done>(
    what: &str,
    timeout: Duration,
    cond: impl FnMut() -> D,
    show: impl FnOnce() -> String,
) -> D::Out {
    poll(what, timeout, POLL, cond, show)
}

fn poll<D: Done>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut cond: impl FnMut() -> D,
    show: impl FnOnce() -> String,
) -> D::Out {
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match cond().done() {
            Ok(out) => return out,
            Err(seen) => seen,
        };
        let now = Instant::now();
        if now >= deadline {
            give_up(what, timeout, &[&seen.unwrap_or_default(), &show()]);
        }
        std::thread::sleep(every.min(deadline - now));
    }
}

/// A value behind a Mutex with a Condvar: [`Watched::update`] changes it and wakes every
/// waiter, [`Watched::wait_until`] waits (no polling) until a condition on it holds.
/// A panic in another thread does not poison it for the waiters.
#[derive(Debug, Default)]
pub struct Watched<T> {
    value: Mutex<T>,
    changed: Condvar,
}

impl<T> Watched<T> {
    pub fn new(value: T) -> Watched<T> {
        Watched {
            value: Mutex::new(value),
            changed: Condvar::new(),
        }
    }

    /// Runs `f` on the value.
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        f(&self.lock())
    }

    /// Changes the value with `f` and wakes every waiter.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> R) -> R {
        let r = f(&mut self.lock());
        self.changed.notify_all();
        r
    }

    /// Waits until `cond` returns Some (checked now and after every update); returns it.
    /// Panics after `timeout` with [`timed_out`].
    pub fn wait_until<D: Done>(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl FnMut(&T) -> D,
    ) -> D::Out {
        self.wait_until_showing(what, timeout, cond, |_| String::new())
    }

    /// Like `wait_until`; the panic message also shows `show(value)` (when not empty).
    pub fn wait_until_showing<D: Done>(
        &self,
        what: &str,
        timeout: Duration,
        cond: impl FnMut(&T) -> D,
        show: impl FnOnce(&T) -> String,
    ) -> D::Out {
        match self.try_wait_until(timeout, cond) {
            Ok(out) => out,
            Err(value) => {
                let shown = show(&value);
                drop(value);
                give_up(what, timeout, &[&shown])
            }
        }
    }

    /// Like `wait_until`, without the panic: on timeout, Err with the value locked (for
    /// a panic message that shows it, or for a wait that may end without the event).
    pub fn try_wait_until<D: Done>(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&T) -> D,
    ) -> Result<D::Out, MutexGuard<'_, T>> {
        let deadline = Instant::now() + timeout;
        let mut value = self.lock();
        loop {
            if let Ok(out) = cond(&value).done() {
                return Ok(out);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(value);
            }
            value = self.wait(value, Some(deadline - now));
        }
    }

    /// The value, locked. A change made through the guard wakes no one until
    /// [`Watched::notify`].
    pub fn lock(&self) -> MutexGuard<'_, T> {
        self.value.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes every waiter (after a change made through [`Watched::lock`]).
    pub fn notify(&self) {
        self.changed.notify_all();
    }

    /// Releases `guard` until the next notification (or `timeout`), then locks again: for
    /// loops that change the value while they wait (the fault proxy's held requests).
    pub fn wait<'a>(
        &'a self,
        guard: MutexGuard<'a, T>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, T> {
        match timeout {
            Some(t) => {
                self.changed
                    .wait_timeout(guard, t)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => self.changed.wait(guard).unwrap_or_else(|e| e.into_inner()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn until_returns_the_first_value_that_holds() {
        let mut n = 0;
        let got = until_every(
            "n reaches 3",
            Duration::from_secs(5),
            Duration::ZERO,
            || {
                n += 1;
                (n >= 3).then_some(n)
            },
        );
        assert_eq!(got, 3);
    }

    #[test]
    #[should_panic(expected = "timed out after 10ms waiting for never")]
    fn until_panics_naming_what_it_waited_for() {
        until("never", Duration::from_millis(10), || false);
    }

    #[test]
    #[should_panic(expected = "timed out after 10ms waiting for the pods\nlog tail")]
    fn until_showing_adds_what_it_shows_to_the_panic() {
        until_showing(
            "the pods",
            Duration::from_millis(10),
            || false,
            || "log tail".into(),
        );
    }

    #[test]
    #[should_panic(expected = "timed out after 10ms waiting for pod-b\nlast seen: holder pod-a")]
    fn until_shows_what_the_condition_last_saw() {
        until("pod-b", Duration::from_millis(10), || {
            Err::<(), _>("holder pod-a")
        });
    }

    #[test]
    fn a_waiter_wakes_on_an_update_from_another_thread() {
        let w = Arc::new(Watched::new(0u32));
        let w2 = w.clone();
        let t = std::thread::spawn(move || w2.update(|n| *n = 7));
        let got = w.wait_until("the update", Duration::from_secs(5), |n| {
            (*n == 7).then_some(*n)
        });
        t.join().unwrap();
        assert_eq!(got, 7);
    }

    #[test]
    #[should_panic(expected = "timed out after 10ms waiting for more\nn is 1")]
    fn wait_until_showing_shows_the_value_it_timed_out_on() {
        let w = Watched::new(1u32);
        w.wait_until_showing(
            "more",
            Duration::from_millis(10),
            |n| *n > 1,
            |n| format!("n is {n}"),
        );
    }

    #[test]
    fn try_wait_until_gives_the_value_back_on_timeout() {
        let w = Watched::new(1u32);
        let err = w
            .try_wait_until(Duration::from_millis(10), |n| *n > 1)
            .unwrap_err();
        assert_eq!(*err, 1);
    }
}
