//! A bounded queue of stream events with one producer and one consumer, which can be spliced:
//! handed a sink that takes every later event directly, in the producer's own task.
//!
//! Splicing is how a forwarder takes itself off the hot path: the connection reader that
//! produces a stream's events then pushes each one straight into the other stream's sink (which
//! encodes it onto the other connection) instead of waking a task that reads the queue. Events
//! queued before the splice are moved into the sink first, under the same lock the producer
//! takes, so the order is kept.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::{Closed, Event, EventSink, Reset};

struct State {
    queue: VecDeque<Event>,
    // One consumer, so one waker. Producers' wakers are a list: besides the producer, a task
    // ending the stream from outside (a forwarder's deadline) may wait for room through a
    // splice. A task that polls again does not add a second copy of its waker.
    rx_waker: Option<Waker>,
    tx_wakers: Vec<Waker>,
    closed_wakers: Vec<Waker>,
    target: Option<Arc<dyn EventSink>>,
    tx_closed: bool,
    rx_closed: bool,
    /// A terminal event went through: nothing needs saying when the producer goes away.
    finished: bool,
}

struct Shared {
    state: Mutex<State>,
    depth: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a splice target is told when the producer goes away without a terminal event: its
/// connection closed, or the stream ended on the producer's side (its reader dropped it).
fn connection_closed() -> Event {
    Event::Reset(Reset {
        code: crate::ResetCode::Gone,
        message: "stream closed".into(),
        cancel_path: None,
    })
}

fn is_terminal(ev: &Event) -> bool {
    matches!(ev, Event::HalfClose | Event::End(_) | Event::Reset(_))
}

/// Stores `cx`'s waker in `slot` unless the one there already wakes the same task.
fn register(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// Adds `cx`'s waker to `list` unless a waker of the same task is there already.
fn register_in(list: &mut Vec<Waker>, cx: &Context<'_>) {
    if !list.iter().any(|w| w.will_wake(cx.waker())) {
        list.push(cx.waker().clone());
    }
}

fn wake_all(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}

/// A pipe holding up to `depth` events before its producer has to wait.
pub fn pipe(depth: usize) -> (PipeTx, PipeRx) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            queue: VecDeque::with_capacity(depth.min(4)),
            rx_waker: None,
            tx_wakers: Vec::new(),
            closed_wakers: Vec::new(),
            target: None,
            tx_closed: false,
            rx_closed: false,
            finished: false,
        }),
        depth: depth.max(1),
    });
    (PipeTx(shared.clone()), PipeRx(Some(shared)))
}

/// The producing end of a [`pipe`]. Dropping it (or [`PipeTx::close`]) ends the consumer's
/// stream: `None` from [`PipeRx::recv`], or, once spliced, a "connection closed" reset pushed
/// into the sink unless a terminal event already went through.
pub struct PipeTx(Arc<Shared>);

impl std::fmt::Debug for PipeTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PipeTx")
    }
}

impl PipeTx {
    /// Waits for room, then queues `ev` (or pushes it into the splice target).
    pub async fn send(&self, ev: Event) -> Result<(), Closed> {
        std::future::poll_fn(|cx| self.poll_ready(cx)).await;
        self.push(ev)
    }

    /// True once the consumer is gone (dropped without splicing).
    pub fn is_closed(&self) -> bool {
        self.0.lock().rx_closed
    }

    /// Resolves once the consumer is gone.
    pub async fn closed(&self) {
        std::future::poll_fn(|cx| self.poll_closed(cx)).await
    }

    /// Ends the stream from the producer's side (idempotent).
    pub fn close(&self) {
        let mut st = self.0.lock();
        if st.tx_closed {
            return;
        }
        st.tx_closed = true;
        match st.target.clone() {
            Some(target) => {
                let announce = !st.finished;
                st.finished = true;
                drop(st);
                if announce {
                    let _ = target.push(connection_closed());
                }
            }
            None => {
                let w = st.rx_waker.take();
                drop(st);
                if let Some(w) = w {
                    w.wake();
                }
            }
        }
    }
}

