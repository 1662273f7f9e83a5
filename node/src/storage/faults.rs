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

/// The crash points of the storage code, each with how many times a replica
/// typically passes it in a simulated run (an armed point fires at a pass drawn up to
/// that many): a point passed by every apply is armed further off than one passed once
/// per install.
pub const CRASH_POINTS: &[(&str, u32)] = &[
    ("apply.committed", 200),
    ("install.file_kept", 1),
    ("install.marked", 1),
    ("install.cleared", 1),
    ("install.records", 1),
    ("install.ids_ingested", 1),
    ("install.committed", 1),
    ("install.durable", 1),
    ("dedup_rebuild.ingested", 1),
];

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
    crash: Mutex<CrashPoint>,
}

#[cfg(feature = "sim-faults")]
struct CrashPoint {
    /// The armed point and the passes left before it fires.
    armed: Option<(&'static str, u32)>,
    /// The point that fired; every later point fires too (the process is dead).
    fired: Option<&'static str>,
}

impl StoreFaults {
    /// No faults.
    pub fn none() -> StoreFaults {
        StoreFaults::default()
    }

    /// `planted` (if any), and `armed`: a crash point (one of [`CRASH_POINTS`]) that
    /// fires at its `n`-th pass, `n >= 1`.
    #[cfg(feature = "sim-faults")]
    pub fn new(planted: Option<StorageBug>, armed: Option<(&'static str, u32)>) -> StoreFaults {
        StoreFaults {
            plan: Some(Arc::new(FaultPlan {
                planted,
                crash: Mutex::new(CrashPoint { armed, fired: None }),
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

    /// A point where the process may die: if this point is armed and this is its
    /// pass, this panics with [`CrashPointReached`] (and so does every later point of
    /// this store).
    #[inline]
    pub fn crash_point(&self, point: &'static str) {
        #[cfg(feature = "sim-faults")]
        if let Some(plan) = &self.plan {
            debug_assert!(
                CRASH_POINTS.iter().any(|(name, _)| *name == point),
                "crash point {point} is listed in CRASH_POINTS"
            );
            let mut crash = plan.crash.lock().expect("crash point lock");
            let fires = crash.fired.is_some()
                || match &mut crash.armed {
                    Some((armed, passes)) if *armed == point => {
                        *passes = passes.saturating_sub(1);
                        *passes == 0
                    }
                    _ => false,
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
            plan.crash.lock().expect("crash point lock").armed = None;
        }
    }

    /// The crash point that fired in this store, if one did.
    pub fn crashed_at(&self) -> Option<&'static str> {
        #[cfg(feature = "sim-faults")]
        {
            self.plan
                .as_ref()
                .and_then(|plan| plan.crash.lock().expect("crash point lock").fired)
        }
        #[cfg(not(feature = "sim-faults"))]
        {
            None
        }
    }
}
