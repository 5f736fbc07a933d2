//! Forwarded streams waiting for their downstream's first response, checked by one task.
//!
//! A timer per stream would cost a timer-wheel registration (and, often, a wake-up of the I/O
//! driver) for every stream, although nearly every downstream answers within milliseconds.
//! Instead each watched stream takes a slot in a shared table, and one task per proxy checks
//! the table a few times a second, waking the streams whose downstream stayed silent too long.
//! Its precision is the check interval, [`TICK`]: a timeout fires between one and two ticks
//! late.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

/// How often the table is checked: a silent downstream is noticed within this much of its
/// timeout.
pub(crate) const TICK: Duration = Duration::from_millis(250);

/// One forwarded stream's wait for the downstream's first event.
///
/// The clock runs from the caller's last message (or half-close), so a caller that keeps
/// sending (a client stream) is never cut off for the downstream's silence: only a downstream
/// that leaves a caller waiting is. The stream itself reads no clock: it raises a flag when the
/// caller sends, and the checking task, which reads the clock once per check, restarts the
/// stream's clock when it finds the flag raised.
pub(crate) struct FirstResponse {
    /// The downstream sent something: nothing more to watch (and nothing more to record).
    seen: AtomicBool,
    /// The downstream stayed silent past the timeout.
    expired: AtomicBool,
    /// The caller sent something since the last check.
    active: AtomicBool,
    /// Fired by the checking task when `expired` is set. (A one-shot channel the stream's
    /// task waits on, rather than a `Notify`, whose waiter registers and unregisters under a
    /// lock at every wake-up of that task.)
    silent: Mutex<Option<oneshot::Sender<()>>>,
    timeout: Duration,
}

impl FirstResponse {
    /// A stream's watch, and what tells its task that the downstream stayed silent too long.
    pub(crate) fn new(timeout: Duration) -> (Self, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let first = Self {
            seen: AtomicBool::new(false),
            expired: AtomicBool::new(false),
            active: AtomicBool::new(false),
            silent: Mutex::new(Some(tx)),
            timeout,
        };
        (first, rx)
    }

    pub(crate) fn seen(&self) -> bool {
        self.seen.load(Ordering::Relaxed)
    }

    pub(crate) fn expired(&self) -> bool {
        self.expired.load(Ordering::Relaxed)
    }

    /// The caller sent something: a plain store, and only until the downstream first answers.
    pub(crate) fn caller_active(&self) {
        if !self.seen() {
            self.active.store(true, Ordering::Relaxed);
        }
    }

    /// The downstream sent something. Called for every downstream event: once `seen` is set
    /// this is a load, not a store. Nobody is woken: the stream's task waits for its end, and
    /// `seen` only rules an expiry out.
    pub(crate) fn downstream_answered(&self) {
        if !self.seen() {
            self.seen.store(true, Ordering::Relaxed);
        }
    }
}

/// A watched stream and, once the checking task has seen it, when its downstream's silence
/// began (the last check that found the caller active, or the first check).
struct Slot {
    first: Arc<FirstResponse>,
    silent_since: Option<Instant>,
}

impl Slot {
    /// Marks the stream expired (and wakes its waiter) if the downstream has been silent for
    /// the timeout since the caller's last message, as far as the checks can tell.
    fn check(&mut self, now: Instant) {
        let f = &self.first;
        if f.seen() || f.expired() {
            return;
        }
        let since = match self.silent_since {
            Some(since) if !f.active.swap(false, Ordering::Relaxed) => since,
            _ => {
                self.silent_since = Some(now);
                return;
            }
        };
        if since + f.timeout <= now {
            f.expired.store(true, Ordering::Relaxed);
            if let Some(tx) = f.silent.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(());
            }
        }
    }
}