impl EventSink for PipeTx {
    fn push(&self, ev: Event) -> Result<(), Closed> {
        let mut st = self.0.lock();
        if st.rx_closed || st.tx_closed {
            return Err(Closed);
        }
        if is_terminal(&ev) {
            st.finished = true;
        }
        if let Some(target) = st.target.clone() {
            drop(st);
            return target.push(ev);
        }
        st.queue.push_back(ev);
        let w = st.rx_waker.take();
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
        Ok(())
    }

    fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.0.lock();
        if st.rx_closed {
            return Poll::Ready(());
        }
        if let Some(target) = st.target.clone() {
            drop(st);
            return target.poll_ready(cx);
        }
        if st.queue.len() < self.0.depth {
            return Poll::Ready(());
        }
        register_in(&mut st.tx_wakers, cx);
        Poll::Pending
    }

    fn poll_closed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.0.lock();
        if st.rx_closed {
            Poll::Ready(())
        } else {
            register_in(&mut st.closed_wakers, cx);
            Poll::Pending
        }
    }

    fn release(&self) {
        self.close();
    }
}

impl Drop for PipeTx {
    fn drop(&mut self) {
        self.close();
    }
}

/// The consuming end of a [`pipe`].
pub struct PipeRx(Option<Arc<Shared>>);

impl std::fmt::Debug for PipeRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PipeRx")
    }
}

impl PipeRx {
    fn shared(&self) -> &Shared {
        self.0
            .as_ref()
            .expect("a PipeRx is only emptied by splice, which consumes it")
    }

    /// The next event; `None` once the producer is gone and the queue is empty.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let shared = self.shared();
        let mut st = shared.lock();
        if let Some(ev) = st.queue.pop_front() {
            let wakers = std::mem::take(&mut st.tx_wakers);
            drop(st);
            wake_all(wakers);
            return Poll::Ready(Some(ev));
        }
        if st.tx_closed {
            return Poll::Ready(None);
        }
        register(&mut st.rx_waker, cx);
        Poll::Pending
    }

    /// See [`PipeRx::poll_recv`].
    pub async fn recv(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<Event> {
        let shared = self.shared();
        let mut st = shared.lock();
        let ev = st.queue.pop_front()?;
        let wakers = std::mem::take(&mut st.tx_wakers);
        drop(st);
        wake_all(wakers);
        Some(ev)
    }

    /// From now on every event goes straight into `target`, in the producer's task: the
    /// queued ones first, then each one as it is produced. A producer already gone is reported
    /// to `target` as a "connection closed" reset (unless a terminal event went through).
    pub fn splice(mut self, target: Arc<dyn EventSink>) {
        let Some(shared) = self.0.take() else { return };
        // Queued events are pushed without holding the lock (a sink may end up dropping this
        // pipe's producer); until the target is set, the producer keeps queueing, so drain
        // until the queue is empty and set the target in the same critical section.
        loop {
            let mut st = shared.lock();
            if st.queue.is_empty() {
                st.target = Some(target.clone());
                let announce = st.tx_closed && !st.finished;
                st.finished |= announce;
                let wakers = std::mem::take(&mut st.tx_wakers);
                drop(st);
                if announce {
                    let _ = target.push(connection_closed());
                }
                // Waiting producers now wait on the target's room instead.
                wake_all(wakers);
                return;
            }
            let batch = std::mem::take(&mut st.queue);
            let wakers = std::mem::take(&mut st.tx_wakers);
            drop(st);
            wake_all(wakers);
            for ev in batch {
                let _ = target.push(ev);
            }
        }
    }
}

