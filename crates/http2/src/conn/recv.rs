//! The receiving side: frames read off the socket, header blocks put together and decoded,
//! and each stream's DATA decoded into gRPC messages for its user.
//!
//! Each stream's receiving side ([`Recv`]) is the task's alone, kept without a lock. A message
//! goes to the stream's pipe only while the pipe is ready for more; otherwise the bytes wait
//! undecoded and the stream's window is given back only once they are handed on. A header block
//! on a new stream goes to the [`Role`] (a server's request); on a stream of this side's
//! (a client's), it is the response head or the trailers.

use std::task::Context;

use bytes::{Buf, Bytes, BytesMut};
use sluice_h2wire::frame::{self, Reason};
use sluice_h2wire::{Frame, PREFACE};
use sluice_stream::{Event, Reset, ResetCode, StatusCode, StreamEnd};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::fields::{end_from, response_head, Head};
use crate::message::{MessageDecoder, MessageError};
use crate::status::{Code, Status};

use super::control::SHUTDOWN_PING;
use super::role::{Counted, HeaderBlock, Opening, Role};
use super::state::{Side, Wakes};
use super::task::{Connection, EndState, Ending, Http2Error, PartialBlock, Recv, ResponseState};

/// Largest raw header block (HEADERS plus CONTINUATION) accepted, as a multiple of the header
/// list limit: HPACK makes blocks smaller than the lists they carry, never much larger.
const BLOCK_LIMIT_FACTOR: usize = 2;

/// Most CONTINUATION frames one header block may take.
const MAX_CONTINUATIONS: usize = 64;

/// Whether a field list holds a pseudo-header.
fn has_pseudo(fields: &[(Bytes, Bytes)]) -> bool {
    fields.iter().any(|(n, _)| n.first() == Some(&b':'))
}

impl<T: AsyncRead + AsyncWrite + Unpin, R: Role> Connection<T, R> {
    /// Decodes and handles every whole frame in the read buffer.
    pub(super) fn process(&mut self, cx: &mut Context<'_>) -> Result<(), Http2Error> {
        if !self.preface_read {
            let n = self.buf.len().min(PREFACE.len());
            if self.buf[..n] != PREFACE[..n] {
                return Err(Http2Error::protocol(
                    Reason::PROTOCOL_ERROR,
                    "not an HTTP/2 client preface",
                ));
            }
            if n < PREFACE.len() {
                return Ok(());
            }
            self.buf.advance(PREFACE.len());
            self.preface_read = true;
        }
        loop {
            let frame = match self.frames.decode(&mut self.buf) {
                Ok(Some(f)) => f,
                // Checked once per read, and only if a refusal was queued (no lock otherwise).
                Ok(None) if std::mem::take(&mut self.refused) => {
                    return self.check_replies(&self.shared.lock())
                }
                Ok(None) => return Ok(()),
                Err(e) => match e.stream {
                    Some(id) => {
                        tracing::debug!(peer = %self.peer, stream = id, error = %e, "HTTP/2 stream error");
                        self.reset_stream(id, e.reason, &e.to_string());
                        continue;
                    }
                    None => return Err(Http2Error::protocol(e.reason, e.what)),
                },
            };
            if !self.settings_received {
                // "The first frame sent ... MUST be a SETTINGS frame" (RFC 9113 3.4).
                if !matches!(frame, Frame::Settings { ack: false, .. }) {
                    return Err(Http2Error::protocol(
                        Reason::PROTOCOL_ERROR,
                        "first frame is not SETTINGS",
                    ));
                }
                self.settings_received = true;
                self.handshake_deadline = None;
            }
            if let Some(p) = &self.partial_block {
                // "A HEADERS frame without the END_HEADERS flag set MUST be followed by a
                // CONTINUATION frame for the same stream" (RFC 9113 6.2).
                match &frame {
                    Frame::Continuation { stream, .. } if *stream == p.stream => {}
                    _ => {
                        return Err(Http2Error::protocol(
                            Reason::PROTOCOL_ERROR,
                            "header block interrupted by another frame",
                        ))
                    }
                }
            }
            self.on_frame(frame, cx)?;
        }
    }

