//! The life of one stream, as frames go by (kitex-wire.md 4.3, 7.8). Sans-IO: the caller
//! reports each frame it sends or receives and gets back what the frame did to the stream.
//!
//! The rules are about the wire, so they are the same whichever end keeps the machine: a
//! [`Stream`] is created for a [`Side`] (its role) only so that [`Stream::send`] and
//! [`Stream::recv`] know which side a frame comes from. A proxy keeps one machine per stream
//! and per leg: role [`Side::Server`] towards its caller, [`Side::Client`] towards the
//! downstream server.
//!
//! Stream ids: the client picks them; 0 is reserved for connection-level frames and refused by
//! [`Stream::new`]; negative ids are legal (Kitex's counter wraps). Frames for an id a
//! connection does not know (never opened, or already forgotten) are dropped silently by Kitex
//! on both sides; that decision belongs to the per-connection table, not to this machine.

use crate::FrameType;

/// The two ends of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// Opens streams (sends the first Header) and picks their ids.
    Client,
    /// Answers them.
    Server,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Client => "client",
            Self::Server => "server",
        })
    }
}

impl Side {
    /// The other end.
    pub fn peer(self) -> Self {
        match self {
            Self::Client => Self::Server,
            Self::Server => Self::Client,
        }
    }
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum End {
    /// The server sent its Trailer (success, business error or exception: the payload and
    /// keys say which).
    Finished,
    /// An Rst from `by` aborted it.
    Reset {
        /// Who sent the Rst.
        by: Side,
    },
}

/// What a frame did to the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Step {
    /// The client's Header: the stream now exists.
    Opened,
    /// A valid frame that leaves the stream open (Data, server Header, Meta).
    Accepted,
    /// The client's Trailer: no more client frames except an Rst; the server may go on.
    HalfClosed,
    /// The frame ended the stream.
    Ended(End),
    /// The stream had already ended; the frame is late and changes nothing. Received: drop it.
    /// To be sent: the peer will drop it, so it may be skipped (Kitex still sends its Trailer
    /// after an Rst, for peers that wait for one).
    Ignored,
}

/// A frame the stream's state does not allow. The state is left as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// Stream id 0 is reserved for connection-level frames.
    #[error("stream id 0 is reserved")]
    ReservedStreamId,
    /// A frame other than the client's Header before the stream was opened.
    #[error("{kind} frame from the {from} before the client's Header opened the stream")]
    NotOpen {
        /// Frame type.
        kind: FrameType,
        /// Sender.
        from: Side,
    },
    /// A Header from a side that is past its Header: a second one, or a server Header after
    /// the server's Rst. A client Header is never late, so on an ended stream it is refused too.
    #[error("unexpected second Header frame from the {from}")]
    UnexpectedHeader {
        /// Sender.
        from: Side,
    },
    /// A Meta frame from the client; Meta only travels server to client.
    #[error("Meta frame from the client")]
    MetaFromClient,
    /// A server Data or Trailer before the server's Header, which Kitex always sends first.
    #[error("server {kind} frame before the server's Header")]
    HeaderNotSent {
        /// Frame type.
        kind: FrameType,
    },
    /// Data or Meta from a side that already sent its Trailer or an Rst.
    #[error("{kind} frame from the {from} after it closed its direction")]
    AfterClose {
        /// Frame type.
        kind: FrameType,
        /// Sender.
        from: Side,
    },
    /// A second client Trailer while the stream is still open.
    #[error("second Trailer frame from the client")]
    DuplicateTrailer,
}

/// What the client has sent so far, past its Header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientDir {
    /// May send Data.
    Sending,
    /// Sent a Trailer or an Rst.
    Done,
}

/// What the server has sent so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerDir {
    /// Its Header is still due (Kitex sends it lazily: before the first Data, or right before
    /// the Trailer).
    AwaitingHeader,
    /// Header sent; may send Data.
    Sending,
    /// Sent a Trailer or an Rst.
    Done,
}

