//! HTTP/2 frames (RFC 9113 section 4.1 and section 6): a bounded decoder and encoders.
//!
//! Every frame starts with a 9-byte head: a 24-bit payload length, an 8-bit type, 8 flag bits
//! and a 31-bit stream id (the top bit is reserved and ignored). [`FrameDecoder::decode`] checks
//! the length against the limit this side advertised before it waits for the payload, then
//! checks what the RFC requires of each frame type, and returns payloads as `Bytes` split off
//! the read buffer (no copy).

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Length of a frame head.
pub const HEAD_LEN: usize = 9;

/// SETTINGS_MAX_FRAME_SIZE before a peer says otherwise, and the smallest allowed value.
pub const DEFAULT_MAX_FRAME_SIZE: u32 = 16_384;

/// Largest SETTINGS_MAX_FRAME_SIZE the RFC allows (2^24 - 1).
pub const MAX_FRAME_SIZE_LIMIT: u32 = (1 << 24) - 1;

/// Initial flow-control window of every stream and of the connection.
pub const DEFAULT_WINDOW: u32 = 65_535;

/// Largest flow-control window (2^31 - 1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;

/// Frame types (RFC 9113 section 6).
pub mod kind {
    /// DATA.
    pub const DATA: u8 = 0x0;
    /// HEADERS.
    pub const HEADERS: u8 = 0x1;
    /// PRIORITY (deprecated, still parsed).
    pub const PRIORITY: u8 = 0x2;
    /// RST_STREAM.
    pub const RST_STREAM: u8 = 0x3;
    /// SETTINGS.
    pub const SETTINGS: u8 = 0x4;
    /// PUSH_PROMISE.
    pub const PUSH_PROMISE: u8 = 0x5;
    /// PING.
    pub const PING: u8 = 0x6;
    /// GOAWAY.
    pub const GOAWAY: u8 = 0x7;
    /// WINDOW_UPDATE.
    pub const WINDOW_UPDATE: u8 = 0x8;
    /// CONTINUATION.
    pub const CONTINUATION: u8 = 0x9;
}

/// Frame flags.
pub mod flag {
    /// DATA, HEADERS: the sender's last frame on the stream.
    pub const END_STREAM: u8 = 0x1;
    /// SETTINGS, PING: an acknowledgement.
    pub const ACK: u8 = 0x1;
    /// HEADERS, PUSH_PROMISE, CONTINUATION: the field block is complete.
    pub const END_HEADERS: u8 = 0x4;
    /// DATA, HEADERS, PUSH_PROMISE: a pad length byte and padding are present.
    pub const PADDED: u8 = 0x8;
    /// HEADERS: a priority block is present.
    pub const PRIORITY: u8 = 0x20;
}

/// Setting identifiers (RFC 9113 section 6.5.2).
pub mod setting {
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub const HEADER_TABLE_SIZE: u16 = 0x1;
    /// SETTINGS_ENABLE_PUSH.
    pub const ENABLE_PUSH: u16 = 0x2;
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
    /// SETTINGS_INITIAL_WINDOW_SIZE.
    pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
    /// SETTINGS_MAX_FRAME_SIZE.
    pub const MAX_FRAME_SIZE: u16 = 0x5;
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;
}

/// An HTTP/2 error code (RFC 9113 section 7), as sent in RST_STREAM and GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Reason(pub u32);

impl Reason {
    /// Graceful shutdown, or a stream that is no longer needed.
    pub const NO_ERROR: Reason = Reason(0x0);
    /// Unspecific protocol error.
    pub const PROTOCOL_ERROR: Reason = Reason(0x1);
    /// Implementation fault.
    pub const INTERNAL_ERROR: Reason = Reason(0x2);
    /// Flow-control limits exceeded.
    pub const FLOW_CONTROL_ERROR: Reason = Reason(0x3);
    /// SETTINGS not acknowledged in time.
    pub const SETTINGS_TIMEOUT: Reason = Reason(0x4);
    /// Frame received for a closed stream.
    pub const STREAM_CLOSED: Reason = Reason(0x5);
    /// Frame size incorrect.
    pub const FRAME_SIZE_ERROR: Reason = Reason(0x6);
    /// Stream not processed: safe to retry.
    pub const REFUSED_STREAM: Reason = Reason(0x7);
    /// Stream cancelled.
    pub const CANCEL: Reason = Reason(0x8);
    /// Compression state not updated.
    pub const COMPRESSION_ERROR: Reason = Reason(0x9);
    /// TCP connection error for CONNECT.
    pub const CONNECT_ERROR: Reason = Reason(0xa);
    /// Processing capacity exceeded.
    pub const ENHANCE_YOUR_CALM: Reason = Reason(0xb);
    /// Negotiated TLS parameters not acceptable.
    pub const INADEQUATE_SECURITY: Reason = Reason(0xc);
    /// Use HTTP/1.1 for the request.
    pub const HTTP_1_1_REQUIRED: Reason = Reason(0xd);

