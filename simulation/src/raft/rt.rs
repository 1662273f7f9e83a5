//! The simulation's openraft `AsyncRuntime`: tokio's, with two changes.
//!
//! - `thread_rng()` is seeded from the run's seed (openraft draws election timeouts
//!   from it; the default `TokioRuntime` uses the OS-seeded `rand::thread_rng`).
//! - Every task spawned while a replica's [`NodeKey`] is in scope is registered under
//!   that key, so a crash can abort every task of that replica incarnation at once
//!   (RaftCore, the state-machine worker, the tick and replication tasks, the syncer,
//!   in-flight RPC handlers) without awaiting a graceful shutdown.
//!
//! Everything runs on one current-thread tokio runtime with a paused clock, so the
//! thread-local state here belongs to exactly one run.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::task::{AbortHandle, JoinHandle};

/// One incarnation of one replica: a restart gets a new incarnation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeKey {
    pub node: u64,
    pub incarnation: u64,
}

tokio::task_local! {
    static NODE: NodeKey;
}

/// What the run does when a replica incarnation must stop at once (an fsync error).
pub type FatalHandler = Rc<dyn Fn(NodeKey, String)>;

thread_local! {
    static RNG_STATE: Cell<u64> = const { Cell::new(0) };
    static TASKS: RefCell<BTreeMap<NodeKey, Vec<AbortHandle>>> = const { RefCell::new(BTreeMap::new()) };
    static FATAL: RefCell<Option<FatalHandler>> = const { RefCell::new(None) };
}

/// Finished handles are pruned when a replica's list grows past this.
const TASKS_PRUNE_AT: usize = 64;

/// Starts a run on this thread: seeds `thread_rng` and forgets any earlier run's tasks.
pub fn begin_run(seed: u64) {
    RNG_STATE.with(|state| state.set(splitmix64(seed ^ 0x5157_5241_4654)));
    TASKS.with(|tasks| tasks.borrow_mut().clear());
    set_fatal_handler(None);
}

/// Sets (or clears) the run's handler for [`fatal`].
pub fn set_fatal_handler(handler: Option<FatalHandler>) {
    FATAL.with(|slot| *slot.borrow_mut() = handler);
}

/// Replica incarnation `key` hit an error it must stop on (an fsync error: retrying
/// an fsync can report success for data the kernel dropped). The run's handler
/// crashes it at once, from inside one of its own tasks: the caller must not go on
/// (it awaits forever; the abort drops it).
pub fn fatal(key: NodeKey, reason: String) {
    let handler = FATAL.with(|slot| slot.borrow().clone());
    if let Some(handler) = handler {
        handler(key, reason);
    }
}

pub fn splitmix64(value: u64) -> u64 {
    let mut z = value.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Spawns `future` as a task of replica incarnation `key` (aborted by [`kill`]).
pub fn spawn_in<F>(key: NodeKey, future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handle = tokio::spawn(NODE.scope(key, future));
    TASKS.with(|tasks| {
        let mut tasks = tasks.borrow_mut();
        let list = tasks.entry(key).or_default();
        if list.len() >= TASKS_PRUNE_AT {
            list.retain(|task| !task.is_finished());
        }
        list.push(handle.abort_handle());
    });
    handle
}

/// Runs `future` with `key` in scope, so whatever it spawns belongs to that replica.
pub async fn within<F: Future>(key: NodeKey, future: F) -> F::Output {
    NODE.scope(key, future).await
}

/// A crash: aborts every task of replica incarnation `key`. Aborted tasks are never
/// polled again; their futures are dropped when the scheduler next sees them.
pub fn kill(key: NodeKey) -> usize {
    let handles = TASKS.with(|tasks| tasks.borrow_mut().remove(&key).unwrap_or_default());
    let live = handles.iter().filter(|task| !task.is_finished()).count();
    for handle in handles {
        handle.abort();
    }
    live
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct SimRuntime;

impl AsyncRuntime for SimRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = tokio::time::Instant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = StdRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        match NODE.try_with(|key| *key) {
            Ok(key) => spawn_in(key, future),
            Err(_) => tokio::spawn(future),
        }
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    /// A fresh generator per call, seeded from the run's seed and the number of calls
    /// so far: the sequence of election timeouts is a function of the seed.
    fn thread_rng() -> StdRng {
        let seed = RNG_STATE.with(|state| {
            let next = splitmix64(state.get());
            state.set(next);
            next
        });
        StdRng::seed_from_u64(seed)
    }

    fn oneshot<T: OptionalSend>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}
