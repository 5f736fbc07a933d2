//! Which protocol a Kitex peer speaks, from the first bytes: pure functions, no I/O.
//!
//! Two questions, asked at two moments (kitex-wire.md sections 3.1, 3.2 and 2.8):
//!
//! * **Per connection**, once, from the first 8 bytes: gRPC (HTTP/2 preface), TTStream (TTHeader
//!   magic with the streaming flag), or ping-pong. [`sniff_connection`].
//! * **Per message** on a ping-pong connection: TTHeader with or without the inner framed length,
//!   Framed thrift, Framed Kitex protobuf, Buffered, or the mesh header. [`sniff_message`].
//!
//! Each answers a [`Detection`] (a protocol, or "not ours" with a named [`Refusal`]) or
//! [`Incomplete`] with how many bytes it needs to decide. Thrift compact and non-strict binary,
//! which Kitex also refuses, are named as such so the log line says why a peer was turned away.
//! The caller keeps the bytes it sniffed and hands them on to the chosen decoder.
#![forbid(unsafe_code)]

use sluice_ttheader::{flags, protocol_id};

/// The HTTP/2 client connection preface.
pub const HTTP2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Bytes the connection-level decision needs, as in Kitex's detection handler.
pub const CONNECTION_SNIFF_LEN: usize = 8;

/// Not enough bytes to decide yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("need at least {needed} bytes to detect the protocol")]
pub struct Incomplete {
    /// Total number of bytes needed (a lower bound).
    pub needed: usize,
}

/// A sniffing answer: one of ours, or not ours and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detection<P> {
    /// A protocol Sluice serves.
    Protocol(P),
    /// Not a protocol Sluice serves.
    NotOurs(Refusal),
}

/// Why bytes are not ours. Each variant names what they most likely are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Thrift compact protocol (`0x82`): Kitex does not speak it.
    #[error("thrift compact protocol is not supported (Kitex accepts strict binary only)")]
    ThriftCompact,
    /// Thrift binary without the version word (old, non-strict): Kitex rejects it.
    #[error("non-strict thrift binary is not supported (Kitex accepts strict binary only)")]
    ThriftNonStrict,
    /// An HTTP/1.x request.
    #[error("HTTP/1.x is not supported")]
    Http1,
    /// A TLS ClientHello on a plaintext listener.
    #[error("TLS handshake on a plaintext listener")]
    Tls,
    /// A TTHeader frame whose protocol id Kitex refuses.
    #[error("TTHeader protocol id {0:#04x} is not supported")]
    TTHeaderProtocol(u8),
    /// A TTHeader frame whose payload is neither strict thrift nor Kitex protobuf.
    #[error("TTHeader payload is neither strict binary thrift nor Kitex protobuf")]
    TTHeaderPayload,
    /// A TTHeader frame whose header section does not fit in the frame.
    #[error("TTHeader header size points outside the frame")]
    TTHeaderMalformed,
    /// Kitex protobuf without the 4-byte length (Kitex has no Buffered protobuf).
    #[error("Kitex protobuf without a length prefix is not supported")]
    BufferedProtobuf,
    /// Anything else.
    #[error("unrecognised protocol")]
    Unknown,
}

/// The connection-level choice (kitex-wire.md 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// gRPC over HTTP/2 (prior knowledge h2c).
    Http2,
    /// TTHeader Streaming.
    TTStream,
    /// TTHeader, Framed, Buffered, Kitex protobuf or mesh-header ping-pong.
    PingPong,
}

impl Family {
    /// Short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Http2 => "grpc",
            Family::TTStream => "ttstream",
            Family::PingPong => "pingpong",
        }
    }
}

/// Payload codec of a ping-pong message, from its version word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Thrift strict binary (`0x8001`).
    Thrift,
    /// Kitex protobuf (`0x9001`).
    KitexProtobuf,
}

/// The per-message choice on a ping-pong connection (kitex-wire.md 2.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Message {
    /// TTHeader; `framed` when the payload has the inner u32 length.
    TTHeader {
        /// Inner framed length present.
        framed: bool,
        /// Payload codec.
        codec: Codec,
    },
    /// A TTStream frame where a ping-pong message was expected.
    TTStream,
    /// Mesh header followed by a Framed (`framed`) or Buffered message.
    Mesh {
        /// Framed message after the mesh header.
        framed: bool,
        /// Payload codec.
        codec: Codec,
    },
    /// `u32 length` + message.
    Framed {
        /// Payload codec.
        codec: Codec,
    },
    /// Bare strict binary thrift message.
    Buffered,
}