    fn on_frame(&mut self, frame: Frame, cx: &mut Context<'_>) -> Result<(), Http2Error> {
        match frame {
            Frame::Data(d) => self.on_data(d, cx),
            Frame::Headers(h) => {
                if R::SIDE == Side::Server && h.stream % 2 == 0 {
                    return Err(Http2Error::protocol(
                        Reason::PROTOCOL_ERROR,
                        "client opened an even stream id",
                    ));
                }
                // Copied out of the read buffer: decoded literals are slices of the block and
                // live as long as the stream's metadata, which must not pin a whole read buffer.
                let p = PartialBlock {
                    stream: h.stream,
                    frames: 0,
                    end_stream: h.end_stream,
                    self_dependent: h.depends_on_itself(),
                    block: BytesMut::from(&h.block[..]),
                };
                self.check_block_size(p.block.len())?;
                if h.end_headers {
                    self.on_block(p, cx)
                } else {
                    self.partial_block = Some(p);
                    Ok(())
                }
            }
            Frame::Continuation {
                stream,
                end_headers,
                block,
            } => {
                let Some(mut p) = self.partial_block.take() else {
                    return Err(Http2Error::protocol(
                        Reason::PROTOCOL_ERROR,
                        "CONTINUATION without a header block",
                    ));
                };
                debug_assert_eq!(p.stream, stream);
                p.frames += 1;
                // Empty or tiny CONTINUATION frames cost a frame each without growing the
                // block: their number is bounded too.
                if p.frames > MAX_CONTINUATIONS {
                    return Err(Http2Error::protocol(
                        Reason::ENHANCE_YOUR_CALM,
                        format!(
                            "header block in more than {MAX_CONTINUATIONS} CONTINUATION frames"
                        ),
                    ));
                }
                p.block.extend_from_slice(&block);
                self.check_block_size(p.block.len())?;
                if end_headers {
                    self.on_block(p, cx)
                } else {
                    self.partial_block = Some(p);
                    Ok(())
                }
            }
            Frame::Priority { .. } | Frame::Unknown { .. } => Ok(()),
            Frame::RstStream { stream, reason } => {
                if self.streams.contains_key(&stream) {
                    self.spend_reset_budget()?;
                }
                self.on_reset(stream, reason)
            }
            Frame::Settings { ack: true, .. } => Ok(()),
            Frame::Settings {
                ack: false,
                settings,
            } => self.on_settings(settings),
            Frame::PushPromise { .. } => Err(Http2Error::protocol(
                Reason::PROTOCOL_ERROR,
                "PUSH_PROMISE: push is disabled",
            )),
            Frame::Ping {
                ack: false,
                payload,
            } => {
                let mut st = self.shared.lock();
                st.push_reply(&frame::ping(true, payload));
                self.check_replies(&st)
            }
            Frame::Ping { ack: true, payload } => {
                if payload == SHUTDOWN_PING {
                    self.send_final_goaway();
                }
                Ok(())
            }
            Frame::GoAway {
                last_stream,
                reason,
                debug,
            } => self.on_goaway(last_stream, reason, &debug),
            Frame::WindowUpdate { stream, increment } => self.on_window_update(stream, increment),
        }
    }

    fn check_block_size(&self, len: usize) -> Result<(), Http2Error> {
        let limit = (self.cfg.max_header_list_size as usize).saturating_mul(BLOCK_LIMIT_FACTOR);
        if len > limit {
            // The block cannot be skipped without decoding it (the HPACK table would drift),
            // and decoding it is what the limit is there to avoid.
            return Err(Http2Error::protocol(
                Reason::ENHANCE_YOUR_CALM,
                format!("header block larger than {limit} bytes"),
            ));
        }
        Ok(())
    }

