//! Ownership of a connection's background tasks.

use tokio::task::{AbortHandle, JoinHandle};

/// The reader and writer tasks of one downstream connection, aborted when the connection's
/// handle is dropped: a client that is gone leaves no task waiting on a socket behind it.
#[derive(Debug, Default)]
pub(crate) struct ConnTasks(Vec<AbortHandle>);

impl ConnTasks {
    /// Takes ownership of `task`.
    pub(crate) fn own<T>(&mut self, task: JoinHandle<T>) {
        self.0.push(task.abort_handle());
    }
}

impl Drop for ConnTasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