/// The stream state. `C:` and `S:` name the sender of a frame.
///
/// ```text
///            C:Header
///   Idle ─────────────────► Open { client: Sending, server: AwaitingHeader }
///    │                        │
///    │ anything else:         │ client:  Sending ── C:Trailer ──► Done     (half-close)
///    │ NotOpen                │ server:  AwaitingHeader ── S:Header ──► Sending
///    ▼                        │ stay:    C:Data (client Sending), S:Data (server Sending),
///  error                      │          S:Meta (server not Done)
///                             │
///                             │ S:Trailer (server Sending) ────────► Ended(Finished)
///                             │ C:Rst / S:Rst (either may already    Ended(Reset { by })
///                             │   have half-closed) ───────────────►
///                             ▼
///   Ended { end, client, server }   late frames change nothing but are Ignored:
///                                   - Trailer / Rst from anyone (marks the sender Done);
///                                   - Data / Meta / the due server Header from a side that
///                                     had not closed (in flight when the stream ended);
///                                   Data / Meta from a side that had closed: AfterClose.
/// ```
///
/// Errors in any state: a Header from a side past its Header (UnexpectedHeader), C:Meta
/// (MetaFromClient); while Open: S:Data or S:Trailer before S:Header (HeaderNotSent), Data or
/// Meta after the sender's own Trailer or Rst (AfterClose), C:Trailer twice
/// (DuplicateTrailer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Created; waiting for the client's Header.
    Idle,
    /// Open in at least the server-to-client direction.
    Open {
        client: ClientDir,
        server: ServerDir,
    },
    /// Terminal. The per-side progress is kept to tell late frames from violations.
    Ended {
        end: End,
        client: ClientDir,
        server: ServerDir,
    },
}

type Transition = Result<(State, Step), StateError>;

impl State {
    fn client_header(self) -> Transition {
        match self {
            State::Idle => Ok((
                State::Open {
                    client: ClientDir::Sending,
                    server: ServerDir::AwaitingHeader,
                },
                Step::Opened,
            )),
            // A client never re-sends its Header, late or not: a second one means a reused id.
            _ => Err(StateError::UnexpectedHeader { from: Side::Client }),
        }
    }

    fn client_data(self) -> Transition {
        match self {
            State::Idle => Err(not_open(FrameType::Data, Side::Client)),
            State::Open {
                client: ClientDir::Sending,
                ..
            } => Ok((self, Step::Accepted)),
            State::Ended {
                client: ClientDir::Sending,
                ..
            } => Ok((self, Step::Ignored)),
            State::Open { .. } | State::Ended { .. } => Err(StateError::AfterClose {
                kind: FrameType::Data,
                from: Side::Client,
            }),
        }
    }

    fn client_trailer(self) -> Transition {
        match self {
            State::Idle => Err(not_open(FrameType::Trailer, Side::Client)),
            State::Open {
                client: ClientDir::Sending,
                server,
            } => Ok((
                State::Open {
                    client: ClientDir::Done,
                    server,
                },
                Step::HalfClosed,
            )),
            State::Open { .. } => Err(StateError::DuplicateTrailer),
            // Kitex clients send a Trailer when they close a stream that has already ended
            // (after the server's Trailer, or after their own Rst).
            State::Ended { end, server, .. } => Ok((
                State::Ended {
                    end,
                    client: ClientDir::Done,
                    server,
                },
                Step::Ignored,
            )),
        }
    }

    fn client_rst(self) -> Transition {
        match self {
            State::Idle => Err(not_open(FrameType::Rst, Side::Client)),
            // Also after the client's Trailer: a half-closed client may still cancel.
            State::Open { server, .. } => {
                let end = End::Reset { by: Side::Client };
                Ok((
                    State::Ended {
                        end,
                        client: ClientDir::Done,
                        server,
                    },
                    Step::Ended(end),
                ))
            }
            State::Ended { end, server, .. } => Ok((
                State::Ended {
                    end,
                    client: ClientDir::Done,
                    server,
                },
                Step::Ignored,
            )),
        }
    }

