//! Tasks owned by a connection.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

/// The tasks one connection spawns (a handler per stream): spawned for the price of a counter,
/// waited for within a grace period when the connection ends, and cancelled if they outlive it
/// or if the group itself is dropped (say, because the connection's own task was aborted).
///
/// A `JoinSet` does the same but keeps every task on a list that must be reaped, which costs a
/// lock and more per task on a path that runs once per gRPC call.
#[derive(Debug)]
pub struct TaskGroup {
    tracker: TaskTracker,
    cancel: CancellationToken,
    _cancel_on_drop: DropGuard,
}

impl Default for TaskGroup {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskGroup {
    /// An empty group.
    pub fn new() -> Self {
        let cancel = CancellationToken::new();
        Self {
            tracker: TaskTracker::new(),
            _cancel_on_drop: cancel.clone().drop_guard(),
            cancel,
        }
    }

    /// Runs `task` on the runtime as a member of the group.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let cancel = self.cancel.clone();
        // Boxed once here: a handler's future is large (a whole downstream call), and spawning
        // moves the task's future several times; moving a pointer is cheaper than copying it.
        let task = Box::pin(task);
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                () = cancel.cancelled() => {}
                () = task => {}
            }
        });
    }

    /// Tasks still running.
    pub fn len(&self) -> usize {
        self.tracker.len()
    }

    /// True when no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Waits up to `grace` for every task to end, then cancels those still running and waits
    /// for them to stop. Returns how many were cancelled.
    pub async fn finish(&self, grace: Duration) -> usize {
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return 0;
        }
        let left = self.tracker.len();
        self.cancel.cancel();
        self.tracker.wait().await;
        left
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
