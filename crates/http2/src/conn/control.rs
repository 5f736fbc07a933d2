//! Connection-level control: SETTINGS, PING, GOAWAY, WINDOW_UPDATE and RST_STREAM from the
//! peer, the checks that keep a peer from making this side work or queue without bound
//! (idle streams, rapid resets, unread acknowledgements), and the ways a connection winds
//! down on its own: a server's graceful shutdown (two GOAWAYs a PING apart) and its idle
//! timeout.

use std::future::Future;
use std::task::Context;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_h2wire::frame::{self, Reason};
use sluice_h2wire::{Settings, MAX_WINDOW};
use sluice_stream::{Event, Reset, ResetCode};
use tokio::io::{AsyncRead, AsyncWrite};

use super::role::{Counted, Role};
use super::state::{Side, State, Wakes};
use super::task::{
    ConnConfig, Connection, EndState, Http2Error, MAX_PENDING_REPLIES, RESETS_PER_SECOND,
    RESET_BURST,
};

/// How long a graceful shutdown waits for its PING to come back before the final GOAWAY.
const SHUTDOWN_PING_WAIT: Duration = Duration::from_secs(2);

/// Opaque data of the PING that times a graceful shutdown.
pub(super) const SHUTDOWN_PING: [u8; 8] = *b"sluice-g";