impl Message {
    /// The payload codec.
    pub fn codec(&self) -> Option<Codec> {
        match *self {
            Message::TTHeader { codec, .. }
            | Message::Mesh { codec, .. }
            | Message::Framed { codec } => Some(codec),
            Message::Buffered => Some(Codec::Thrift),
            Message::TTStream => None,
        }
    }
}

fn magic_codec(b: &[u8]) -> Option<Codec> {
    match (b[0], b[1]) {
        (0x80, 0x01) => Some(Codec::Thrift),
        (0x90, 0x01) => Some(Codec::KitexProtobuf),
        _ => None,
    }
}

fn need(buf: &[u8], n: usize) -> Result<(), Incomplete> {
    if buf.len() < n {
        Err(Incomplete { needed: n })
    } else {
        Ok(())
    }
}

/// The connection-level choice from the first 8 bytes, in Kitex's order: HTTP/2 preface, then
/// TTStream (TTHeader magic with flag 0x0002), then ping-pong. Bytes that no ping-pong decoder
/// could accept are refused here already, with the reason.
pub fn sniff_connection(buf: &[u8]) -> Result<Detection<Family>, Incomplete> {
    // An HTTP/2 preface is recognisable before 8 bytes arrive only as "still possible".
    need(buf, CONNECTION_SNIFF_LEN)?;
    if buf[..8] == HTTP2_PREFACE[..8] {
        return Ok(Detection::Protocol(Family::Http2));
    }
    if buf[4] == 0x10 && buf[5] == 0x00 && buf[7] & (flags::STREAMING as u8) != 0 {
        return Ok(Detection::Protocol(Family::TTStream));
    }
    Ok(match first_message_kind(buf) {
        Some(refusal) => Detection::NotOurs(refusal),
        None => Detection::Protocol(Family::PingPong),
    })
}

/// With 8 bytes: `None` if some ping-pong decoder may accept them, else why not.
fn first_message_kind(b: &[u8]) -> Option<Refusal> {
    let ttheader = b[4] == 0x10 && b[5] == 0x00;
    let mesh = b[0] == 0xFF && b[1] == 0xAF;
    let buffered = magic_codec(&b[0..2]) == Some(Codec::Thrift);
    let framed = magic_codec(&b[4..6]).is_some();
    if ttheader || mesh || buffered || framed {
        return None;
    }
    Some(refusal_of(b))
}

/// Names what 8+ bytes that match no Kitex transport most likely are.
fn refusal_of(b: &[u8]) -> Refusal {
    if magic_codec(&b[0..2]) == Some(Codec::KitexProtobuf) {
        return Refusal::BufferedProtobuf;
    }
    if is_compact(&b[0..2]) || is_compact(&b[4..6]) {
        return Refusal::ThriftCompact;
    }
    if b[..8] == HTTP2_PREFACE[..8] {
        return Refusal::Unknown;
    }
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"PUT ",
        b"HEAD ",
        b"DELETE ",
        b"OPTIONS ",
        b"PATCH ",
        b"CONNECT ",
        b"TRACE ",
    ];
    if METHODS
        .iter()
        .any(|m| b.starts_with(&m[..m.len().min(b.len())]))
    {
        return Refusal::Http1;
    }
    if b[0] == 0x16 && b[1] == 0x03 && b[2] <= 0x04 {
        return Refusal::Tls;
    }
    if is_non_strict(&b[..8]) || is_framed_non_strict(&b[..8]) {
        return Refusal::ThriftNonStrict;
    }
    Refusal::Unknown
}

/// Compact protocol id 0x82, then (type << 5) | version 1 with a type of 1..=4.
fn is_compact(b: &[u8]) -> bool {
    b[0] == 0x82 && b[1] & 0x1F == 1 && (1..=4).contains(&(b[1] >> 5))
}

/// Non-strict binary in the 8-byte window `b[..8]`: an i32 name length (small, positive) and then
/// identifier bytes. Only the window is looked at, so the answer cannot change as more bytes
/// arrive.
fn is_non_strict(b: &[u8]) -> bool {
    let n = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    if !(1..=255).contains(&n) {
        return false;
    }
    b[4..4 + (n as usize).min(4)]
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.')
}

