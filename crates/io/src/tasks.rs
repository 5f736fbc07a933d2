//! Tasks owned by a connection.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio_util::task::TaskTracker;

/// The tasks one connection spawns (a handler per stream): spawned for the price of a counter
/// and an entry in a list of abort handles, waited for within a grace period when the
/// connection ends, and aborted if they outlive it or if the group itself is dropped (say,
/// because the connection's own task was aborted).
///
/// A `JoinSet` does the same but keeps every task on a list that must be reaped, which costs a
/// lock and more per task on a path that runs once per gRPC call. A cancellation token shared
/// by the tasks costs more still: each task clones it and waits on it, a registration under a
/// lock at its first poll and another when it ends. Abort handles cost nothing while the task
/// runs; the list of them is pruned of finished tasks as it grows, so it holds at most about
/// twice the tasks still running.
#[derive(Debug, Default)]
pub struct TaskGroup {
    tracker: TaskTracker,
    /// The tasks' abort handles, finished ones included until the next pruning.
    handles: Mutex<Vec<AbortHandle>>,
}

/// Below this many handles the list is never pruned.
const PRUNE_FLOOR: usize = 32;

impl TaskGroup {
    /// An empty group.
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` on the runtime as a member of the group.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        // Boxed once here: a handler's future is large (a whole downstream call), and spawning
        // moves the task's future several times; moving a pointer is cheaper than copying it.
        let handle = self.tracker.spawn(Box::pin(task)).abort_handle();
        let mut handles = self.handles.lock().unwrap_or_else(|e| e.into_inner());
        if handles.len() >= PRUNE_FLOOR && handles.len() >= 2 * self.tracker.len() {
            handles.retain(|h| !h.is_finished());
        }
        handles.push(handle);
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// True when no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Waits up to `grace` for every task to end, then aborts those still running and waits
    /// for them to stop. Returns how many were aborted.
    pub async fn finish(&self, grace: Duration) -> usize {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let left = self.tracker.len();
        self.abort_all();
        self.tracker.wait().await;
        left
    }

    fn abort_all(&self) {
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        for h in handles {
            h.abort();
        }
    }
}

impl Drop for TaskGroup {
    fn drop(&mut self) {
        self.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Live(Arc<AtomicUsize>);
    impl Drop for Live {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn stuck(live: &Arc<AtomicUsize>) -> impl Future<Output = ()> + Send + 'static {
        live.fetch_add(1, Ordering::SeqCst);
        let guard = Live(live.clone());
        async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn finish_waits_for_the_quick_and_cancels_the_stuck() {
        let live = Arc::new(AtomicUsize::new(0));
        let group = TaskGroup::new();
        group.spawn(async { tokio::time::sleep(Duration::from_secs(1)).await });
        group.spawn(stuck(&live));
        tokio::task::yield_now().await;
        assert_eq!(group.len(), 2);
        assert_eq!(group.finish(Duration::from_secs(5)).await, 1);
        assert_eq!(live.load(Ordering::SeqCst), 0);
        assert!(group.is_empty());
    }

    #[tokio::test]
    async fn the_list_of_handles_stays_near_the_tasks_running() {
        let group = TaskGroup::new();
        for _ in 0..10_000 {
            group.spawn(async {});
            tokio::task::yield_now().await;
        }
        let kept = group.handles.lock().unwrap().len();
        assert!(
            kept <= 2 * PRUNE_FLOOR,
            "{kept} handles kept for finished tasks"
        );
        // A stuck task among them is still aborted when the group goes.
        let live = Arc::new(AtomicUsize::new(0));
        group.spawn(stuck(&live));
        tokio::task::yield_now().await;
        drop(group);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn dropping_the_group_cancels_its_tasks() {
        let live = Arc::new(AtomicUsize::new(0));
        let group = TaskGroup::new();
        group.spawn(stuck(&live));
        tokio::task::yield_now().await;
        assert_eq!(live.load(Ordering::SeqCst), 1);
        drop(group);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(live.load(Ordering::SeqCst), 0);
    }
}