    fn server_header(self) -> Transition {
        match self {
            State::Idle => Err(not_open(FrameType::Header, Side::Server)),
            State::Open {
                client,
                server: ServerDir::AwaitingHeader,
            } => Ok((
                State::Open {
                    client,
                    server: ServerDir::Sending,
                },
                Step::Accepted,
            )),
            // Kitex's server still sends its due Header when it finishes a stream that the
            // client reset.
            State::Ended {
                end,
                client,
                server: ServerDir::AwaitingHeader,
            } => Ok((
                State::Ended {
                    end,
                    client,
                    server: ServerDir::Sending,
                },
                Step::Ignored,
            )),
            State::Open { .. } | State::Ended { .. } => {
                Err(StateError::UnexpectedHeader { from: Side::Server })
            }
        }
    }

    fn server_data(self) -> Transition {
        match self {
            State::Idle => Err(not_open(FrameType::Data, Side::Server)),
            State::Open { server, .. } => match server {
                ServerDir::Sending => Ok((self, Step::Accepted)),
                ServerDir::AwaitingHeader => Err(StateError::HeaderNotSent {
                    kind: FrameType::Data,
                }),
                ServerDir::Done => Err(after_close(FrameType::Data)),
            },
            State::Ended { server, .. } => match server {
                ServerDir::Done => Err(after_close(FrameType::Data)),
                // In flight when the client reset the stream.
                ServerDir::AwaitingHeader | ServerDir::Sending => Ok((self, Step::Ignored)),
            },
        }
    }

    fn server_meta(self) -> Transition {
        match self {
            State::Idle => Err(not_open(FrameType::Meta, Side::Server)),
            State::Open { server, .. } => match server {
                ServerDir::Done => Err(after_close(FrameType::Meta)),
                ServerDir::AwaitingHeader | ServerDir::Sending => Ok((self, Step::Accepted)),
            },
            State::Ended { server, .. } => match server {
                ServerDir::Done => Err(after_close(FrameType::Meta)),
                ServerDir::AwaitingHeader | ServerDir::Sending => Ok((self, Step::Ignored)),
            },
        }
    }

    fn server_trailer(self) -> Transition {
        match self {
            State::Idle => Err(not_open(FrameType::Trailer, Side::Server)),
            State::Open {
                server: ServerDir::AwaitingHeader,
                ..
            } => Err(StateError::HeaderNotSent {
                kind: FrameType::Trailer,
            }),
            // The server's Trailer ends the stream whether or not the client half-closed.
            State::Open { client, .. } => Ok((
                State::Ended {
                    end: End::Finished,
                    client,
                    server: ServerDir::Done,
                },
                Step::Ended(End::Finished),
            )),
            State::Ended { end, client, .. } => Ok((
                State::Ended {
                    end,
                    client,
                    server: ServerDir::Done,
                },
                Step::Ignored,
            )),
        }
    }

    fn server_rst(self) -> Transition {
        match self {
            State::Idle => Err(not_open(FrameType::Rst, Side::Server)),
            State::Open { client, .. } => {
                let end = End::Reset { by: Side::Server };
                Ok((
                    State::Ended {
                        end,
                        client,
                        server: ServerDir::Done,
                    },
                    Step::Ended(end),
                ))
            }
            State::Ended { end, client, .. } => Ok((
                State::Ended {
                    end,
                    client,
                    server: ServerDir::Done,
                },
                Step::Ignored,
            )),
        }
    }
}

fn not_open(kind: FrameType, from: Side) -> StateError {
    StateError::NotOpen { kind, from }
}

fn after_close(kind: FrameType) -> StateError {
    StateError::AfterClose {
        kind,
        from: Side::Server,
    }
}