impl Drop for PipeRx {
    fn drop(&mut self) {
        let Some(shared) = self.0.take() else { return };
        let mut st = shared.lock();
        st.rx_closed = true;
        st.queue.clear();
        let mut wakers = std::mem::take(&mut st.tx_wakers);
        wakers.append(&mut st.closed_wakers);
        drop(st);
        wake_all(wakers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(s: &'static str) -> Event {
        Event::Message(Bytes::from_static(s.as_bytes()))
    }

    /// A sink that records what it was given.
    #[derive(Default)]
    struct Record(Mutex<Vec<Event>>);

    impl EventSink for Record {
        fn push(&self, ev: Event) -> Result<(), Closed> {
            self.0.lock().unwrap().push(ev);
            Ok(())
        }
        fn poll_ready(&self, _: &mut Context<'_>) -> Poll<()> {
            Poll::Ready(())
        }
    }

    #[tokio::test]
    async fn events_arrive_in_order_then_none_after_close() {
        let (tx, mut rx) = pipe(4);
        tx.send(msg("a")).await.unwrap();
        tx.send(Event::HalfClose).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(msg("a")));
        assert_eq!(rx.recv().await, Some(Event::HalfClose));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn a_full_pipe_makes_the_producer_wait() {
        let (tx, mut rx) = pipe(2);
        tx.send(msg("1")).await.unwrap();
        tx.send(msg("2")).await.unwrap();
        let blocked =
            tokio::time::timeout(std::time::Duration::from_millis(50), tx.send(msg("3"))).await;
        assert!(blocked.is_err(), "the third event waits for the consumer");
        assert_eq!(rx.recv().await, Some(msg("1")));
        tx.send(msg("3")).await.unwrap();
    }

    #[tokio::test]
    async fn splice_moves_queued_events_first_and_then_every_new_one() {
        let (tx, rx) = pipe(8);
        tx.send(msg("queued-1")).await.unwrap();
        tx.send(msg("queued-2")).await.unwrap();
        let rec = Arc::new(Record::default());
        rx.splice(rec.clone());
        tx.send(msg("direct")).await.unwrap();
        drop(tx);
        let got = rec.0.lock().unwrap().clone();
        assert_eq!(
            got,
            vec![
                msg("queued-1"),
                msg("queued-2"),
                msg("direct"),
                connection_closed()
            ]
        );
    }

    #[tokio::test]
    async fn a_producer_gone_after_a_terminal_event_is_not_reported_again() {
        let (tx, rx) = pipe(8);
        let rec = Arc::new(Record::default());
        rx.splice(rec.clone());
        tx.push(Event::HalfClose).unwrap();
        drop(tx);
        assert_eq!(rec.0.lock().unwrap().clone(), vec![Event::HalfClose]);

        // Gone before the splice, with nothing terminal sent: reported at the splice.
        let (tx, rx) = pipe(8);
        tx.push(msg("x")).unwrap();
        drop(tx);
        let rec = Arc::new(Record::default());
        rx.splice(rec.clone());
        assert_eq!(
            rec.0.lock().unwrap().clone(),
            vec![msg("x"), connection_closed()]
        );
    }

    /// A pipe of depth 1 holding "1", and a task waiting to send "2".
    async fn full_pipe_with_a_waiting_producer() -> (
        Arc<PipeTx>,
        PipeRx,
        tokio::task::JoinHandle<Result<(), Closed>>,
    ) {
        let (tx, rx) = pipe(1);
        tx.send(msg("1")).await.unwrap();
        let tx = Arc::new(tx);
        let waiting = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(msg("2")).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        (tx, rx, waiting)
    }

    #[tokio::test]
    async fn a_waiting_producer_is_released_by_the_splice() {
        let (_tx, rx, waiting) = full_pipe_with_a_waiting_producer().await;
        assert!(!waiting.is_finished());
        let rec = Arc::new(Record::default());
        rx.splice(rec.clone());
        waiting.await.unwrap().unwrap();
        assert_eq!(rec.0.lock().unwrap().clone(), vec![msg("1"), msg("2")]);
    }

    #[tokio::test]
    async fn a_dropped_consumer_fails_pushes_and_wakes_waiters() {
        let (tx, rx, waiting) = full_pipe_with_a_waiting_producer().await;
        drop(rx);
        assert_eq!(waiting.await.unwrap(), Err(Closed));
        assert!(tx.is_closed());
        tx.closed().await;
    }

    #[tokio::test]
    async fn every_task_waiting_for_room_is_woken() {
        let (tx, mut rx) = pipe(1);
        tx.send(msg("0")).await.unwrap();
        let tx = Arc::new(tx);
        let waiting: Vec<_> = ["a", "b"]
            .into_iter()
            .map(|m| {
                let tx = tx.clone();
                tokio::spawn(async move { tx.send(msg(m)).await })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(
                tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
                    .await
                    .expect("no waiter is forgotten")
                    .unwrap(),
            );
        }
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        assert_eq!(got[0], msg("0"));
        assert!(got.contains(&msg("a")) && got.contains(&msg("b")));
    }
}