    /// The RFC's name for the code, if it has one.
    pub fn name(self) -> Option<&'static str> {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        NAMES.get(self.0 as usize).copied()
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "error code {:#x}", self.0),
        }
    }
}

impl From<Reason> for u32 {
    fn from(r: Reason) -> u32 {
        r.0
    }
}

/// A frame the RFC does not allow, and how far the damage goes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}: {what}")]
pub struct FrameError {
    /// The error code to send.
    pub reason: Reason,
    /// `Some(id)`: a stream error (RST_STREAM on that stream; the frame was consumed and the
    /// connection goes on). `None`: a connection error (GOAWAY, then close).
    pub stream: Option<u32>,
    /// What was wrong.
    pub what: &'static str,
}

impl FrameError {
    fn conn(reason: Reason, what: &'static str) -> FrameError {
        FrameError {
            reason,
            stream: None,
            what,
        }
    }

    fn stream(id: u32, reason: Reason, what: &'static str) -> FrameError {
        FrameError {
            reason,
            stream: Some(id),
            what,
        }
    }
}

/// A frame head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Payload length.
    pub len: usize,
    /// Frame type ([`kind`]).
    pub kind: u8,
    /// Flags ([`flag`]).
    pub flags: u8,
    /// Stream id (the reserved bit cleared).
    pub stream: u32,
}

impl Head {
    /// Parses the 9 head bytes.
    pub fn parse(b: &[u8; HEAD_LEN]) -> Head {
        Head {
            len: (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]),
            kind: b[3],
            flags: b[4],
            // "The semantics of this bit are undefined, and the bit MUST remain unset (0x00)
            // when sending and MUST be ignored when receiving." (RFC 9113 section 4.1)
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & MAX_WINDOW,
        }
    }

    /// The 9 head bytes of a frame. `len` must fit 24 bits (callers split payloads by the
    /// peer's maximum frame size, which is at most 2^24 - 1).
    pub fn encode(len: usize, kind: u8, flags: u8, stream: u32) -> [u8; HEAD_LEN] {
        debug_assert!(len <= MAX_FRAME_SIZE_LIMIT as usize);
        let l = (len as u32).to_be_bytes();
        let s = (stream & MAX_WINDOW).to_be_bytes();
        [l[1], l[2], l[3], kind, flags, s[0], s[1], s[2], s[3]]
    }
}

/// Stream priority fields (HEADERS with the PRIORITY flag, and PRIORITY frames). Parsed only to
/// be validated: RFC 9113 deprecates the scheme, and this crate's users ignore it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Priority {
    /// The stream this one depends on.
    pub dependency: u32,
    /// The exclusive flag.
    pub exclusive: bool,
    /// Weight minus one, as sent.
    pub weight: u8,
}

/// A DATA frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// Stream id (never 0).
    pub stream: u32,
    /// END_STREAM flag.
    pub end_stream: bool,
    /// The data, padding removed (a slice of the read buffer).
    pub payload: Bytes,
    /// The whole payload length, padding included: what flow control counts.
    pub flow_len: usize,
}

/// A HEADERS frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    /// Stream id (never 0).
    pub stream: u32,
    /// END_STREAM flag.
    pub end_stream: bool,
    /// END_HEADERS flag: no CONTINUATION follows.
    pub end_headers: bool,
    /// Priority fields, if the PRIORITY flag was set.
    pub priority: Option<Priority>,
    /// The field block fragment (padding removed).
    pub block: Bytes,
}

