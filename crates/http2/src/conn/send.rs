//! The sending side of streams: what sinks push, framed within the peer's flow-control
//! windows.
//!
//! A sink encodes in its own task, under the lock, straight into the output queue: header
//! blocks as HEADERS and CONTINUATION, messages as DATA frames no larger than the peer allows
//! and no longer than both windows allow. What the windows hold back waits in the stream's
//! pending list, in order, and goes out as WINDOW_UPDATE and SETTINGS open them
//! ([`State::flush_stream`], [`State::flush_blocked`]); until then the sink is not ready.

use std::sync::MutexGuard;
use std::task::{Context, Poll};

use bytes::Bytes;
use sluice_h2wire::frame::{self, flag, kind, Reason};
use sluice_h2wire::HEAD_LEN;
use sluice_stream::Closed;

use crate::message::{encode_prefix, MessageError, PREFIX_LEN};

use super::state::{register, Chunk, Pending, Shared, State, Wakes, OUT_LIMIT};

impl Shared {
    /// Ready when stream `id` may take another event: nothing of it waits for window and the
    /// queue is below its limit (or the stream or connection is gone: pushing then fails).
    pub(crate) fn poll_ready(&self, id: u32, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.lock();
        if st.closed {
            return Poll::Ready(());
        }
        let Some(s) = st.streams.get_mut(&id) else {
            return Poll::Ready(());
        };
        if s.gone || s.done {
            return Poll::Ready(());
        }
        if !s.pending.is_empty() {
            register(&mut s.wakers, cx);
            return Poll::Pending;
        }
        if st.queued >= OUT_LIMIT {
            register(&mut st.room, cx);
            return Poll::Pending;
        }
        Poll::Ready(())
    }