/// Framed non-strict binary in `b[..8]`: a frame length, then a small name length.
fn is_framed_non_strict(b: &[u8]) -> bool {
    let frame = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    let n = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
    (1..=255).contains(&n) && frame >= n as u32 + 9 && frame <= 64 * 1024 * 1024
}

/// The per-message choice on a ping-pong connection, as Kitex's `DecodeMeta`/`checkPayload` make
/// it: TTHeader (then its payload decides framing and codec), mesh header (likewise), Buffered
/// thrift, then Framed thrift or Kitex protobuf.
///
/// TTHeader and mesh messages need their header and the first 8 payload bytes before the answer
/// is final; [`Incomplete::needed`] says how many bytes that is.
pub fn sniff_message(buf: &[u8]) -> Result<Detection<Message>, Incomplete> {
    need(buf, 8)?;
    if buf[4] == 0x10 && buf[5] == 0x00 {
        return sniff_ttheader(buf);
    }
    if buf[0] == 0xFF && buf[1] == 0xAF {
        let header_end = 4 + usize::from(u16::from_be_bytes([buf[2], buf[3]]));
        need(buf, header_end + 8)?;
        return Ok(match payload_shape(&buf[header_end..header_end + 8]) {
            Ok((framed, codec)) => Detection::Protocol(Message::Mesh { framed, codec }),
            Err(r) => Detection::NotOurs(r),
        });
    }
    if magic_codec(&buf[0..2]) == Some(Codec::Thrift) {
        return Ok(Detection::Protocol(Message::Buffered));
    }
    if let Some(codec) = magic_codec(&buf[4..6]) {
        return Ok(Detection::Protocol(Message::Framed { codec }));
    }
    Ok(Detection::NotOurs(refusal_of(buf)))
}

fn sniff_ttheader(buf: &[u8]) -> Result<Detection<Message>, Incomplete> {
    let flag_bits = u16::from_be_bytes([buf[6], buf[7]]);
    if flag_bits & flags::STREAMING != 0 {
        return Ok(Detection::Protocol(Message::TTStream));
    }
    need(buf, 15)?;
    let length = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as u64;
    let header_end = 14 + usize::from(u16::from_be_bytes([buf[12], buf[13]])) * 4;
    let pid = buf[14];
    if !protocol_id::is_supported(pid) {
        return Ok(Detection::NotOurs(Refusal::TTHeaderProtocol(pid)));
    }
    if pid == protocol_id::THRIFT_STRUCT || pid == protocol_id::PROTOBUF_STRUCT {
        return Ok(Detection::Protocol(Message::TTStream));
    }
    if header_end as u64 > length + 4 {
        return Ok(Detection::NotOurs(Refusal::TTHeaderMalformed));
    }
    if length + 4 < header_end as u64 + 8 {
        // Too short to hold even an envelope: the TTHeader decoder reports the details.
        return Ok(Detection::NotOurs(Refusal::TTHeaderPayload));
    }
    need(buf, header_end + 8)?;
    Ok(match payload_shape(&buf[header_end..header_end + 8]) {
        Ok((framed, codec)) => Detection::Protocol(Message::TTHeader { framed, codec }),
        Err(r) => Detection::NotOurs(r),
    })
}

/// Kitex's `checkPayload` on the first 8 payload bytes: unframed thrift, or a u32 length followed
/// by thrift or Kitex protobuf.
fn payload_shape(p: &[u8]) -> Result<(bool, Codec), Refusal> {
    if magic_codec(&p[0..2]) == Some(Codec::Thrift) {
        return Ok((false, Codec::Thrift));
    }
    if let Some(codec) = magic_codec(&p[4..6]) {
        return Ok((true, codec));
    }
    if is_compact(&p[0..2]) || is_compact(&p[4..6]) {
        return Err(Refusal::ThriftCompact);
    }
    if magic_codec(&p[0..2]) == Some(Codec::KitexProtobuf) {
        return Err(Refusal::BufferedProtobuf);
    }
    if is_non_strict(&p[..8]) || is_framed_non_strict(&p[..8]) {
        return Err(Refusal::ThriftNonStrict);
    }
    Err(Refusal::TTHeaderPayload)
}

impl Detection<Message> {
    /// The connection family a message belongs to.
    pub fn family(&self) -> Option<Family> {
        match self {
            Detection::Protocol(Message::TTStream) => Some(Family::TTStream),
            Detection::Protocol(_) => Some(Family::PingPong),
            Detection::NotOurs(_) => None,
        }
    }
}