impl Headers {
    /// The priority fields make the stream depend on itself: "An endpoint MUST treat this as a
    /// stream error of type PROTOCOL_ERROR" (RFC 9113 section 5.3.1), once the field block has
    /// been decoded.
    pub fn depends_on_itself(&self) -> bool {
        self.priority.is_some_and(|p| p.dependency == self.stream)
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// DATA.
    Data(Data),
    /// HEADERS.
    Headers(Headers),
    /// PRIORITY.
    Priority {
        /// Stream id.
        stream: u32,
        /// The fields.
        priority: Priority,
    },
    /// RST_STREAM.
    RstStream {
        /// Stream id.
        stream: u32,
        /// Error code.
        reason: Reason,
    },
    /// SETTINGS (or its acknowledgement).
    Settings {
        /// ACK flag (then `settings` is empty).
        ack: bool,
        /// The values, validated.
        settings: Settings,
    },
    /// PUSH_PROMISE.
    PushPromise {
        /// Stream id of the associated request.
        stream: u32,
        /// The promised stream id.
        promised: u32,
        /// END_HEADERS flag.
        end_headers: bool,
        /// The field block fragment.
        block: Bytes,
    },
    /// PING.
    Ping {
        /// ACK flag.
        ack: bool,
        /// Opaque data, echoed in the acknowledgement.
        payload: [u8; 8],
    },
    /// GOAWAY.
    GoAway {
        /// Highest stream id the sender processed or may process.
        last_stream: u32,
        /// Error code.
        reason: Reason,
        /// Debug data (free text in practice).
        debug: Bytes,
    },
    /// WINDOW_UPDATE.
    WindowUpdate {
        /// Stream id, 0 for the connection.
        stream: u32,
        /// Window size increment (1 to 2^31 - 1).
        increment: u32,
    },
    /// CONTINUATION.
    Continuation {
        /// Stream id.
        stream: u32,
        /// END_HEADERS flag.
        end_headers: bool,
        /// The field block fragment.
        block: Bytes,
    },
    /// A frame of a type this crate does not know: "Implementations MUST ignore and discard
    /// frames of unknown types" (RFC 9113 section 4.1).
    Unknown {
        /// Frame type.
        kind: u8,
        /// Stream id.
        stream: u32,
    },
}

/// SETTINGS values; `None` for settings the frame did not carry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// SETTINGS_HEADER_TABLE_SIZE.
    pub header_table_size: Option<u32>,
    /// SETTINGS_ENABLE_PUSH.
    pub enable_push: Option<bool>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS.
    pub max_concurrent_streams: Option<u32>,
    /// SETTINGS_INITIAL_WINDOW_SIZE (at most 2^31 - 1).
    pub initial_window_size: Option<u32>,
    /// SETTINGS_MAX_FRAME_SIZE (16384 to 2^24 - 1).
    pub max_frame_size: Option<u32>,
    /// SETTINGS_MAX_HEADER_LIST_SIZE.
    pub max_header_list_size: Option<u32>,
}

impl Settings {
    /// Parses and validates a SETTINGS payload (a multiple of 6 bytes; later values of the same
    /// setting win, unknown settings are ignored).
    fn parse(mut p: &[u8]) -> Result<Settings, FrameError> {
        let mut s = Settings::default();
        while p.len() >= 6 {
            let id = p.get_u16();
            let value = p.get_u32();
            match id {
                setting::HEADER_TABLE_SIZE => s.header_table_size = Some(value),
                setting::ENABLE_PUSH => {
                    // "Any value other than 0 or 1 MUST be treated as a connection error of
                    // type PROTOCOL_ERROR."
                    if value > 1 {
                        return Err(FrameError::conn(
                            Reason::PROTOCOL_ERROR,
                            "SETTINGS_ENABLE_PUSH other than 0 or 1",
                        ));
                    }
                    s.enable_push = Some(value == 1);
                }
                setting::MAX_CONCURRENT_STREAMS => s.max_concurrent_streams = Some(value),
                setting::INITIAL_WINDOW_SIZE => {
                    // "Values above the maximum flow-control window size of 2^31-1 MUST be
                    // treated as a connection error of type FLOW_CONTROL_ERROR."
                    if value > MAX_WINDOW {
                        return Err(FrameError::conn(
                            Reason::FLOW_CONTROL_ERROR,
                            "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1",
                        ));
                    }
                    s.initial_window_size = Some(value);
                }
                setting::MAX_FRAME_SIZE => {
                    // "Values outside this range MUST be treated as a connection error of type
                    // PROTOCOL_ERROR."
                    if !(DEFAULT_MAX_FRAME_SIZE..=MAX_FRAME_SIZE_LIMIT).contains(&value) {
                        return Err(FrameError::conn(
                            Reason::PROTOCOL_ERROR,
                            "SETTINGS_MAX_FRAME_SIZE outside 16384..=16777215",
                        ));
                    }
                    s.max_frame_size = Some(value);
                }
                setting::MAX_HEADER_LIST_SIZE => s.max_header_list_size = Some(value),
                _ => {}
            }
        }
        Ok(s)
    }

    /// The values that are set, as (identifier, value) pairs in identifier order.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, u32)> {
        [
            (setting::HEADER_TABLE_SIZE, self.header_table_size),
            (setting::ENABLE_PUSH, self.enable_push.map(u32::from)),
            (setting::MAX_CONCURRENT_STREAMS, self.max_concurrent_streams),
            (setting::INITIAL_WINDOW_SIZE, self.initial_window_size),
            (setting::MAX_FRAME_SIZE, self.max_frame_size),
            (setting::MAX_HEADER_LIST_SIZE, self.max_header_list_size),
        ]
        .into_iter()
        .filter_map(|(id, v)| v.map(|v| (id, v)))
    }

    /// Writes a SETTINGS frame carrying these values.
    pub fn encode(&self, out: &mut impl BufMut) {
        let n = self.pairs().count();
        out.put_slice(&Head::encode(n * 6, kind::SETTINGS, 0, 0));
        for (id, v) in self.pairs() {
            out.put_u16(id);
            out.put_u32(v);
        }
    }
}

