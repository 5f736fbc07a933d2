//! The output queue: frames waiting for the socket, and the writer that drains it.
//!
//! Sinks and the task append under the lock ([`State`]'s `push_*`); the task swaps the whole
//! queue out and writes it with vectored writes, so the lock is never held across a write.
//! Frame heads sit inline in the queue and payloads as the `Bytes` they arrived in.

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

use super::role::Role;
use super::state::{Chunk, State, Wakes, OUT_LIMIT};
use super::task::Connection;

impl State {
    /// The task's waker, to be woken once the lock is released.
    pub(super) fn wake_task(&mut self) -> Option<Waker> {
        self.task.take()
    }

    pub(super) fn push_inline(&mut self, bytes: &[u8]) {
        self.queued += bytes.len();
        self.out.push(Chunk::inline(bytes));
    }

    /// Queues a frame that answers one of the peer's (an acknowledgement, a refusal).
    pub(super) fn push_reply(&mut self, bytes: &[u8]) {
        self.replies += 1;
        self.push_inline(bytes);
    }

    pub(super) fn push_bytes(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.queued += b.len();
        self.out.push(Chunk::Shared(b));
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin, R: Role> Connection<T, R> {
    /// Writes what is queued; `Ready(Ok)` once everything is out.
    pub(super) fn poll_write(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        loop {
            if self.wpos == self.writing.len() {
                if self.writing_bytes > 0 {
                    let mut wakes = Wakes::default();
                    let mut st = self.shared.lock();
                    st.queued -= self.writing_bytes;
                    if st.queued < OUT_LIMIT {
                        wakes.extend(st.room.drain(..));
                    }
                    self.writing_bytes = 0;
                }
                self.writing.clear();
                self.wpos = 0;
                self.woff = 0;
                self.writing_replies = 0;
                let mut st = self.shared.lock();
                if st.out.is_empty() {
                    drop(st);
                    return Pin::new(&mut self.io).poll_flush(cx);
                }
                std::mem::swap(&mut st.out, &mut self.writing);
                st.epoch += 1;
                self.writing_replies = std::mem::take(&mut st.replies);
                self.writing_bytes = self.writing.iter().map(|c| c.as_slice().len()).sum();
            }
            let mut slices = [IoSlice::new(&[]); sluice_io::MAX_IOV];
            let mut n = 0;
            for (i, c) in self.writing[self.wpos..].iter().enumerate() {
                if n == slices.len() {
                    break;
                }
                let s = c.as_slice();
                let s = if i == 0 { &s[self.woff..] } else { s };
                if !s.is_empty() {
                    slices[n] = IoSlice::new(s);
                    n += 1;
                }
            }
            if n == 0 {
                self.wpos = self.writing.len();
                continue;
            }
            let written = match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(w)) => w,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            let mut left = written;
            while left > 0 {
                let len = self.writing[self.wpos].as_slice().len() - self.woff;
                if left >= len {
                    left -= len;
                    self.wpos += 1;
                    self.woff = 0;
                } else {
                    self.woff += left;
                    left = 0;
                }
            }
            while self.wpos < self.writing.len()
                && self.writing[self.wpos].as_slice().len() == self.woff
            {
                self.wpos += 1;
                self.woff = 0;
            }
        }
    }
}