    /// A complete header block.
    fn on_block(&mut self, p: PartialBlock, cx: &mut Context<'_>) -> Result<(), Http2Error> {
        let block = p.block.freeze();
        let mut fields = Vec::with_capacity(16);
        let decoded = self
            .hpack
            .decode(&block, self.cfg.max_header_list_size as usize, |n, v| {
                fields.push((n, v))
            })
            .map_err(|e| Http2Error::protocol(Reason::COMPRESSION_ERROR, e.to_string()))?;
        let id = p.stream;
        if p.self_dependent {
            self.reset_stream(id, Reason::PROTOCOL_ERROR, "stream depends on itself");
            return Ok(());
        }
        let hb = HeaderBlock {
            stream: id,
            end_stream: p.end_stream,
            fields,
            too_large: decoded.too_large,
        };
        if self.streams.contains_key(&id) {
            return self.on_stream_block(hb, cx);
        }
        match &mut self.end {
            EndState::Client => {
                // A stream this side has reset or finished: its late headers are ignored.
                Ok(())
            }
            EndState::Server {
                last_stream,
                final_goaway,
                ..
            } => {
                if id <= *last_stream {
                    // A closed stream, or a new one below the highest used: "the identifier
                    // of a newly established stream MUST be numerically greater than all
                    // streams that the initiating endpoint has opened" (RFC 9113 5.1.1).
                    // (gRPC clients send no trailers, so no HEADERS is in flight after a
                    // stream this side closed.)
                    return Err(Http2Error::protocol(
                        Reason::PROTOCOL_ERROR,
                        format!("HEADERS on closed or reused stream {id}"),
                    ));
                }
                *last_stream = id;
                if final_goaway.is_some_and(|last| id > last) {
                    // Sent after the final GOAWAY: refused, so the client knows it was not
                    // processed and retries it elsewhere.
                    tracing::debug!(peer = %self.peer, stream = id, "refusing gRPC stream: connection shutting down");
                    self.role.count(Counted::Refused);
                    self.shared
                        .lock()
                        .push_reply(&frame::rst_stream(id, Reason::REFUSED_STREAM));
                    self.refused = true;
                    return Ok(());
                }
                let active = self.streams.len();
                if active >= self.cfg.max_concurrent_streams as usize {
                    tracing::debug!(peer = %self.peer, stream = id, limit = self.cfg.max_concurrent_streams, "refusing gRPC stream: concurrent stream limit");
                    self.role.count(Counted::Refused);
                    self.shared
                        .lock()
                        .push_reply(&frame::rst_stream(id, Reason::REFUSED_STREAM));
                    self.refused = true;
                    return Ok(());
                }
                match self.role.open(&self.shared, hb) {
                    Opening::Done => {
                        // Refused (and logged): the answer is queued already.
                        self.role.count(Counted::Refused);
                        self.shared.lock().replies += 1;
                        self.refused = true;
                        Ok(())
                    }
                    Opening::Accept {
                        to_user,
                        compressed_ok,
                        end_stream,
                    } => {
                        let mut r = Recv::new(
                            to_user,
                            self.cfg.stream_window(),
                            compressed_ok,
                            ResponseState::Body,
                            None,
                        );
                        if end_stream {
                            r.remote_ended = true;
                            let _ = sluice_stream::EventSink::push(&r.to_user, Event::HalfClose);
                            self.mark_remote_ended(id);
                        }
                        self.streams.insert(id, r);
                        Ok(())
                    }
                }
            }
        }
    }

    /// A header block on a stream that has a receiving side.
    fn on_stream_block(&mut self, hb: HeaderBlock, cx: &mut Context<'_>) -> Result<(), Http2Error> {
        let id = hb.stream;
        match R::SIDE {
            Side::Server => {
                // Trailers from a client: gRPC clients send none; they end the request side.
                let Some(r) = self.streams.get_mut(&id) else {
                    return Ok(());
                };
                if r.remote_ended {
                    // Half-closed (remote): RFC 9113 5.1, a stream error STREAM_CLOSED.
                    self.reset_stream(id, Reason::STREAM_CLOSED, "HEADERS after END_STREAM");
                    return Ok(());
                }
                if !hb.end_stream {
                    self.reset_stream(
                        id,
                        Reason::PROTOCOL_ERROR,
                        "request headers after the first",
                    );
                    return Ok(());
                }
                if has_pseudo(&hb.fields) {
                    // "Pseudo-header fields MUST NOT appear in a trailer section" (RFC 9113
                    // 8.1): the request is malformed.
                    self.reset_stream(id, Reason::PROTOCOL_ERROR, "pseudo-header in trailers");
                    return Ok(());
                }
                r.remote_ended = true;
                r.ending = Some(Ending::HalfClose);
                self.drain(id, None, cx);
                Ok(())
            }
            Side::Client => {
                let Some(r) = self.streams.get_mut(&id) else {
                    return Ok(());
                };
                if hb.too_large {
                    let msg = format!(
                        "response header list larger than {} bytes",
                        self.cfg.max_header_list_size
                    );
                    self.client_end(
                        id,
                        StreamEnd::error(StatusCode::Grpc(Code::RESOURCE_EXHAUSTED.as_u32()), msg),
                        true,
                    );
                    return Ok(());
                }
                match r.response {
                    ResponseState::Head => match response_head(hb.fields, hb.end_stream) {
                        Head::Informational => Ok(()),
                        Head::Headers { md, compressed } => {
                            r.response = ResponseState::Body;
                            r.compressed_ok = compressed;
                            if sluice_stream::EventSink::push(&r.to_user, Event::Headers(md))
                                .is_err()
                            {
                                self.client_end_quiet(id);
                            }
                            Ok(())
                        }
                        Head::End(end) => {
                            let reset = !hb.end_stream;
                            self.client_end(id, end, reset);
                            Ok(())
                        }
                    },
                    ResponseState::Body => {
                        let malformed = if has_pseudo(&hb.fields) {
                            Some("pseudo-header in the response trailers")
                        } else if !hb.end_stream {
                            Some("response headers after the first, without END_STREAM")
                        } else {
                            None
                        };
                        if let Some(why) = malformed {
                            self.client_end(
                                id,
                                StreamEnd::error(StatusCode::Grpc(Code::INTERNAL.as_u32()), why),
                                true,
                            );
                            return Ok(());
                        }
                        r.remote_ended = true;
                        r.ending = Some(Ending::Trailers(end_from(hb.fields)));
                        self.drain(id, None, cx);
                        Ok(())
                    }
                }
            }
        }
    }

