//! Graceful drain: one handle signals, every connection watches.

use tokio::sync::watch;

/// Held by whoever decides when to drain.
#[derive(Debug)]
pub struct DrainHandle(watch::Sender<bool>);

/// Watched by the accept loop and every connection.
#[derive(Debug, Clone)]
pub struct Drain(watch::Receiver<bool>);

/// A new drain pair: the handle that signals, and the [`Drain`] to give to servers (clone it
/// for each).
pub fn channel() -> (DrainHandle, Drain) {
    let (tx, rx) = watch::channel(false);
    (DrainHandle(tx), Drain(rx))
}

impl DrainHandle {
    /// Starts draining everything that watches this handle.
    pub fn drain(&self) {
        let _ = self.0.send(true);
    }
}

impl Drain {
    /// A drain that is never signalled.
    pub fn never() -> Drain {
        // One sender for the whole process, never signalled and never dropped, so `signaled`
        // never resolves; every `never()` drain subscribes to it.
        static NEVER: std::sync::OnceLock<watch::Sender<bool>> = std::sync::OnceLock::new();
        Drain(NEVER.get_or_init(|| watch::channel(false).0).subscribe())
    }

    /// True once draining has started.
    pub fn is_draining(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once draining starts (or the handle is dropped).
    pub async fn signaled(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|d| *d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_drains_share_one_sender() {
        // Each call used to create (and leak) a sender of its own.
        let a = Drain::never();
        let b = Drain::never();
        assert!(a.0.same_channel(&b.0));
        assert!(!a.is_draining());
    }
}