impl ConnConfig {
    /// The SETTINGS frame this side opens with.
    pub(super) fn settings(&self, side: Side) -> Settings {
        let mut s = Settings {
            initial_window_size: Some(self.stream_window()),
            max_header_list_size: Some(self.max_header_list_size),
            ..Settings::default()
        };
        if self.max_frame_size != frame::DEFAULT_MAX_FRAME_SIZE {
            s.max_frame_size = Some(self.max_frame_size);
        }
        match side {
            Side::Server => s.max_concurrent_streams = Some(self.max_concurrent_streams),
            // "Clients MUST NOT send a PUSH_PROMISE" is the server's rule; this client also
            // says it accepts none.
            Side::Client => s.enable_push = Some(false),
        }
        s
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin, R: Role> Connection<T, R> {
    /// Server: whether the connection has had no stream and received nothing for the idle
    /// timeout; if so, GOAWAY(NO_ERROR) is queued and no new stream is taken. The timer is
    /// moved on only when it fires, not per read.
    pub(super) fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let (Some(timeout), Some(timer)) = (self.cfg.idle_timeout, &mut self.idle_timer) else {
            return false;
        };
        if timer.as_mut().poll(cx).is_pending() {
            return false;
        }
        let now = tokio::time::Instant::now();
        let busy = !self.streams.is_empty() || !self.shared.lock().streams.is_empty();
        let quiet_until = self.last_read + timeout;
        if busy || quiet_until > now {
            let next = if busy { now + timeout } else { quiet_until };
            timer.as_mut().reset(next);
            let _ = timer.as_mut().poll(cx);
            return false;
        }
        tracing::debug!(peer = %self.peer, ?timeout, "idle gRPC connection: closing with GOAWAY");
        self.role.count(Counted::IdleClosed);
        let last = self.last_peer_stream();
        let mut st = self.shared.lock();
        st.closed = true;
        st.going_away = true;
        let mut g = Vec::new();
        frame::goaway(last, Reason::NO_ERROR, b"idle", &mut g);
        st.push_bytes(Bytes::from(g));
        drop(st);
        self.read_done = true;
        true
    }

    /// Server: starts a graceful shutdown, once.
    pub(super) fn start_shutdown(&mut self) {
        if let EndState::Server { goaway_sent, .. } = &mut self.end {
            if !*goaway_sent {
                *goaway_sent = true;
                tracing::debug!(peer = %self.peer, "gRPC connection: graceful shutdown");
                let mut st = self.shared.lock();
                st.going_away = true;
                // RFC 9113 6.8: a GOAWAY with the largest stream id first, then, a round
                // trip later, the real last stream: requests already on their way are
                // still served.
                let mut g = Vec::new();
                frame::goaway(MAX_WINDOW, Reason::NO_ERROR, b"", &mut g);
                g.extend_from_slice(&frame::ping(false, SHUTDOWN_PING));
                st.push_bytes(Bytes::from(g));
            }
        }
    }

    /// Server: the final GOAWAY once the shutdown PING came back (a round trip after the
    /// first GOAWAY: every request the client sent before it saw that one has arrived), or
    /// after [`SHUTDOWN_PING_WAIT`] if the PING is not answered. Not sooner, even with no
    /// stream open: a request already on its way would be lost.
    pub(super) fn maybe_finish_shutdown(&mut self, cx: &mut Context<'_>) {
        if let EndState::Server {
            goaway_sent: true,
            final_goaway: None,
            ..
        } = &self.end
        {
            let timer = self
                .shutdown_timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(SHUTDOWN_PING_WAIT)));
            if timer.as_mut().poll(cx).is_ready() {
                tracing::debug!(peer = %self.peer, "shutdown PING not answered; sending the final GOAWAY");
                self.send_final_goaway();
            }
        }
    }

    pub(super) fn send_final_goaway(&mut self) {
        if let EndState::Server {
            last_stream,
            final_goaway,
            ..
        } = &mut self.end
        {
            if final_goaway.is_none() {
                *final_goaway = Some(*last_stream);
                let mut g = Vec::new();
                frame::goaway(*last_stream, Reason::NO_ERROR, b"", &mut g);
                self.shared.lock().push_bytes(Bytes::from(g));
            }
        }
    }

    /// Fails the connection once the peer is owed more than [`MAX_PENDING_REPLIES`] frames it
    /// has not read.
    pub(super) fn check_replies(&self, st: &State) -> Result<(), Http2Error> {
        let pending = st.replies + self.writing_replies;
        if pending > MAX_PENDING_REPLIES {
            tracing::debug!(peer = %self.peer, pending, "HTTP/2 peer does not read the answers to its frames");
            return Err(Http2Error::protocol(
                Reason::ENHANCE_YOUR_CALM,
                format!("more than {MAX_PENDING_REPLIES} acknowledgements and refusals unread"),
            ));
        }
        Ok(())
    }

    /// Frames other than HEADERS and PRIORITY on a stream that was never opened are a
    /// connection error PROTOCOL_ERROR (RFC 9113 5.1, "idle").
    /// `next_id` is the client's next stream id (the caller holds the lock it is read under).
    fn check_not_idle(&self, id: u32, what: &str, next_id: u32) -> Result<(), Http2Error> {
        let opened = match &self.end {
            // Push is disabled: no even stream is ever opened on a server connection.
            EndState::Server { last_stream, .. } => id % 2 == 1 && id <= *last_stream,
            EndState::Client => id % 2 == 1 && id < next_id,
        };
        if opened {
            return Ok(());
        }
        Err(Http2Error::protocol(
            Reason::PROTOCOL_ERROR,
            format!("{what} on idle stream {id}"),
        ))
    }

    /// Server: a client reset a running stream.
    pub(super) fn spend_reset_budget(&mut self) -> Result<(), Http2Error> {
        if let EndState::Server {
            reset_budget,
            reset_stamp,
            ..
        } = &mut self.end
        {
            let now = Instant::now();
            let refill = now.duration_since(*reset_stamp).as_secs_f64() * RESETS_PER_SECOND;
            *reset_budget = (*reset_budget + refill).min(RESET_BURST) - 1.0;
            *reset_stamp = now;
            if *reset_budget < 0.0 {
                return Err(Http2Error::protocol(
                    Reason::ENHANCE_YOUR_CALM,
                    "too many streams reset by the client",
                ));
            }
        }
        Ok(())
    }

    /// RST_STREAM from the peer.
    pub(super) fn on_reset(&mut self, id: u32, reason: Reason) -> Result<(), Http2Error> {
        let mut wakes = Wakes::default();
        {
            let mut st = self.shared.lock();
            self.check_not_idle(id, "RST_STREAM", st.next_id)?;
            if let Some(mut s) = st.streams.remove(&id) {
                s.gone = true;
                wakes.extend(s.wakers);
            }
            wakes.extend(st.open_waiters.drain(..));
        }
        if let Some(r) = self.streams.remove(&id) {
            self.role.count(Counted::ResetByPeer);
            let who = match R::SIDE {
                Side::Server => "client",
                Side::Client => "server",
            };
            let _ = sluice_stream::EventSink::push(
                &r.to_user,
                Event::Reset(Reset {
                    code: ResetCode::Http2(reason.0),
                    message: format!("stream reset by the {who}: {reason}"),
                    cancel_path: None,
                }),
            );
        }
        Ok(())
    }

    pub(super) fn on_settings(&mut self, s: Settings) -> Result<(), Http2Error> {
        let mut wakes = Wakes::default();
        let mut st = self.shared.lock();
        if let Some(v) = s.initial_window_size {
            let delta = i64::from(v) - st.peer_initial_window;
            st.peer_initial_window = i64::from(v);
            for stream in st.streams.values_mut() {
                stream.window += delta;
                // "A change to SETTINGS_INITIAL_WINDOW_SIZE can cause any flow-control window
                // to exceed the maximum size ... a connection error of type
                // FLOW_CONTROL_ERROR."
                if stream.window > i64::from(MAX_WINDOW) {
                    return Err(Http2Error::protocol(
                        Reason::FLOW_CONTROL_ERROR,
                        "SETTINGS_INITIAL_WINDOW_SIZE overflows a stream window",
                    ));
                }
            }
        }
        if let Some(v) = s.max_frame_size {
            st.peer_max_frame = v as usize;
        }
        if let Some(v) = s.max_concurrent_streams {
            st.peer_max_streams = v as usize;
            wakes.extend(st.open_waiters.drain(..));
        }
        if s.header_table_size.is_some() {
            st.encoder.peer_table_size_changed();
        }
        st.push_reply(&frame::SETTINGS_ACK);
        self.check_replies(&st)?;
        if s.initial_window_size.is_some() {
            let ids: Vec<u32> = st.streams.keys().copied().collect();
            for id in ids {
                st.flush_stream(id, &mut wakes);
            }
        }
        Ok(())
    }

    pub(super) fn on_window_update(&mut self, id: u32, increment: u32) -> Result<(), Http2Error> {
        let mut wakes = Wakes::default();
        let mut st = self.shared.lock();
        if id == 0 {
            st.conn_window += i64::from(increment);
            if st.conn_window > i64::from(MAX_WINDOW) {
                return Err(Http2Error::protocol(
                    Reason::FLOW_CONTROL_ERROR,
                    "connection window above 2^31-1",
                ));
            }
            st.flush_blocked(&mut wakes);
            return Ok(());
        }
        let Some(s) = st.streams.get_mut(&id) else {
            return self.check_not_idle(id, "WINDOW_UPDATE", st.next_id);
        };
        s.window += i64::from(increment);
        if s.window > i64::from(MAX_WINDOW) {
            drop(st);
            self.reset_stream(id, Reason::FLOW_CONTROL_ERROR, "stream window above 2^31-1");
            return Ok(());
        }
        st.flush_stream(id, &mut wakes);
        Ok(())
    }

    pub(super) fn on_goaway(
        &mut self,
        last: u32,
        reason: Reason,
        debug: &[u8],
    ) -> Result<(), Http2Error> {
        let text = String::from_utf8_lossy(debug).into_owned();
        if reason != Reason::NO_ERROR {
            tracing::debug!(peer = %self.peer, %reason, debug = %text, "peer sent GOAWAY");
        }
        let mut refused = Vec::new();
        {
            let mut wakes = Wakes::default();
            let mut st = self.shared.lock();
            st.going_away = true;
            wakes.extend(st.open_waiters.drain(..));
            if R::SIDE == Side::Client {
                // Streams above `last` were not processed: they fail, safe to retry.
                let ids: Vec<u32> = st.streams.keys().copied().filter(|&id| id > last).collect();
                for id in ids {
                    if let Some(s) = st.streams.remove(&id) {
                        wakes.extend(s.wakers);
                    }
                    refused.push(id);
                }
            }
        }
        for id in refused {
            if let Some(r) = self.streams.remove(&id) {
                let _ = sluice_stream::EventSink::push(
                    &r.to_user,
                    Event::Reset(Reset {
                        code: ResetCode::Http2(Reason::REFUSED_STREAM.0),
                        message: format!(
                            "server went away ({reason}) before the stream was processed"
                        ),
                        cancel_path: None,
                    }),
                );
            }
        }
        if reason != Reason::NO_ERROR && self.streams.is_empty() {
            return Err(Http2Error::GoAway {
                reason,
                debug: text,
            });
        }
        Ok(())
    }
}