    pub(super) fn decoder(&self) -> MessageDecoder {
        MessageDecoder::with_max_message_size(self.cfg.max_message_size)
    }

    /// Client: the response ended with `end`. The user hears it; the request side, if still
    /// open, is reset (CANCEL) when `reset` or when it has not ended.
    pub(super) fn client_end(&mut self, id: u32, end: StreamEnd, reset: bool) {
        if let Some(r) = self.streams.remove(&id) {
            let _ = sluice_stream::EventSink::push(&r.to_user, Event::End(end));
        }
        let mut wakes = Wakes::default();
        let mut st = self.shared.lock();
        if st.streams.get(&id).is_some_and(|s| !s.done || reset) {
            st.reset_now(id, Reason::CANCEL);
        }
        if let Some(s) = st.streams.get_mut(&id) {
            s.gone = true;
        }
        st.forget_if_finished(id, &mut wakes);
    }

    /// Client: the user is gone; the stream is reset.
    fn client_end_quiet(&mut self, id: u32) {
        self.streams.remove(&id);
        let mut wakes = Wakes::default();
        let mut st = self.shared.lock();
        if st.streams.get(&id).is_some_and(|s| !s.done) {
            st.reset_now(id, Reason::CANCEL);
        }
        if let Some(s) = st.streams.get_mut(&id) {
            s.gone = true;
        }
        st.forget_if_finished(id, &mut wakes);
    }

    fn mark_remote_ended(&mut self, id: u32) {
        if let Some(s) = self.shared.lock().streams.get_mut(&id) {
            s.remote_ended = true;
        }
    }

    /// Server: the request's messages could not be decoded. The client gets `status` (the
    /// sending side ends first, so nothing the handler sends later can change it), then the
    /// handler hears that its input broke off.
    /// Ends a stream whose received data cannot be handed on: a server answers the request
    /// with `status`; a client ends its user's stream with it (resetting the stream when
    /// `reset`, else only if the server has not finished it).
    fn bad_stream(&mut self, id: u32, status: Status, reset: bool) {
        match R::SIDE {
            Side::Server => self.bad_request_stream(id, status),
            Side::Client => self.client_end(
                id,
                StreamEnd::error(StatusCode::Grpc(status.code.as_u32()), status.message),
                reset,
            ),
        }
    }

    fn bad_request_stream(&mut self, id: u32, status: Status) {
        tracing::debug!(peer = %self.peer, stream = id, message = %status.message, "bad gRPC request stream");
        R::abort(&self.shared, id, &status);
        if let Some(r) = self.streams.remove(&id) {
            let _ = sluice_stream::EventSink::push(
                &r.to_user,
                Event::Reset(Reset {
                    code: ResetCode::Http2(u32::from(Reason::PROTOCOL_ERROR)),
                    message: status.message,
                    cancel_path: None,
                }),
            );
        }
    }

