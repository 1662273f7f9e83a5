//! Faults the simulation injects into the storage code (docs/SIMULATION.md, "The
//! real-disk mode"): planted bugs, to show that its checkers catch them, and crash
//! points, where a replica's process dies in the middle of a change made in several
//! steps (an install, a dedup index rebuild).
//!
//! A store's faults are its own ([`StoreFaults`], carried by the store's keyspaces): the
//! replicas of a run each have theirs, and runs in parallel never share any.
//!
//! Compiled in only with the `sim-faults` feature, which `trail-sim` turns on. Without
//! it [`StoreFaults`] is empty, every bug is off, every crash point does nothing, and
//! the calls compile away.

#[cfg(feature = "sim-faults")]
use std::sync::{Arc, Mutex};

/// A bug the simulation can plant in the storage code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StorageBug {
    /// A snapshot install leaves the new dedup index empty instead of loading the
    /// snapshot's event ids into it: the replica forgets every id it installed.
    ClearDedupOnInstall,
    /// An install writes no `installing` marker: a crash in its middle leaves a cleared
    /// or half-loaded state under the old applied id, and nothing finishes it at open.
    InstallSkipsMarker,
    /// Opening the state machine does not put the ids of the events behind the dedup
    /// index's frontier back in the overlay: ids applied since the last dedup run are
    /// forgotten by a restart.
    OverlayNotRebuiltAtOpen,
}

impl StorageBug {
    pub const ALL: [StorageBug; 3] = [
        StorageBug::ClearDedupOnInstall,
        StorageBug::InstallSkipsMarker,
        StorageBug::OverlayNotRebuiltAtOpen,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StorageBug::ClearDedupOnInstall => "clear-dedup-on-install",
            StorageBug::InstallSkipsMarker => "install-skips-marker",
            StorageBug::OverlayNotRebuiltAtOpen => "overlay-not-rebuilt-at-open",
        }
    }

    pub fn parse(name: &str) -> Option<StorageBug> {
        StorageBug::ALL.into_iter().find(|bug| bug.name() == name)
    }
}

/// The panic payload of a crash point that fired: the harness treats the replica as a
/// process that died there.
#[derive(Debug, Clone, Copy)]
pub struct CrashPointReached(pub &'static str);

/// One store's faults: none in `traild`.
#[derive(Clone, Default)]
pub struct StoreFaults {
    #[cfg(feature = "sim-faults")]
    plan: Option<Arc<FaultPlan>>,
}

#[cfg(feature = "sim-faults")]
struct FaultPlan {
    planted: Option<StorageBug>,
    crash: Mutex<CrashPoints>,
}

#[cfg(feature = "sim-faults")]
struct CrashPoints {
    /// splitmix64 state: the draws of this store's crash points.
    state: u64,
    /// Probability that a crash point, when passed, fires.
    rate: f64,
    /// The point that fired; every later point fires too (the process is dead).
    fired: Option<&'static str>,
}

impl StoreFaults {
    /// No faults.
    pub fn none() -> StoreFaults {
        StoreFaults::default()
    }

    /// `planted` (if any), and crash points that each fire with probability
    /// `crash_rate` when passed, drawn from `seed`.
    #[cfg(feature = "sim-faults")]
    pub fn new(planted: Option<StorageBug>, crash_rate: f64, seed: u64) -> StoreFaults {
        StoreFaults {
            plan: Some(Arc::new(FaultPlan {
                planted,
                crash: Mutex::new(CrashPoints {
                    state: seed,
                    rate: crash_rate,
                    fired: None,
                }),
            })),
        }
    }

    /// Whether `bug` is planted in this store.
    #[inline]
    pub fn planted(&self, bug: StorageBug) -> bool {
        #[cfg(feature = "sim-faults")]
        {
            self.plan
                .as_ref()
                .is_some_and(|plan| plan.planted == Some(bug))
        }
        #[cfg(not(feature = "sim-faults"))]
        {
            let _ = bug;
            false
        }
    }

    /// A point where the process may die: with the seed's probability, this panics with
    /// [`CrashPointReached`] (and so does every later point of this store).
    #[inline]
    pub fn crash_point(&self, point: &'static str) {
        #[cfg(feature = "sim-faults")]
        if let Some(plan) = &self.plan {
            let mut crash = plan.crash.lock().expect("crash points lock");
            let fires = crash.fired.is_some() || {
                crash.state = crash.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = crash.state;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                ((z >> 11) as f64 / (1u64 << 53) as f64) < crash.rate
            };
            if fires {
                crash.fired.get_or_insert(point);
                drop(crash);
                std::panic::panic_any(CrashPointReached(point));
            }
        }
        #[cfg(not(feature = "sim-faults"))]
        let _ = point;
    }

    /// No crash point fires from now on (unless one fired already).
    pub fn disarm(&self) {
        #[cfg(feature = "sim-faults")]
        if let Some(plan) = &self.plan {
            plan.crash.lock().expect("crash points lock").rate = 0.0;
        }
    }

    /// The crash point that fired in this store, if one did.
    pub fn crashed_at(&self) -> Option<&'static str> {
        #[cfg(feature = "sim-faults")]
        {
            self.plan
                .as_ref()
                .and_then(|plan| plan.crash.lock().expect("crash points lock").fired)
        }
        #[cfg(not(feature = "sim-faults"))]
        {
            None
        }
    }
}
