//! The byte-bounded write queue of a connection many streams write to, and its writer.

use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::vectored::write_all_vectored;

/// The write queue of a connection that many streams write to (TTStream): producers append
/// encoded frames without waiting, one writer task sends whatever has queued up in one
/// vectored write.
///
/// Room is bounded in bytes: [`QueueTx::poll_ready`] is pending while `limit` bytes or more are
/// queued or being written, and producers (connection readers forwarding frames, stream
/// handlers) wait on it before pushing, so a peer that does not read stops them instead of
/// growing the queue. The writer ends, after writing what is queued, once every producer is
/// gone; a failed write fails every later push.
pub fn out_queue(limit: usize) -> (QueueTx, QueueWriter) {
    let q = Arc::new(OutQueue {
        state: Mutex::new(OutState {
            bufs: Vec::new(),
            queued: 0,
            writer: None,
            waiters: Vec::new(),
            producers: 1,
            failed: false,
        }),
        limit,
    });
    (QueueTx(q.clone()), QueueWriter(q))
}

/// Default byte limit of an [`out_queue`].
pub const OUT_QUEUE_LIMIT: usize = 1024 * 1024;

struct OutQueue {
    state: Mutex<OutState>,
    limit: usize,
}

struct OutState {
    bufs: Vec<Bytes>,
    /// Bytes queued or in the write under way.
    queued: usize,
    writer: Option<Waker>,
    waiters: Vec<Waker>,
    producers: usize,
    failed: bool,
}

impl OutQueue {
    fn lock(&self) -> MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The connection's write side is gone (a write failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueClosed;

/// A producer of an [`out_queue`]; clones are producers too.
pub struct QueueTx(Arc<OutQueue>);

impl std::fmt::Debug for QueueTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueTx")
    }
}

impl Clone for QueueTx {
    fn clone(&self) -> Self {
        self.0.lock().producers += 1;
        Self(self.0.clone())
    }
}

impl Drop for QueueTx {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.producers -= 1;
        if st.producers == 0 {
            let w = st.writer.take();
            drop(st);
            if let Some(w) = w {
                w.wake();
            }
        }
    }
}

impl QueueTx {
    /// Appends `bufs` (one or more frames) now, whatever is queued already.
    pub fn push(&self, bufs: impl IntoIterator<Item = Bytes>) -> Result<(), QueueClosed> {
        let mut st = self.0.lock();
        if st.failed {
            return Err(QueueClosed);
        }
        for b in bufs {
            st.queued += b.len();
            st.bufs.push(b);
        }
        let w = st.writer.take();
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
        Ok(())
    }

    /// Ready while fewer than the limit's bytes are queued, or once the queue failed.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.0.lock();
        if st.failed || st.queued < self.0.limit {
            Poll::Ready(())
        } else {
            // A task that polls again while it waits is not added twice.
            if !st.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                st.waiters.push(cx.waker().clone());
            }
            Poll::Pending
        }
    }

    /// True once a write failed.
    pub fn is_closed(&self) -> bool {
        self.0.lock().failed
    }
}

/// The writing end of an [`out_queue`].
pub struct QueueWriter(Arc<OutQueue>);

impl std::fmt::Debug for QueueWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueWriter")
    }
}

impl QueueWriter {
    /// Writes until every producer is gone and the queue is empty (then shuts the write side
    /// down), or a write fails.
    pub async fn run<W: AsyncWrite + Unpin>(self, mut w: W) -> std::io::Result<()> {
        let q = self.0;
        let mut batch: Vec<Bytes> = Vec::new();
        loop {
            std::future::poll_fn(|cx| {
                let mut st = q.lock();
                if !st.bufs.is_empty() || st.producers == 0 {
                    Poll::Ready(())
                } else {
                    st.writer = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            // Tasks woken by the same read are about to queue their frames: let them, so the
            // frames leave in one write instead of one write each.
            tokio::task::yield_now().await;
            {
                let mut st = q.lock();
                if st.bufs.is_empty() {
                    if st.producers == 0 {
                        break;
                    }
                    continue;
                }
                std::mem::swap(&mut st.bufs, &mut batch);
            }
            let bytes: usize = batch.iter().map(Bytes::len).sum();
            let result = write_all_vectored(&mut w, &mut batch).await;
            let mut st = q.lock();
            st.queued -= bytes;
            if result.is_err() {
                st.failed = true;
                st.bufs.clear();
                st.queued = 0;
            }
            let waiters = std::mem::take(&mut st.waiters);
            drop(st);
            for waker in waiters {
                waker.wake();
            }
            result?;
        }
        w.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queued_frames_from_many_producers_leave_in_order_and_the_writer_ends_with_them() {
        use tokio::io::AsyncReadExt;
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let (tx, writer) = out_queue(1024);
        let writer = tokio::spawn(writer.run(a));
        let tx2 = tx.clone();
        tx.push([Bytes::from_static(b"one "), Bytes::from_static(b"two ")])
            .unwrap();
        tx2.push([Bytes::from_static(b"three")]).unwrap();
        drop(tx);
        drop(tx2);
        // Every producer is gone: the writer writes what is queued, then shuts down.
        writer.await.unwrap().unwrap();
        let mut got = String::new();
        b.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "one two three");
    }

    #[tokio::test]
    async fn a_queue_over_its_limit_holds_producers_until_the_writer_drains_it() {
        use tokio::io::AsyncReadExt;
        // The peer reads nothing yet and its pipe holds 16 bytes.
        let (a, mut b) = tokio::io::duplex(16);
        let (tx, writer) = out_queue(100);
        tokio::spawn(writer.run(a));
        tx.push([Bytes::from(vec![1u8; 150])]).unwrap();
        let ready = std::future::poll_fn(|cx| tx.poll_ready(cx));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), ready)
                .await
                .is_err(),
            "150 queued bytes are over the 100-byte limit"
        );
        let mut got = vec![0u8; 150];
        b.read_exact(&mut got).await.unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| tx.poll_ready(cx)),
        )
        .await
        .expect("room once the bytes are written");
    }

    #[tokio::test]
    async fn a_failed_write_fails_later_pushes() {
        let (a, b) = tokio::io::duplex(16);
        drop(b);
        let (tx, writer) = out_queue(1024);
        let writer = tokio::spawn(writer.run(a));
        tx.push([Bytes::from_static(b"lost")]).unwrap();
        assert!(writer.await.unwrap().is_err());
        assert!(tx.is_closed());
        assert_eq!(tx.push([Bytes::from_static(b"x")]), Err(QueueClosed));
    }
}