    fn on_data(&mut self, d: sluice_h2wire::Data, cx: &mut Context<'_>) -> Result<(), Http2Error> {
        let flow = d.flow_len as i64;
        self.recv_conn_window -= flow;
        if self.recv_conn_window < 0 {
            return Err(Http2Error::protocol(
                Reason::FLOW_CONTROL_ERROR,
                "DATA beyond the connection window",
            ));
        }
        // The connection window is given back as data arrives: per-stream windows are what
        // bound memory, and one stalled stream must not stop the others.
        self.conn_unacked += d.flow_len as u32;
        self.credit_connection();
        let id = d.stream;
        let Some(r) = self.streams.get_mut(&id) else {
            let known = match &self.end {
                EndState::Server { last_stream, .. } => id <= *last_stream,
                EndState::Client => id < self.shared.lock().next_id,
            };
            if !known {
                return Err(Http2Error::protocol(
                    Reason::PROTOCOL_ERROR,
                    "DATA on a stream that was never opened",
                ));
            }
            // A stream already over (reset or finished here): dropped.
            return Ok(());
        };
        if r.remote_ended {
            self.reset_stream(id, Reason::STREAM_CLOSED, "DATA after END_STREAM");
            return Ok(());
        }
        if R::SIDE == Side::Client && r.response == ResponseState::Head {
            self.reset_stream(
                id,
                Reason::PROTOCOL_ERROR,
                "DATA before the response headers",
            );
            return Ok(());
        }
        r.window -= flow;
        if r.window < 0 {
            self.reset_stream(
                id,
                Reason::FLOW_CONTROL_ERROR,
                "DATA beyond the stream window",
            );
            return Ok(());
        }
        // Padding is nobody's to consume.
        r.unacked += (d.flow_len - d.payload.len()) as u32;
        r.uncredited += d.payload.len() as u32;
        if d.end_stream {
            r.remote_ended = true;
            r.ending = Some(match R::SIDE {
                Side::Server => Ending::HalfClose,
                Side::Client => Ending::NoTrailers,
            });
        }
        self.drain(id, Some(d.payload), cx);
        Ok(())
    }