/// Room reserved ahead of what has arrived, at least: a length the peer claims is not taken on
/// trust (a frame header claiming 16 MiB and nothing after it must not cost 16 MiB).
pub const RESERVE_STEP: usize = 64 * 1024;

/// How much to reserve for `missing` more bytes on top of `buffered`: all of it when that is
/// within [`RESERVE_STEP`] or within what has arrived already (so a buffer at most doubles, and
/// a long payload costs a logarithmic number of copies), otherwise only that much.
pub fn reserve_step(buffered: usize, missing: usize) -> usize {
    missing.min(buffered.max(RESERVE_STEP))
}

/// Splits frames off a read buffer.
#[derive(Debug, Clone)]
pub struct FrameDecoder {
    max_frame_size: usize,
}

impl FrameDecoder {
    /// A decoder accepting payloads up to `max_frame_size`, the SETTINGS_MAX_FRAME_SIZE this
    /// side advertises (clamped to the RFC's range).
    pub fn new(max_frame_size: u32) -> FrameDecoder {
        FrameDecoder {
            max_frame_size: max_frame_size.clamp(DEFAULT_MAX_FRAME_SIZE, MAX_FRAME_SIZE_LIMIT)
                as usize,
        }
    }

    /// The next frame, or `Ok(None)` if `buf` does not hold a whole one yet (room for it is
    /// then reserved). A stream error consumes its frame; after a connection error the buffer
    /// is in an unspecified state and the connection must end.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < HEAD_LEN {
            return Ok(None);
        }
        let head = Head::parse(buf[..HEAD_LEN].try_into().expect("9 bytes"));
        // "An endpoint MUST send an error code of FRAME_SIZE_ERROR if a frame exceeds the size
        // defined in SETTINGS_MAX_FRAME_SIZE" (section 4.2). Checked before waiting for, or
        // reserving room for, the payload.
        if head.len > self.max_frame_size {
            return Err(FrameError::conn(
                Reason::FRAME_SIZE_ERROR,
                "frame larger than SETTINGS_MAX_FRAME_SIZE",
            ));
        }
        if buf.len() < HEAD_LEN + head.len {
            buf.reserve(reserve_step(buf.len(), HEAD_LEN + head.len - buf.len()));
            return Ok(None);
        }
        buf.advance(HEAD_LEN);
        let payload = buf.split_to(head.len).freeze();
        parse(head, payload).map(Some)
    }
}

/// Removes padding: the pad length byte in front, the padding at the end.
fn unpad(head: &Head, mut payload: Bytes) -> Result<Bytes, FrameError> {
    if head.flags & flag::PADDED == 0 {
        return Ok(payload);
    }
    if payload.is_empty() {
        return Err(FrameError::conn(
            Reason::FRAME_SIZE_ERROR,
            "PADDED frame without a pad length",
        ));
    }
    let pad = usize::from(payload[0]);
    payload.advance(1);
    // "If the length of the padding is the length of the frame payload or greater, the
    // recipient MUST treat this as a connection error of type PROTOCOL_ERROR."
    if pad > payload.len() {
        return Err(FrameError::conn(
            Reason::PROTOCOL_ERROR,
            "padding longer than the frame payload",
        ));
    }
    payload.truncate(payload.len() - pad);
    Ok(payload)
}

fn priority_fields(b: &[u8]) -> Priority {
    let word = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    Priority {
        dependency: word & MAX_WINDOW,
        exclusive: word & !MAX_WINDOW != 0,
        weight: b[4],
    }
}

fn parse_priority(stream: u32, b: &[u8]) -> Result<Priority, FrameError> {
    let p = priority_fields(b);
    // "A stream cannot depend on itself. An endpoint MUST treat this as a stream error of type
    // PROTOCOL_ERROR." (section 5.3.1)
    if p.dependency == stream {
        return Err(FrameError::stream(
            stream,
            Reason::PROTOCOL_ERROR,
            "stream depends on itself",
        ));
    }
    Ok(p)
}

