//! HTTP/2 as bytes: the frame layer (RFC 9113 sections 4 and 6) and HPACK header compression
//! (RFC 7541), with no I/O.
//!
//! * [`frame`]: a bounded [`FrameDecoder`] that splits frames off a `BytesMut` (payloads stay
//!   zero-copy slices of the read buffer) and checks every length, flag and field the RFC
//!   constrains, and encoders that write frame heads and control frames without allocating;
//! * [`hpack`]: a [`hpack::Decoder`] for any valid header block (Huffman, dynamic table, size
//!   updates), bounded by a header list limit, and a stateless [`hpack::Encoder`].
//!
//! The connection drivers that use them (flow control, stream states, gRPC) live in
//! `sluice-http2`. Errors say whether they end the connection or only a stream
//! ([`FrameError::stream`](FrameError#structfield.stream)), so a driver can answer with GOAWAY or RST_STREAM as the RFC asks.
//!
//! Wire reference: RFC 9113 (HTTP/2), RFC 7541 (HPACK), and `kitex-wire.md` section 5 and 8.8
//! for what Kitex sends.
#![forbid(unsafe_code)]

pub mod frame;
pub mod hpack;

pub use frame::{
    Data, Frame, FrameDecoder, FrameError, Head, Headers, Priority, Reason, Settings,
    DEFAULT_MAX_FRAME_SIZE, DEFAULT_WINDOW, HEAD_LEN, MAX_FRAME_SIZE_LIMIT, MAX_WINDOW, PREFACE,
};