    /// Ready once stream `id` is gone (reset by the peer, ended and flushed, or the
    /// connection closed).
    pub(crate) fn poll_closed(&self, id: u32, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.lock();
        if st.closed {
            return Poll::Ready(());
        }
        match st.streams.get_mut(&id) {
            Some(s) if !s.gone => {
                register(&mut s.wakers, cx);
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// Locks the state for an event a sink pushes on stream `id`: `Err(Closed)` if the stream
    /// or the connection is gone, `Ok(None)` if this side has ended the stream already (the
    /// event is dropped), otherwise the locked state.
    pub(crate) fn lock_for_push(&self, id: u32) -> Result<Option<MutexGuard<'_, State>>, Closed> {
        let st = self.lock();
        if st.closed {
            return Err(Closed);
        }
        match st.streams.get(&id) {
            None => Err(Closed),
            Some(s) if s.gone => Err(Closed),
            Some(s) if s.done => Ok(None),
            Some(_) => Ok(Some(st)),
        }
    }
}

impl State {
    /// Queues a header block as HEADERS (and CONTINUATION frames if the peer's frame size
    /// requires), the block itself never copied.
    pub(crate) fn queue_block(&mut self, id: u32, block: Bytes, end_stream: bool) {
        let max = self.peer_max_frame;
        let mut rest = block;
        let mut first = true;
        loop {
            let n = rest.len().min(max);
            let piece = rest.split_to(n);
            let mut flags = 0;
            if rest.is_empty() {
                flags |= flag::END_HEADERS;
            }
            let kind = if first {
                if end_stream {
                    flags |= flag::END_STREAM;
                }
                kind::HEADERS
            } else {
                kind::CONTINUATION
            };
            self.push_inline(&frame::Head::encode(n, kind, flags, id));
            self.push_bytes(piece);
            first = false;
            if rest.is_empty() {
                break;
            }
        }
        if let Some(s) = self.streams.get_mut(&id) {
            s.last_data = None;
        }
    }

    /// Queues a header block behind the stream's pending data, or now if none waits.
    pub(crate) fn send_block(&mut self, id: u32, block: Bytes, end_stream: bool) {
        match self.streams.get_mut(&id) {
            Some(s) if !s.pending.is_empty() => s.pending.push_back(Pending::Block {
                block,
                end: end_stream,
            }),
            _ => self.queue_block(id, block, end_stream),
        }
    }

    /// Queues RST_STREAM behind the stream's pending frames (or now).
    pub(crate) fn send_rst_after(&mut self, id: u32, reason: Reason) {
        match self.streams.get_mut(&id) {
            Some(s) if !s.pending.is_empty() => s.pending.push_back(Pending::Rst(reason)),
            _ => self.push_inline(&frame::rst_stream(id, reason)),
        }
    }

    /// Drops what the stream has pending and queues RST_STREAM now.
    pub(crate) fn reset_now(&mut self, id: u32, reason: Reason) {
        if let Some(s) = self.streams.get_mut(&id) {
            s.pending.clear();
            s.done = true;
        }
        self.push_inline(&frame::rst_stream(id, reason));
    }

    /// Sends one gRPC message (its prefix, with the compressed flag the stream's headers
    /// announced, then `body`) as DATA, as far as the windows allow; the rest waits in the
    /// stream's pending list. Fails, sending nothing, for a message too long for the prefix.
    pub(crate) fn send_message(&mut self, id: u32, body: Bytes) -> Result<(), MessageError> {
        let Some(s) = self.streams.get_mut(&id) else {
            return Ok(());
        };
        let item = Pending::Data {
            prefix: encode_prefix(body.len(), s.compress)?,
            from: 0,
            body,
            end: false,
        };
        if !s.pending.is_empty() {
            s.pending.push_back(item);
            return Ok(());
        }
        if let Some(rest) = self.emit_data(id, item) {
            if let Some(s) = self.streams.get_mut(&id) {
                s.pending.push_back(rest);
            }
        }
        Ok(())
    }

    /// Ends the sending side with END_STREAM: on the stream's last DATA frame if it is still
    /// queued (a unary request is then one DATA frame, as Kitex sends it), on the last pending
    /// message, or as an empty DATA frame.
    pub(crate) fn send_end_stream(&mut self, id: u32) {
        let epoch = self.epoch;
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.done = true;
        if let Some(Pending::Data { end, .. }) = s.pending.back_mut() {
            *end = true;
            return;
        }
        if !s.pending.is_empty() {
            // Behind a header block or a reset: an empty frame of its own.
            s.pending.push_back(Pending::Data {
                prefix: [0; PREFIX_LEN],
                from: PREFIX_LEN as u8,
                body: Bytes::new(),
                end: true,
            });
            return;
        }
        if let Some((e, index)) = s.last_data.take() {
            if e == epoch {
                if let Some(Chunk::Inline { buf, .. }) = self.out.get_mut(index) {
                    buf[4] |= flag::END_STREAM;
                    return;
                }
            }
        }
        self.push_inline(&frame::Head::encode(0, kind::DATA, flag::END_STREAM, id));
    }

    /// Emits DATA frames for `item` while the windows allow; returns what is left.
    fn emit_data(&mut self, id: u32, item: Pending) -> Option<Pending> {
        let Pending::Data {
            prefix,
            mut from,
            mut body,
            end,
        } = item
        else {
            return Some(item);
        };
        let max_frame = self.peer_max_frame;
        loop {
            let prefix_left = PREFIX_LEN - usize::from(from);
            let total = prefix_left + body.len();
            let s = self.streams.get_mut(&id)?;
            if total == 0 {
                // Only ever a lone END_STREAM: no window needed.
                if end {
                    s.last_data = None;
                    self.push_inline(&frame::Head::encode(0, kind::DATA, flag::END_STREAM, id));
                }
                return None;
            }
            let allowed = s.window.min(self.conn_window).max(0) as usize;
            let n = total.min(max_frame).min(allowed);
            if n == 0 {
                if self.conn_window <= 0 && s.window > 0 && !s.in_blocked {
                    s.in_blocked = true;
                    self.blocked.push_back(id);
                }
                return Some(Pending::Data {
                    prefix,
                    from,
                    body,
                    end,
                });
            }
            s.window -= n as i64;
            self.conn_window -= n as i64;
            let last = n == total;
            let flags = if last && end { flag::END_STREAM } else { 0 };
            let from_prefix = n.min(prefix_left);
            let mut head = [0u8; HEAD_LEN + PREFIX_LEN];
            head[..HEAD_LEN].copy_from_slice(&frame::Head::encode(n, kind::DATA, flags, id));
            let start = usize::from(from);
            head[HEAD_LEN..HEAD_LEN + from_prefix]
                .copy_from_slice(&prefix[start..start + from_prefix]);
            from += from_prefix as u8;
            let index = self.out.len();
            self.push_inline(&head[..HEAD_LEN + from_prefix]);
            let piece = body.split_to(n - from_prefix);
            self.push_bytes(piece);
            let epoch = self.epoch;
            if let Some(s) = self.streams.get_mut(&id) {
                s.last_data = (flags == 0).then_some((epoch, index));
            }
            if last {
                return None;
            }
        }
    }

    /// Sends what stream `id` has pending, as far as the windows allow, and wakes its waiters
    /// once nothing is left.
    pub(super) fn flush_stream(&mut self, id: u32, wakes: &mut Wakes) {
        loop {
            let Some(s) = self.streams.get_mut(&id) else {
                return;
            };
            let Some(item) = s.pending.pop_front() else {
                break;
            };
            match item {
                Pending::Data { .. } => {
                    if let Some(rest) = self.emit_data(id, item) {
                        if let Some(s) = self.streams.get_mut(&id) {
                            s.pending.push_front(rest);
                        }
                        return;
                    }
                }
                Pending::Block { block, end } => self.queue_block(id, block, end),
                Pending::Rst(reason) => self.push_inline(&frame::rst_stream(id, reason)),
            }
        }
        if let Some(s) = self.streams.get_mut(&id) {
            wakes.extend(s.wakers.drain(..));
        }
        self.forget_if_finished(id, wakes);
    }

    /// Streams waiting for the connection window get it, in turn.
    pub(super) fn flush_blocked(&mut self, wakes: &mut Wakes) {
        let mut rounds = self.blocked.len();
        while rounds > 0 && self.conn_window > 0 {
            rounds -= 1;
            let Some(id) = self.blocked.pop_front() else {
                break;
            };
            if let Some(s) = self.streams.get_mut(&id) {
                s.in_blocked = false;
            }
            self.flush_stream(id, wakes);
        }
    }
}