fn parse(head: Head, payload: Bytes) -> Result<Frame, FrameError> {
    let stream = head.stream;
    let need_stream = |what: &'static str| -> Result<(), FrameError> {
        if stream == 0 {
            Err(FrameError::conn(Reason::PROTOCOL_ERROR, what))
        } else {
            Ok(())
        }
    };
    let need_conn = |what: &'static str| -> Result<(), FrameError> {
        if stream != 0 {
            Err(FrameError::conn(Reason::PROTOCOL_ERROR, what))
        } else {
            Ok(())
        }
    };
    Ok(match head.kind {
        kind::DATA => {
            need_stream("DATA on stream 0")?;
            let flow_len = payload.len();
            Frame::Data(Data {
                stream,
                end_stream: head.flags & flag::END_STREAM != 0,
                payload: unpad(&head, payload)?,
                flow_len,
            })
        }
        kind::HEADERS => {
            need_stream("HEADERS on stream 0")?;
            let mut block = unpad(&head, payload)?;
            let priority = if head.flags & flag::PRIORITY != 0 {
                if block.len() < 5 {
                    return Err(FrameError::conn(
                        Reason::FRAME_SIZE_ERROR,
                        "HEADERS too short for its priority fields",
                    ));
                }
                // A self-dependency is a stream error, but the field block must still be
                // decoded to keep the HPACK state: the caller checks
                // [`Headers::depends_on_itself`] after decoding it.
                let p = priority_fields(&block[..5]);
                block.advance(5);
                Some(p)
            } else {
                None
            };
            Frame::Headers(Headers {
                stream,
                end_stream: head.flags & flag::END_STREAM != 0,
                end_headers: head.flags & flag::END_HEADERS != 0,
                priority,
                block,
            })
        }
        kind::PRIORITY => {
            need_stream("PRIORITY on stream 0")?;
            // "A PRIORITY frame with a length other than 5 octets MUST be treated as a stream
            // error of type FRAME_SIZE_ERROR."
            if payload.len() != 5 {
                return Err(FrameError::stream(
                    stream,
                    Reason::FRAME_SIZE_ERROR,
                    "PRIORITY frame not 5 bytes",
                ));
            }
            Frame::Priority {
                stream,
                priority: parse_priority(stream, &payload)?,
            }
        }
        kind::RST_STREAM => {
            need_stream("RST_STREAM on stream 0")?;
            if payload.len() != 4 {
                return Err(FrameError::conn(
                    Reason::FRAME_SIZE_ERROR,
                    "RST_STREAM frame not 4 bytes",
                ));
            }
            Frame::RstStream {
                stream,
                reason: Reason(u32::from_be_bytes([
                    payload[0], payload[1], payload[2], payload[3],
                ])),
            }
        }
        kind::SETTINGS => {
            need_conn("SETTINGS on a stream")?;
            let ack = head.flags & flag::ACK != 0;
            if ack && !payload.is_empty() {
                return Err(FrameError::conn(
                    Reason::FRAME_SIZE_ERROR,
                    "SETTINGS ACK with a payload",
                ));
            }
            if !payload.len().is_multiple_of(6) {
                return Err(FrameError::conn(
                    Reason::FRAME_SIZE_ERROR,
                    "SETTINGS length not a multiple of 6",
                ));
            }
            Frame::Settings {
                ack,
                settings: Settings::parse(&payload)?,
            }
        }
        kind::PUSH_PROMISE => {
            need_stream("PUSH_PROMISE on stream 0")?;
            let mut block = unpad(&head, payload)?;
            if block.len() < 4 {
                return Err(FrameError::conn(
                    Reason::FRAME_SIZE_ERROR,
                    "PUSH_PROMISE without a promised stream id",
                ));
            }
            let promised = block.get_u32() & MAX_WINDOW;
            Frame::PushPromise {
                stream,
                promised,
                end_headers: head.flags & flag::END_HEADERS != 0,
                block,
            }
        }
        kind::PING => {
            need_conn("PING on a stream")?;
            let payload: [u8; 8] = payload[..].try_into().map_err(|_| {
                FrameError::conn(Reason::FRAME_SIZE_ERROR, "PING frame not 8 bytes")
            })?;
            Frame::Ping {
                ack: head.flags & flag::ACK != 0,
                payload,
            }
        }
        kind::GOAWAY => {
            need_conn("GOAWAY on a stream")?;
            if payload.len() < 8 {
                return Err(FrameError::conn(
                    Reason::FRAME_SIZE_ERROR,
                    "GOAWAY shorter than 8 bytes",
                ));
            }
            let mut p = payload;
            let last_stream = p.get_u32() & MAX_WINDOW;
            let reason = Reason(p.get_u32());
            Frame::GoAway {
                last_stream,
                reason,
                debug: p,
            }
        }
        kind::WINDOW_UPDATE => {
            if payload.len() != 4 {
                return Err(FrameError::conn(
                    Reason::FRAME_SIZE_ERROR,
                    "WINDOW_UPDATE frame not 4 bytes",
                ));
            }
            let increment =
                u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) & MAX_WINDOW;
            // "A receiver MUST treat the receipt of a WINDOW_UPDATE frame with a flow-control
            // window increment of 0 as a stream error of type PROTOCOL_ERROR; errors on the
            // connection flow-control window MUST be treated as a connection error."
            if increment == 0 {
                return Err(if stream == 0 {
                    FrameError::conn(Reason::PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
                } else {
                    FrameError::stream(stream, Reason::PROTOCOL_ERROR, "WINDOW_UPDATE of 0")
                });
            }
            Frame::WindowUpdate { stream, increment }
        }
        kind::CONTINUATION => {
            need_stream("CONTINUATION on stream 0")?;
            Frame::Continuation {
                stream,
                end_headers: head.flags & flag::END_HEADERS != 0,
                block: payload,
            }
        }
        other => Frame::Unknown {
            kind: other,
            stream,
        },
    })
}

