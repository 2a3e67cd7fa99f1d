//! The contract between the core and the controller, as raft-rs's `Ready` is between
//! `RawNode` and its driver: what goes in (`Now`, `Settings`, `Observation`), what comes
//! out (`Action`, `Notice`, `Summary`), and how the driver answers (`Outcome`).

use super::labels::{Keys, Patch};
use crate::api::types::{Lease, LeaseRecord, Pod};
use crate::api::KubeError;
use std::time::{Duration, Instant, SystemTime};

/// The current time, both clocks: monotonic for decisions, wall for Lease timestamps.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    pub mono: Instant,
    pub wall: SystemTime,
}

impl Now {
    pub fn system() -> Now {
        Now {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// Timings and names the core needs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub me: String,
    pub keys: Keys,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub resync_period: Duration,
    /// Pods in this zone (`topology.kubernetes.io/zone`) are preferred at equal priority.
    pub prefer_zone: Option<String>,
    /// How long a more preferred pod must have been a ready participant before the
    /// leader hands over to it; None: never fail back.
    pub failback_after: Option<Duration>,
}

/// Something the sensors saw.
#[derive(Debug, Clone)]
pub enum Observation {
    /// The Lease as listed or watched; None: it does not exist.
    Lease(Option<Lease>),
    /// Every labeled pod (after a list): replaces the cache.
    PodsListed(Vec<Pod>),
    PodChanged(Pod),
    /// Deleted, or no longer carries the leadership label.
    PodGone(Pod),
    /// This pod, read directly (at start).
    OwnPod(Pod),
    /// SIGTERM or SIGINT.
    Signal,
    /// Whether the Lease sensor is in contact with the API server: `Lost` on the first
    /// failure of its list, watch or poll; `Restored` when one succeeds again (a watch
    /// answered 200, a list or poll answered). Silence only counts while in contact.
    LeaseContact(Contact),
}

/// See [`Observation::LeaseContact`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contact {
    Lost,
    Restored,
}

/// What the core wants done next.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    CreateLease(LeaseRecord),
    UpdateLease { base: Lease, record: LeaseRecord },
    GetLease,
    Patch(Patch),
    GetPod(String),
    ListPods,
    Exit(Exit),
}

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Drained as planned.
    Clean,
    /// The drain ran out of time before the API server answered.
    Incomplete,
    /// This pod was deleted and recreated under the same name: the process belongs to
    /// the old pod and leaves without touching the new one or the Lease.
    Replaced,
}

/// The result of an action.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Create, update or get of the Lease. A get that found nothing is Ok(None).
    Lease(Result<Option<Lease>, KubeError>),
    /// Patch or get of a pod.
    Pod(Result<Pod, KubeError>),
    Pods(Result<Vec<Pod>, KubeError>),
}

/// Something worth telling the outside world (events, metrics), drained by the
/// controller after each step.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    BecameLeader {
        transition: i64,
        resumed: bool,
    },
    SteppedDown(String),
    DrainStarted(String),
    /// Released the lease for a ready successor (`to`; empty: whoever takes it), and why.
    HandedOver {
        to: String,
        why: &'static str,
    },
    /// A switchover request on the Lease could not be carried out; it was removed.
    SwitchoverRefused(String),
    /// A renewal as leader, successful or not.
    Renewed {
        ok: bool,
    },
}

/// What the controller publishes about the core's state.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub is_leader: bool,
    /// The Lease holder as last seen; empty when free.
    pub holder: String,
    /// Ready participants, this pod included when it participates.
    pub participants: Vec<String>,
    pub draining: bool,
    /// The Lease and this pod have been read, and the API server answers (false again
    /// while the Lease sensor or our own Lease calls fail).
    pub connected: bool,
    /// When the last renewal (or acquisition) succeeded, by the local monotonic clock.
    pub renewed_at: Option<Instant>,
    /// This pod carries the leader value of the leadership label (as last seen).
    pub labeled_leader: bool,
}