/// The watched streams, in slots reused as streams come and go (no hashing per stream).
#[derive(Default)]
struct Table {
    slots: Vec<Option<Slot>>,
    /// Empty slots, to be reused first.
    free: Vec<usize>,
    /// The checking task, while streams are watched; it ends when the table empties.
    checker: Option<tokio::task::AbortHandle>,
}

impl Table {
    fn insert(&mut self, first: Arc<FirstResponse>) -> usize {
        let first = Slot {
            first,
            silent_since: None,
        };
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = Some(first);
                i
            }
            None => {
                self.slots.push(Some(first));
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) -> Option<Slot> {
        let taken = self.slots.get_mut(i).and_then(Option::take);
        if taken.is_some() {
            self.free.push(i);
        }
        taken
    }

    fn is_empty(&self) -> bool {
        self.free.len() == self.slots.len()
    }
}

/// The table of watched streams and its checking task (aborted when the watch is dropped).
#[derive(Default)]
pub(crate) struct SilenceWatch {
    table: Arc<Mutex<Table>>,
}

impl std::fmt::Debug for SilenceWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SilenceWatch").finish_non_exhaustive()
    }
}

/// A stream's slot in the table, given up when dropped.
pub(crate) struct Watched {
    table: Weak<Mutex<Table>>,
    slot: usize,
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(table) = self.table.upgrade() {
            // Dropped after the lock.
            let removed = table
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(self.slot);
            drop(removed);
        }
    }
}

impl SilenceWatch {
    /// Watches `first` until the returned slot is dropped.
    pub(crate) fn watch(&self, first: Arc<FirstResponse>) -> Watched {
        let mut t = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let slot = t.insert(first);
        if t.checker.is_none() {
            let table = Arc::downgrade(&self.table);
            t.checker = Some(tokio::spawn(check(table)).abort_handle());
        }
        Watched {
            table: Arc::downgrade(&self.table),
            slot,
        }
    }
}

impl Drop for SilenceWatch {
    fn drop(&mut self) {
        if let Some(c) = self
            .table
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .checker
            .take()
        {
            c.abort();
        }
    }
}

/// Checks the table every [`TICK`] until it is empty (or gone).
async fn check(table: Weak<Mutex<Table>>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(table) = table.upgrade() else { return };
        let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
        if t.is_empty() {
            t.checker = None;
            return;
        }
        let now = Instant::now();
        for slot in t.slots.iter_mut().flatten() {
            slot.check(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_expires_and_an_answered_one_does_not() {
        let watch = SilenceWatch::default();
        let (silent, mut silent_end) = FirstResponse::new(Duration::from_secs(1));
        let (answered, mut answered_end) = FirstResponse::new(Duration::from_secs(1));
        let (silent, answered) = (Arc::new(silent), Arc::new(answered));
        let _a = watch.watch(silent.clone());
        let _b = watch.watch(answered.clone());
        answered.downstream_answered();
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(!silent.expired());
        silent.caller_active();
        tokio::time::sleep(Duration::from_millis(900)).await;
        assert!(
            !silent.expired(),
            "the caller's message restarted the clock"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(silent.expired());
        assert_eq!(
            silent_end.try_recv(),
            Ok(()),
            "the silent stream's task was told"
        );
        assert!(!answered.expired());
        assert!(
            answered_end.try_recv().is_err(),
            "the answered stream's task was not"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_checker_stops_when_nothing_is_watched() {
        let watch = SilenceWatch::default();
        let slot = watch.watch(Arc::new(FirstResponse::new(Duration::from_secs(1)).0));
        assert!(watch.table.lock().unwrap().checker.is_some());
        drop(slot);
        tokio::time::sleep(TICK * 3).await;
        assert!(watch.table.lock().unwrap().checker.is_none());
        assert!(watch.table.lock().unwrap().is_empty());
        // A freed slot is taken again: the table grows with the streams watched at once.
        let _again = watch.watch(Arc::new(FirstResponse::new(Duration::from_secs(1)).0));
        assert_eq!(watch.table.lock().unwrap().slots.len(), 1);
    }
}