/// A SETTINGS acknowledgement.
pub const SETTINGS_ACK: [u8; HEAD_LEN] = [0, 0, 0, kind::SETTINGS, flag::ACK, 0, 0, 0, 0];

/// A PING frame (17 bytes).
pub fn ping(ack: bool, payload: [u8; 8]) -> [u8; HEAD_LEN + 8] {
    let mut out = [0u8; HEAD_LEN + 8];
    out[..HEAD_LEN].copy_from_slice(&Head::encode(
        8,
        kind::PING,
        if ack { flag::ACK } else { 0 },
        0,
    ));
    out[HEAD_LEN..].copy_from_slice(&payload);
    out
}

/// A WINDOW_UPDATE frame (13 bytes). `increment` must be 1 to 2^31 - 1.
pub fn window_update(stream: u32, increment: u32) -> [u8; HEAD_LEN + 4] {
    debug_assert!(increment > 0 && increment <= MAX_WINDOW);
    let mut out = [0u8; HEAD_LEN + 4];
    out[..HEAD_LEN].copy_from_slice(&Head::encode(4, kind::WINDOW_UPDATE, 0, stream));
    out[HEAD_LEN..].copy_from_slice(&(increment & MAX_WINDOW).to_be_bytes());
    out
}

/// An RST_STREAM frame (13 bytes).
pub fn rst_stream(stream: u32, reason: Reason) -> [u8; HEAD_LEN + 4] {
    let mut out = [0u8; HEAD_LEN + 4];
    out[..HEAD_LEN].copy_from_slice(&Head::encode(4, kind::RST_STREAM, 0, stream));
    out[HEAD_LEN..].copy_from_slice(&reason.0.to_be_bytes());
    out
}

/// Writes a GOAWAY frame; `debug` is cut to what fits a 16 KiB frame (every peer accepts that).
pub fn goaway(last_stream: u32, reason: Reason, debug: &[u8], out: &mut impl BufMut) {
    let debug = &debug[..debug.len().min(DEFAULT_MAX_FRAME_SIZE as usize - 8)];
    out.put_slice(&Head::encode(8 + debug.len(), kind::GOAWAY, 0, 0));
    out.put_u32(last_stream & MAX_WINDOW);
    out.put_u32(reason.0);
    out.put_slice(debug);
}

