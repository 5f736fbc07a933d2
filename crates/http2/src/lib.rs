//! gRPC over HTTP/2 as Kitex speaks it: the message-level pieces, and the HTTP/2 server driver
//! and client built on them and on `sluice-h2wire`'s frames and HPACK (h2c, prior knowledge,
//! or inside TLS).
//!
//! The connection-level parts:
//!
//! * [`server`]: [`serve_connection`] serves one gRPC connection, handing every call to a
//!   `StreamingHandler` as a stream of raw messages (kitex-wire.md 5.4, 5.5, 7.9);
//!   [`refuse_connection`] turns away an HTTP/2 connection with a GOAWAY that says why;
//! * [`client`]: [`GrpcClient`] opens streams on one downstream over shared HTTP/2 connections
//!   (kitex-wire.md 5.2-5.4).
//!
//! Both translate between HTTP/2 and the protocol-neutral events of `sluice-stream` on a
//! connection machinery they share (one task per connection, frames encoded by the sending
//! task; see the `conn` module), with backpressure end to end: a stream's window is reopened
//! only once its reader is ready for more, and messages are sent only as fast as the peer's
//! windows allow. They never send an empty DATA frame other than a lone END_STREAM (h2 peers
//! close connections after 100 of them).
//!
//! Messages travel as bytes without their compressed flag, so both drivers derive the flag of
//! the messages they send from `grpc-encoding` in the same direction's headers (set and not
//! `identity`: every message is compressed, as grpc-go and Kitex do), and refuse a received
//! message flagged compressed without such a header. A peer that mixes compressed and
//! uncompressed messages under one `grpc-encoding` cannot be forwarded faithfully.
//!
//! The message-level pieces, independent of the HTTP/2 connection itself:
//!
//! * [`message`]: the 5-byte length-prefixed message framing carried in DATA frames
//!   (kitex-wire.md 5.3), with a bounded, zero-copy decoder and an encoder;
//! * [`status`]: `grpc-status` codes (the 17 standard ones and Kitex's non-standard ones),
//!   `grpc-message` percent-encoding, and the HTTP-status fallback (kitex-wire.md 5.4, 7.9);
//! * [`timeout`]: the `grpc-timeout` header (kitex-wire.md 5.2);
//! * [`content_type`]: `content-type` recognition and the codec Kitex picks from it
//!   (kitex-wire.md 5.5);
//! * [`path`]: splitting `:path` into package, service and method (kitex-wire.md 5.5);
//! * [`headers`]: the header names gRPC and Kitex use.
//!
//! Wire reference: `kitex-wire.md` (section 5 "gRPC as Kitex implements it", 7.9 "gRPC details",
//! 7.10 "Frame/message sizes", 8.8 test vectors), and the gRPC "PROTOCOL-HTTP2" document that it
//! builds on. The message-level modules parse from byte slices or `BytesMut` and write into
//! [`bytes::BufMut`]; [`server`] and [`client`] sit on top of them.
#![forbid(unsafe_code)]

pub mod client;
mod conn;
pub mod content_type;
mod fields;
pub mod headers;
pub mod message;
pub mod path;
pub mod server;
pub mod status;
pub mod timeout;

pub use client::{GrpcClient, GrpcClientConfig, GrpcClientError, OpenRequest};
pub use conn::Http2Error;
pub use server::{
    refuse_connection, serve_connection, GrpcServerConfig, GrpcServerError, GrpcServerStats,
    HANDLER_GRACE, REFUSE_GOAWAY_CODE,
};
pub use sluice_h2wire::Reason;

pub use content_type::{Codec, GrpcContentType};
pub use message::{
    encode, encode_prefix, Message, MessageDecoder, MessageError, DEFAULT_MAX_MESSAGE_SIZE,
    PREFIX_LEN,
};
pub use path::{MethodPath, PathError};
pub use status::{percent_decode, percent_encode, Code, ParseStatusError, Status};
pub use timeout::{format_timeout, parse_timeout, TimeoutError, MAX_TIMEOUT};