/// One stream's state machine, kept by one end (`role`) of the stream.
#[derive(Debug, Clone)]
pub struct Stream {
    id: i32,
    role: Side,
    state: State,
}

impl Stream {
    /// A stream that waits for the client's Header. Refuses the reserved id 0.
    pub fn new(role: Side, id: i32) -> Result<Self, StateError> {
        if id == 0 {
            return Err(StateError::ReservedStreamId);
        }
        Ok(Self {
            id,
            role,
            state: State::Idle,
        })
    }

    /// The stream id.
    pub fn id(&self) -> i32 {
        self.id
    }

    /// The end of the stream this machine is kept by.
    pub fn role(&self) -> Side {
        self.role
    }

    /// Records a frame this end is about to write.
    pub fn send(&mut self, kind: FrameType) -> Result<Step, StateError> {
        self.apply(self.role, kind)
    }

    /// Records a frame read from the peer.
    pub fn recv(&mut self, kind: FrameType) -> Result<Step, StateError> {
        self.apply(self.role.peer(), kind)
    }

    /// Records a frame of `kind` sent by `from`. On error the state is unchanged.
    pub fn apply(&mut self, from: Side, kind: FrameType) -> Result<Step, StateError> {
        let s = self.state;
        let (next, step) = match (from, kind) {
            (Side::Client, FrameType::Header) => s.client_header(),
            (Side::Client, FrameType::Data) => s.client_data(),
            (Side::Client, FrameType::Trailer) => s.client_trailer(),
            (Side::Client, FrameType::Rst) => s.client_rst(),
            (Side::Client, FrameType::Meta) => Err(StateError::MetaFromClient),
            (Side::Server, FrameType::Header) => s.server_header(),
            (Side::Server, FrameType::Data) => s.server_data(),
            (Side::Server, FrameType::Meta) => s.server_meta(),
            (Side::Server, FrameType::Trailer) => s.server_trailer(),
            (Side::Server, FrameType::Rst) => s.server_rst(),
        }?;
        self.state = next;
        Ok(step)
    }

    /// True once the client's Header was seen, until the stream ends.
    pub fn is_open(&self) -> bool {
        matches!(self.state, State::Open { .. })
    }

    /// How the stream ended, once it has.
    pub fn end(&self) -> Option<End> {
        match self.state {
            State::Ended { end, .. } => Some(end),
            _ => None,
        }
    }

    /// True once the stream has ended.
    pub fn is_ended(&self) -> bool {
        self.end().is_some()
    }

    /// True once the client has sent its Trailer or an Rst.
    pub fn client_done(&self) -> bool {
        matches!(
            self.state,
            State::Open {
                client: ClientDir::Done,
                ..
            } | State::Ended {
                client: ClientDir::Done,
                ..
            }
        )
    }

    /// True while the server still owes its Header on an open stream: a server end must send
    /// one before its first Data or its Trailer.
    pub fn server_header_due(&self) -> bool {
        matches!(
            self.state,
            State::Open {
                server: ServerDir::AwaitingHeader,
                ..
            }
        )
    }