/// Writes a header block as one HEADERS frame and as many CONTINUATION frames as `max_frame`
/// requires; END_HEADERS goes on the last one, END_STREAM (if asked) on the HEADERS frame.
pub fn headers(
    stream: u32,
    block: &[u8],
    end_stream: bool,
    max_frame: usize,
    out: &mut impl BufMut,
) {
    let max_frame = max_frame.max(1);
    let first = block.len().min(max_frame);
    let mut flags = if end_stream { flag::END_STREAM } else { 0 };
    if first == block.len() {
        flags |= flag::END_HEADERS;
    }
    out.put_slice(&Head::encode(first, kind::HEADERS, flags, stream));
    out.put_slice(&block[..first]);
    let mut rest = &block[first..];
    while !rest.is_empty() {
        let n = rest.len().min(max_frame);
        let flags = if n == rest.len() {
            flag::END_HEADERS
        } else {
            0
        };
        out.put_slice(&Head::encode(n, kind::CONTINUATION, flags, stream));
        out.put_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(bytes: &[u8]) -> Vec<Result<Frame, FrameError>> {
        let d = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        loop {
            match d.decode(&mut buf) {
                Ok(Some(f)) => out.push(Ok(f)),
                Ok(None) => break,
                Err(e) => {
                    out.push(Err(e.clone()));
                    if e.stream.is_none() {
                        break;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn a_claimed_length_is_reserved_as_bytes_arrive() {
        let dec = FrameDecoder::new(MAX_FRAME_SIZE_LIMIT);
        // A DATA frame claiming 16 MiB - 1, then 10 bytes of it.
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&Head::encode(
            MAX_FRAME_SIZE_LIMIT as usize,
            kind::DATA,
            0,
            1,
        ));
        buf.extend_from_slice(&[0u8; 10]);
        assert!(dec.decode(&mut buf).unwrap().is_none());
        assert!(
            buf.capacity() <= HEAD_LEN + 10 + RESERVE_STEP,
            "capacity {} for 19 bytes received",
            buf.capacity()
        );
        assert_eq!(reserve_step(0, 100), 100);
        assert_eq!(reserve_step(10, 1 << 24), RESERVE_STEP);
        assert_eq!(reserve_step(1 << 20, 1 << 24), 1 << 20);
    }

    #[test]
    fn head_round_trip_and_reserved_bit() {
        let h = Head::encode(0x01_02_03, kind::DATA, flag::END_STREAM, 7);
        assert_eq!(h, [1, 2, 3, 0, 1, 0, 0, 0, 7]);
        let mut r = h;
        r[5] |= 0x80;
        assert_eq!(Head::parse(&r).stream, 7);
        assert_eq!(Head::parse(&h).len, 0x01_02_03);
    }

    #[test]
    fn settings_vector_from_the_spec() {
        // kitex-wire.md 8.8: client SETTINGS INITIAL_WINDOW_SIZE=65535.
        let f = decode_all(&[0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0xff, 0xff]);
        let settings = Settings {
            initial_window_size: Some(65535),
            ..Settings::default()
        };
        assert_eq!(
            f,
            vec![Ok(Frame::Settings {
                ack: false,
                settings: settings.clone()
            })]
        );
        let mut out = Vec::new();
        settings.encode(&mut out);
        assert_eq!(out, [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0xff, 0xff]);
        assert_eq!(
            decode_all(&SETTINGS_ACK),
            vec![Ok(Frame::Settings {
                ack: true,
                settings: Settings::default()
            })]
        );
    }

    #[test]
    fn oversized_frames_are_refused_before_their_payload_arrives() {
        let head = Head::encode(16_385, kind::DATA, 0, 1);
        let d = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
        let mut buf = BytesMut::from(&head[..]);
        let e = d.decode(&mut buf).unwrap_err();
        assert_eq!((e.reason, e.stream), (Reason::FRAME_SIZE_ERROR, None));
        // A larger advertised limit lets it through.
        let d = FrameDecoder::new(1 << 20);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() >= HEAD_LEN + 16_385);
    }

    #[test]
    fn padding_is_removed_and_counted() {
        let mut f =
            Head::encode(1 + 3 + 2, kind::DATA, flag::PADDED | flag::END_STREAM, 3).to_vec();
        f.extend_from_slice(&[2, b'a', b'b', b'c', 0, 0]);
        assert_eq!(
            decode_all(&f),
            vec![Ok(Frame::Data(Data {
                stream: 3,
                end_stream: true,
                payload: Bytes::from_static(b"abc"),
                flow_len: 6
            }))]
        );
        let mut bad = Head::encode(2, kind::DATA, flag::PADDED, 3).to_vec();
        bad.extend_from_slice(&[2, 0]);
        assert_eq!(
            decode_all(&bad)[0].as_ref().unwrap_err().reason,
            Reason::PROTOCOL_ERROR
        );
    }

    #[test]
    fn rfc_violations_map_to_the_right_errors() {
        let cases: Vec<(Vec<u8>, Reason, bool)> = vec![
            (
                Head::encode(0, kind::DATA, 0, 0).to_vec(),
                Reason::PROTOCOL_ERROR,
                false,
            ),
            (
                Head::encode(0, kind::HEADERS, 0, 0).to_vec(),
                Reason::PROTOCOL_ERROR,
                false,
            ),
            (
                [&Head::encode(4, kind::PRIORITY, 0, 1)[..], &[0; 4]].concat(),
                Reason::FRAME_SIZE_ERROR,
                true,
            ),
            (
                [&Head::encode(5, kind::PRIORITY, 0, 1)[..], &[0, 0, 0, 1, 0]].concat(),
                Reason::PROTOCOL_ERROR,
                true,
            ),
            (
                [&Head::encode(3, kind::RST_STREAM, 0, 1)[..], &[0; 3]].concat(),
                Reason::FRAME_SIZE_ERROR,
                false,
            ),
            (
                [&Head::encode(6, kind::SETTINGS, 0, 1)[..], &[0; 6]].concat(),
                Reason::PROTOCOL_ERROR,
                false,
            ),
            (
                [&Head::encode(6, kind::SETTINGS, flag::ACK, 0)[..], &[0; 6]].concat(),
                Reason::FRAME_SIZE_ERROR,
                false,
            ),
            (
                [&Head::encode(5, kind::SETTINGS, 0, 0)[..], &[0; 5]].concat(),
                Reason::FRAME_SIZE_ERROR,
                false,
            ),
            (
                [
                    &Head::encode(6, kind::SETTINGS, 0, 0)[..],
                    &[0, 2, 0, 0, 0, 2],
                ]
                .concat(),
                Reason::PROTOCOL_ERROR,
                false,
            ),
            (
                [
                    &Head::encode(6, kind::SETTINGS, 0, 0)[..],
                    &[0, 4, 0x80, 0, 0, 0],
                ]
                .concat(),
                Reason::FLOW_CONTROL_ERROR,
                false,
            ),
            (
                [
                    &Head::encode(6, kind::SETTINGS, 0, 0)[..],
                    &[0, 5, 0, 0, 0x3f, 0xff],
                ]
                .concat(),
                Reason::PROTOCOL_ERROR,
                false,
            ),
            (
                [&Head::encode(7, kind::PING, 0, 0)[..], &[0; 7]].concat(),
                Reason::FRAME_SIZE_ERROR,
                false,
            ),
            (
                [&Head::encode(8, kind::PING, 0, 1)[..], &[0; 8]].concat(),
                Reason::PROTOCOL_ERROR,
                false,
            ),
            (
                [&Head::encode(7, kind::GOAWAY, 0, 0)[..], &[0; 7]].concat(),
                Reason::FRAME_SIZE_ERROR,
                false,
            ),
            (
                [&Head::encode(4, kind::WINDOW_UPDATE, 0, 0)[..], &[0; 4]].concat(),
                Reason::PROTOCOL_ERROR,
                false,
            ),
            (
                [
                    &Head::encode(4, kind::WINDOW_UPDATE, 0, 5)[..],
                    &[0x80, 0, 0, 0],
                ]
                .concat(),
                Reason::PROTOCOL_ERROR,
                true,
            ),
            (
                [&Head::encode(3, kind::WINDOW_UPDATE, 0, 5)[..], &[0; 3]].concat(),
                Reason::FRAME_SIZE_ERROR,
                false,
            ),
            (
                Head::encode(0, kind::CONTINUATION, 0, 0).to_vec(),
                Reason::PROTOCOL_ERROR,
                false,
            ),
            (
                [
                    &Head::encode(3, kind::HEADERS, flag::PRIORITY, 1)[..],
                    &[0; 3],
                ]
                .concat(),
                Reason::FRAME_SIZE_ERROR,
                false,
            ),
        ];
        for (bytes, reason, stream_error) in cases {
            let got = decode_all(&bytes);
            let e = got[0].as_ref().expect_err("an error");
            assert_eq!(e.reason, reason, "{bytes:02x?}: {e}");
            assert_eq!(e.stream.is_some(), stream_error, "{bytes:02x?}: {e}");
        }
    }

    #[test]
    fn stream_errors_consume_their_frame() {
        let mut bytes = [
            &Head::encode(4, kind::WINDOW_UPDATE, 0, 5)[..],
            &[0, 0, 0, 0],
        ]
        .concat();
        bytes.extend_from_slice(&window_update(5, 10));
        let got = decode_all(&bytes);
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            Ok(Frame::WindowUpdate {
                stream: 5,
                increment: 10
            })
        );
    }

    #[test]
    fn unknown_frames_are_skipped() {
        let mut bytes = [&Head::encode(3, 0xfa, 0xff, 9)[..], b"xyz"].concat();
        bytes.extend_from_slice(&ping(true, *b"12345678"));
        assert_eq!(
            decode_all(&bytes),
            vec![
                Ok(Frame::Unknown {
                    kind: 0xfa,
                    stream: 9
                }),
                Ok(Frame::Ping {
                    ack: true,
                    payload: *b"12345678"
                })
            ]
        );
    }

    #[test]
    fn control_frame_encoders() {
        assert_eq!(
            decode_all(&rst_stream(3, Reason::CANCEL)),
            vec![Ok(Frame::RstStream {
                stream: 3,
                reason: Reason::CANCEL
            })]
        );
        let mut g = Vec::new();
        goaway(7, Reason::PROTOCOL_ERROR, b"bye", &mut g);
        assert_eq!(
            decode_all(&g),
            vec![Ok(Frame::GoAway {
                last_stream: 7,
                reason: Reason::PROTOCOL_ERROR,
                debug: Bytes::from_static(b"bye")
            })]
        );
        let mut long = Vec::new();
        goaway(0, Reason::NO_ERROR, &[b'x'; 20_000], &mut long);
        assert_eq!(long.len(), HEAD_LEN + 16_384);
    }

    #[test]
    fn header_blocks_split_into_continuations() {
        let block: Vec<u8> = (0..40u8).collect();
        let mut out = Vec::new();
        headers(1, &block, true, 16, &mut out);
        let got = decode_all(&out);
        assert_eq!(got.len(), 3);
        let mut joined = Vec::new();
        for (i, f) in got.into_iter().enumerate() {
            match f.unwrap() {
                Frame::Headers(h) => {
                    assert_eq!(i, 0);
                    assert!(h.end_stream && !h.end_headers);
                    joined.extend_from_slice(&h.block);
                }
                Frame::Continuation {
                    end_headers, block, ..
                } => {
                    assert_eq!(end_headers, i == 2);
                    joined.extend_from_slice(&block);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(joined, block);
        let mut one = Vec::new();
        headers(1, &block, false, 16_384, &mut one);
        assert_eq!(one[4], flag::END_HEADERS);
    }

    #[test]
    fn reason_names() {
        assert_eq!(Reason::CANCEL.to_string(), "CANCEL");
        assert_eq!(Reason(0x42).to_string(), "error code 0x42");
    }
}
