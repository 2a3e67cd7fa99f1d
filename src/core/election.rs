//! Lease election rules, as client-go's `tools/leaderelection` applies them.
//!
//! Only locally observed changes count: when the lease record changes, this process notes
//! the monotonic time it saw the change, and the lease stays valid until that moment plus
//! `leaseDurationSeconds`. `renewTime` is never compared with the local clock, so clock
//! offset between nodes is harmless (a different clock *rate* is not, as in client-go).
//! There is no fencing in the Lease itself; label writes are fenced separately (`labels`).

use crate::api::types::{micro_time, Lease, LeaseRecord};
use std::time::{Duration, Instant, SystemTime};

/// A Lease together with the local time its record was last seen changing.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    pub lease: Lease,
    pub observed_at: Instant,
}

impl Observed {
    /// Records a fresh read. The observation time moves only when the record changed:
    /// a re-read of the same record must not extend a dead holder's lease.
    pub fn update(prev: Option<&Observed>, lease: Lease, now: Instant) -> Observed {
        let observed_at = match prev {
            Some(p) if p.lease.record == lease.record => p.observed_at,
            _ => now,
        };
        Observed { lease, observed_at }
    }

    pub fn holder(&self) -> &str {
        &self.lease.record.holder
    }

    /// When the current holder's claim runs out, by our own clock.
    pub fn expires_at(&self) -> Instant {
        let secs = self.lease.record.duration_seconds.max(0) as u64;
        self.observed_at + Duration::from_secs(secs)
    }

    /// Free (empty holder: a release, no wait) or expired by observed time.
    pub fn is_free(&self, now: Instant) -> bool {
        self.holder().is_empty() || now >= self.expires_at()
    }
}

/// The record to write when `me` acquires or renews. Renewing (or resuming a lease that
/// already names `me`) keeps `acquireTime` and `leaseTransitions`; a takeover counts one
/// more transition. A create starts at 0 transitions, as client-go does.
pub fn claim(
    current: Option<&LeaseRecord>,
    me: &str,
    wall: SystemTime,
    duration: Duration,
) -> LeaseRecord {
    let now = micro_time(wall);
    match current {
        Some(c) if c.holder == me => LeaseRecord {
            holder: me.to_string(),
            duration_seconds: duration.as_secs() as i64,
            acquire_time: c.acquire_time.clone().or_else(|| Some(now.clone())),
            renew_time: Some(now),
            transitions: c.transitions,
            handover_to: String::new(),
        },
        other => LeaseRecord {
            holder: me.to_string(),
            duration_seconds: duration.as_secs() as i64,
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            transitions: other.map_or(0, |c| c.transitions + 1),
            handover_to: String::new(),
        },
    }
}

/// The record of a release: no holder, a one-second duration, times set to now,
/// transitions kept (client-go's ReleaseOnCancel); `to` names the pod it is meant for
/// (empty: anyone).
pub fn release(current: &LeaseRecord, wall: SystemTime, to: &str) -> LeaseRecord {
    let now = micro_time(wall);
    LeaseRecord {
        holder: String::new(),
        duration_seconds: 1,
        acquire_time: Some(now.clone()),
        renew_time: Some(now),
        transitions: current.transitions,
        handover_to: to.to_string(),
    }
}

/// Whether `r` is a release as `release` writes it (and client-go's ReleaseOnCancel): no
/// holder and a duration of at most one second. The Lease emptied by hand, duration
/// kept, is not a release: its holder may not have seen it.
pub fn is_release(r: &LeaseRecord) -> bool {
    r.holder.is_empty() && r.duration_seconds <= 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn lease(holder: &str, rv: &str, renew: &str) -> Lease {
        Lease {
            resource_version: rv.into(),
            metadata: serde_json::json!({"name": "e", "resourceVersion": rv}),
            record: LeaseRecord {
                holder: holder.into(),
                duration_seconds: 15,
                acquire_time: Some("2026-01-01T00:00:00.000000Z".into()),
                renew_time: Some(renew.into()),
                transitions: 4,
                handover_to: String::new(),
            },
        }
    }

    #[test]
    fn observation_time_moves_only_on_change() {
        let t0 = Instant::now();
        let a = Observed::update(None, lease("x", "1", "r1"), t0);
        assert_eq!(a.observed_at, t0);
        // Same record, new resourceVersion (someone touched metadata): no extension.
        let b = Observed::update(Some(&a), lease("x", "2", "r1"), t0 + Duration::from_secs(5));
        assert_eq!(b.observed_at, t0);
        // A renewal changes renewTime: the lease is fresh again.
        let c = Observed::update(Some(&b), lease("x", "3", "r2"), t0 + Duration::from_secs(6));
        assert_eq!(c.observed_at, t0 + Duration::from_secs(6));
    }

    #[test]
    fn expiry_by_local_clock_only() {
        let t0 = Instant::now();
        // renewTime far in the past (clock skew) does not matter: observation does.
        let o = Observed::update(None, lease("x", "1", "1999-01-01T00:00:00.000000Z"), t0);
        assert!(!o.is_free(t0));
        assert!(!o.is_free(t0 + Duration::from_millis(14_999)));
        assert!(o.is_free(t0 + Duration::from_secs(15)));
        assert_eq!(o.expires_at(), t0 + Duration::from_secs(15));
    }

    #[test]
    fn released_lease_is_free_at_once() {
        let t0 = Instant::now();
        let o = Observed::update(None, lease("", "1", "r"), t0);
        assert!(o.is_free(t0));
    }

    #[test]
    fn claim_rules() {
        let wall = UNIX_EPOCH + Duration::from_secs(1_767_323_045);
        let d = Duration::from_secs(15);
        let created = claim(None, "me", wall, d);
        assert_eq!(created.transitions, 0);
        assert_eq!(created.acquire_time, created.renew_time);
        assert_eq!(
            created.renew_time.as_deref(),
            Some("2026-01-02T03:04:05.000000Z")
        );

        let other = lease("you", "1", "r").record;
        let taken = claim(Some(&other), "me", wall, d);
        assert_eq!(taken.transitions, 5);
        assert_eq!(taken.holder, "me");
        assert_eq!(taken.acquire_time, taken.renew_time);

        let mine = lease("me", "1", "r").record;
        let renewed = claim(Some(&mine), "me", wall, d);
        assert_eq!(renewed.transitions, 4);
        assert_eq!(renewed.acquire_time, mine.acquire_time);
        assert_ne!(renewed.renew_time, mine.renew_time);

        let freed = release(&mine, wall, "");
        assert_eq!(freed.holder, "");
        assert_eq!(freed.duration_seconds, 1);
        assert_eq!(freed.transitions, 4);
        let retaken = claim(Some(&freed), "you", wall, d);
        assert_eq!(retaken.transitions, 5);
    }
}