    /// True if `from` may send Data now (the stream is open and `from` has not closed).
    pub fn can_send_data(&self, from: Side) -> bool {
        match self.state {
            State::Open { client, server } => match from {
                Side::Client => client == ClientDir::Sending,
                Side::Server => server == ServerDir::Sending,
            },
            State::Idle | State::Ended { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FrameType::*;
    use Side::*;

    fn opened() -> Stream {
        let mut s = Stream::new(Server, 1).unwrap();
        assert_eq!(s.apply(Client, Header), Ok(Step::Opened));
        s
    }

    /// An open stream whose server Header went out.
    fn flowing() -> Stream {
        let mut s = opened();
        assert_eq!(s.apply(Server, Header), Ok(Step::Accepted));
        s
    }

    #[test]
    fn stream_id_zero_is_reserved_and_negatives_are_fine() {
        assert_eq!(
            Stream::new(Server, 0).unwrap_err(),
            StateError::ReservedStreamId
        );
        let s = Stream::new(Client, -5).unwrap();
        assert_eq!((s.id(), s.role()), (-5, Client));
        assert!(!s.is_open() && !s.is_ended());
    }

    #[test]
    fn bidi_lifecycle() {
        let mut s = opened();
        assert!(s.is_open());
        assert!(s.server_header_due());
        assert!(s.can_send_data(Client));
        assert!(!s.can_send_data(Server));
        assert_eq!(s.apply(Client, Data), Ok(Step::Accepted));
        assert_eq!(s.apply(Server, Header), Ok(Step::Accepted));
        assert!(!s.server_header_due());
        assert_eq!(s.apply(Server, Data), Ok(Step::Accepted));
        assert_eq!(s.apply(Client, Trailer), Ok(Step::HalfClosed));
        assert!(s.client_done() && !s.can_send_data(Client) && s.can_send_data(Server));
        assert_eq!(s.apply(Server, Data), Ok(Step::Accepted), "server goes on");
        assert_eq!(s.apply(Server, Meta), Ok(Step::Accepted));
        assert_eq!(s.apply(Server, Trailer), Ok(Step::Ended(End::Finished)));
        assert_eq!(s.end(), Some(End::Finished));
        assert!(!s.is_open() && !s.can_send_data(Server));
    }

    #[test]
    fn send_and_recv_map_to_the_role() {
        let mut server = Stream::new(Server, 1).unwrap();
        let mut client = Stream::new(Client, 1).unwrap();
        assert_eq!(server.recv(Header), Ok(Step::Opened));
        assert_eq!(client.send(Header), Ok(Step::Opened));
        assert_eq!(server.send(Header), Ok(Step::Accepted));
        assert_eq!(client.recv(Header), Ok(Step::Accepted));
        assert_eq!(client.send(Meta), Err(StateError::MetaFromClient));
        assert_eq!(client.recv(Meta), Ok(Step::Accepted));
        assert_eq!(server.send(Trailer), Ok(Step::Ended(End::Finished)));
        assert_eq!(client.recv(Trailer), Ok(Step::Ended(End::Finished)));
    }

    #[test]
    fn nothing_but_the_client_header_opens() {
        for kind in FrameType::ALL {
            for from in [Client, Server] {
                if (from, kind) == (Client, Header) {
                    continue;
                }
                let mut s = Stream::new(Server, 1).unwrap();
                let err = s.apply(from, kind).unwrap_err();
                if (from, kind) == (Client, Meta) {
                    assert_eq!(err, StateError::MetaFromClient);
                } else {
                    assert_eq!(err, StateError::NotOpen { kind, from }, "{from:?} {kind}");
                }
                assert!(!s.is_open(), "state unchanged");
                assert_eq!(s.apply(Client, Header), Ok(Step::Opened));
            }
        }
    }

    #[test]
    fn headers_come_once_per_side() {
        let mut s = flowing();
        assert_eq!(
            s.apply(Client, Header),
            Err(StateError::UnexpectedHeader { from: Client })
        );
        assert_eq!(
            s.apply(Server, Header),
            Err(StateError::UnexpectedHeader { from: Server })
        );
        s.apply(Server, Trailer).unwrap();
        assert_eq!(
            s.apply(Client, Header),
            Err(StateError::UnexpectedHeader { from: Client }),
            "a Header is never late"
        );
        assert_eq!(
            s.apply(Server, Header),
            Err(StateError::UnexpectedHeader { from: Server })
        );
    }

    #[test]
    fn server_header_must_precede_data_and_trailer() {
        let mut s = opened();
        assert_eq!(
            s.apply(Server, Data),
            Err(StateError::HeaderNotSent { kind: Data })
        );
        assert_eq!(
            s.apply(Server, Trailer),
            Err(StateError::HeaderNotSent { kind: Trailer })
        );
        // Meta and Rst do not need it.
        assert_eq!(s.apply(Server, Meta), Ok(Step::Accepted));
        assert_eq!(
            s.apply(Server, Rst),
            Ok(Step::Ended(End::Reset { by: Server }))
        );
    }

    #[test]
    fn lazy_header_right_before_the_trailer() {
        // ttstream-echofail: the server's Header goes out just before its error Trailer.
        let mut s = opened();
        s.apply(Client, Data).unwrap();
        assert_eq!(s.apply(Server, Header), Ok(Step::Accepted));
        assert_eq!(s.apply(Server, Trailer), Ok(Step::Ended(End::Finished)));
        assert_eq!(s.apply(Client, Trailer), Ok(Step::Ignored));
    }

    #[test]
    fn data_after_the_senders_close_is_an_error() {
        let mut s = flowing();
        s.apply(Client, Trailer).unwrap();
        let client_data = StateError::AfterClose {
            kind: Data,
            from: Client,
        };
        assert_eq!(s.apply(Client, Data), Err(client_data));
        assert_eq!(s.apply(Client, Trailer), Err(StateError::DuplicateTrailer));
        s.apply(Server, Trailer).unwrap();
        assert_eq!(
            s.apply(Client, Data),
            Err(client_data),
            "still after the end"
        );
        for kind in [Data, Meta] {
            assert_eq!(
                s.apply(Server, kind),
                Err(StateError::AfterClose { kind, from: Server })
            );
        }
        // After its own Rst, too.
        let mut s = flowing();
        s.apply(Client, Rst).unwrap();
        assert_eq!(s.apply(Client, Data), Err(client_data));
    }

    #[test]
    fn late_trailers_and_rsts_are_ignored() {
        // Client reset: its compatibility Trailer and the server's late frames are ignored.
        let mut s = flowing();
        assert_eq!(
            s.apply(Client, Rst),
            Ok(Step::Ended(End::Reset { by: Client }))
        );
        for (from, kind) in [
            (Client, Trailer),
            (Client, Rst),
            (Server, Data),
            (Server, Meta),
            (Server, Trailer),
            (Server, Rst),
            (Client, Trailer),
        ] {
            assert_eq!(s.apply(from, kind), Ok(Step::Ignored), "{from:?} {kind}");
        }
        assert_eq!(s.end(), Some(End::Reset { by: Client }), "end is kept");

        // Server finished first: the client's in-flight Data, Trailer and Rst are ignored.
        let mut s = flowing();
        s.apply(Server, Trailer).unwrap();
        assert_eq!(s.apply(Client, Data), Ok(Step::Ignored));
        assert_eq!(s.apply(Client, Trailer), Ok(Step::Ignored));
        assert_eq!(s.apply(Client, Rst), Ok(Step::Ignored));
        assert_eq!(s.end(), Some(End::Finished));
    }

    #[test]
    fn server_finishing_a_reset_stream_sends_its_due_header() {
        let mut s = opened();
        s.apply(Client, Rst).unwrap();
        assert_eq!(s.apply(Server, Header), Ok(Step::Ignored));
        assert_eq!(
            s.apply(Server, Header),
            Err(StateError::UnexpectedHeader { from: Server })
        );
        assert_eq!(s.apply(Server, Trailer), Ok(Step::Ignored));
    }

    #[test]
    fn half_closed_client_may_still_reset() {
        let mut s = flowing();
        s.apply(Client, Trailer).unwrap();
        assert_eq!(
            s.apply(Client, Rst),
            Ok(Step::Ended(End::Reset { by: Client }))
        );
    }

    #[test]
    fn errors_leave_the_state_alone() {
        let mut s = flowing();
        s.apply(Client, Trailer).unwrap();
        let before = s.state;
        assert!(s.apply(Client, Data).is_err());
        assert!(s.apply(Client, Meta).is_err());
        assert!(s.apply(Server, Header).is_err());
        assert_eq!(s.state, before);
    }
}