    /// Decodes what stream `id` has received (what waits in it, then `chunk`) and hands the
    /// messages to its user, one at a time and only while the user is ready for more. When
    /// the user falls behind, the rest waits as raw bytes (at most a window of them: their
    /// window is given back only once they are handed on) and the stream is rechecked when
    /// the user makes room. The stream's end goes out after its last message.
    pub(super) fn drain(&mut self, id: u32, chunk: Option<Bytes>, cx: &mut Context<'_>) {
        let decoder = self.decoder();
        let Some(r) = self.streams.get_mut(&id) else {
            return;
        };
        let mut chunk = chunk.unwrap_or_default();
        let mut bad: Option<Status> = None;
        let mut client_user_gone = false;
        'decode: loop {
            let message = match r.held.take() {
                Some(m) => m,
                None => {
                    // Whole messages come straight out of the frame's bytes (no copy); only a
                    // message split across frames, or bytes waiting for the user, are
                    // gathered in `partial`.
                    let next = if r.partial.is_empty() {
                        match decoder.decode_bytes(&mut chunk) {
                            Ok(None) if !chunk.is_empty() => {
                                r.partial.extend_from_slice(&chunk);
                                chunk.clear();
                                decoder.decode(&mut r.partial)
                            }
                            other => other,
                        }
                    } else {
                        if !chunk.is_empty() {
                            r.partial.extend_from_slice(&chunk);
                            chunk.clear();
                        }
                        decoder.decode(&mut r.partial)
                    };
                    match next {
                        Ok(Some(m)) if m.compressed && !r.compressed_ok => {
                            bad = Some(Status::new(
                                Code::INTERNAL,
                                "compressed flag set on a message but grpc-encoding is missing or identity",
                            ));
                            break 'decode;
                        }
                        Ok(Some(m)) => m.data,
                        Ok(None) => break 'decode,
                        Err(e) => {
                            let code = match e {
                                MessageError::TooLarge { .. } => Code::RESOURCE_EXHAUSTED,
                                _ => Code::INTERNAL,
                            };
                            bad = Some(Status::new(code, e.to_string()));
                            break 'decode;
                        }
                    }
                }
            };
            if r.user_gone {
                continue;
            }
            if sluice_stream::EventSink::poll_ready(&r.to_user, cx).is_pending() {
                // The user is behind: this message and the bytes after it wait.
                r.held = Some(message);
                if !chunk.is_empty() {
                    r.partial.extend_from_slice(&chunk);
                }
                if !r.paused {
                    r.paused = true;
                    self.withheld.push(id);
                }
                return;
            }
            if sluice_stream::EventSink::push(&r.to_user, Event::Message(message)).is_err() {
                match R::SIDE {
                    // The handler stopped reading: what the client still sends is dropped,
                    // and its window stays open so the client is not blocked on it.
                    Side::Server => r.user_gone = true,
                    Side::Client => {
                        client_user_gone = true;
                        break 'decode;
                    }
                }
            }
        }
        r.paused = false;
        if r.partial.is_empty() && r.partial.capacity() > sluice_io::STREAM_READ_CHUNK {
            // What is left of a large message's buffer is not kept for the stream's lifetime.
            r.partial = BytesMut::new();
        }
        if client_user_gone {
            self.client_end_quiet(id);
            return;
        }
        if let Some(status) = bad {
            self.bad_stream(id, status, true);
            return;
        }
        // Everything received is decoded and handed on: its window is the peer's again.
        r.unacked += std::mem::take(&mut r.uncredited);
        let ending = r.ending.take();
        let truncated = decoder.finish(&r.partial).err();
        self.flush_stream_credit(id);
        let Some(ending) = ending else {
            return;
        };
        if let Some(e) = truncated {
            // The stream ended inside a message.
            self.bad_stream(id, Status::new(Code::INTERNAL, e.to_string()), false);
            return;
        }
        match ending {
            Ending::HalfClose => {
                if let Some(r) = self.streams.get(&id) {
                    let _ = sluice_stream::EventSink::push(&r.to_user, Event::HalfClose);
                }
                self.mark_remote_ended(id);
            }
            Ending::Trailers(end) => self.client_end(id, end, false),
            Ending::NoTrailers => self.client_end(
                id,
                StreamEnd::error(
                    StatusCode::Grpc(Code::INTERNAL.as_u32()),
                    "server closed the stream without sending trailers",
                ),
                false,
            ),
        }
    }

    /// Announces the stream window the user has made room for, in batches of half a window.
    fn flush_stream_credit(&mut self, id: u32) {
        let half = self.cfg.stream_window() / 2;
        let Some(r) = self.streams.get_mut(&id) else {
            return;
        };
        if r.remote_ended || r.unacked < half.max(1) {
            return;
        }
        let n = std::mem::take(&mut r.unacked);
        r.window += i64::from(n);
        self.shared.lock().push_inline(&frame::window_update(id, n));
    }

    fn credit_connection(&mut self) {
        let half = self.cfg.connection_window() / 2;
        if self.conn_unacked >= half {
            let n = std::mem::take(&mut self.conn_unacked);
            self.recv_conn_window += i64::from(n);
            self.shared.lock().push_inline(&frame::window_update(0, n));
        }
    }

    /// Streams whose users were not ready: go on with those that are now.
    pub(super) fn recheck_withheld(&mut self, cx: &mut Context<'_>) {
        if self.withheld.is_empty() {
            return;
        }
        let ids = std::mem::take(&mut self.withheld);
        for id in ids {
            let Some(r) = self.streams.get_mut(&id) else {
                continue;
            };
            if sluice_stream::EventSink::poll_ready(&r.to_user, cx).is_ready() {
                r.paused = false;
                self.drain(id, None, cx);
            } else {
                self.withheld.push(id);
            }
        }
    }

    /// Resets stream `id` from this side: RST_STREAM, and its user hears of it.
    pub(super) fn reset_stream(&mut self, id: u32, reason: Reason, why: &str) {
        let mut st = self.shared.lock();
        st.reset_now(id, reason);
        st.replies += 1;
        self.refused = true;
        if let Some(s) = st.streams.get_mut(&id) {
            s.gone = true;
        }
        let mut wakes = Wakes::default();
        if let Some(s) = st.streams.remove(&id) {
            wakes.extend(s.wakers);
        }
        drop(st);
        if let Some(r) = self.streams.remove(&id) {
            let _ = sluice_stream::EventSink::push(
                &r.to_user,
                Event::Reset(Reset {
                    code: ResetCode::Http2(reason.0),
                    message: why.to_owned(),
                    cancel_path: None,
                }),
            );
        }
    }
}
