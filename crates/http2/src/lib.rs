//! gRPC over HTTP/2 as Kitex speaks it: the HTTP/2 server driver and client, built on
//! `sluice-h2wire`'s frames and HPACK (h2c, prior knowledge, or inside TLS) and on
//! `sluice-grpc`'s message-level pieces.
//!
//! * [`server`]: [`serve_connection`] serves one gRPC connection, handing every call to a
//!   `StreamingHandler` as a stream of raw messages (kitex-wire.md 5.4, 5.5, 7.9);
//!   [`refuse_connection`] turns away an HTTP/2 connection with a GOAWAY that says why;
//! * [`client`]: [`GrpcClient`] opens streams on one downstream over shared HTTP/2 connections
//!   (kitex-wire.md 5.2-5.4).
//!
//! Both translate between HTTP/2 and the protocol-neutral events of `sluice-stream` on one
//! connection engine (the private `conn` module: one task per connection, frames encoded by
//! the sending task), which is generic over the end it plays (`conn::Role`) and imports
//! neither of them. Backpressure runs end to end: a stream's window is reopened only once its
//! reader is ready for more, and messages are sent only as fast as the peer's windows allow.
//! They never send an empty DATA frame other than a lone END_STREAM (h2 peers close
//! connections after 100 of them).
//!
//! Messages travel as bytes without their compressed flag, so both drivers derive the flag of
//! the messages they send from `grpc-encoding` in the same direction's headers (set and not
//! `identity`: every message is compressed, as grpc-go and Kitex do), and refuse a received
//! message flagged compressed without such a header. A peer that mixes compressed and
//! uncompressed messages under one `grpc-encoding` cannot be forwarded faithfully.
//!
//! The message-level modules ([`message`], [`status`], [`timeout`], [`content_type`],
//! [`path`], [`headers`]) and their main types are `sluice-grpc`'s, re-exported here so that
//! users of this crate need only it.
//!
//! Wire reference: `kitex-wire.md` (section 5 "gRPC as Kitex implements it", 7.9 "gRPC details",
//! 7.10 "Frame/message sizes", 8.8 test vectors), and the gRPC "PROTOCOL-HTTP2" document that it
//! builds on.
#![forbid(unsafe_code)]

pub mod client;
mod conn;
mod fields;
pub mod server;

pub use client::{GrpcClient, GrpcClientConfig, GrpcClientError, InvalidRequest, OpenRequest};
pub use conn::Http2Error;
pub use server::{
    refuse_connection, serve_connection, GrpcServerConfig, GrpcServerError, GrpcServerStats,
    HANDLER_GRACE, REFUSE_GOAWAY_CODE,
};
pub use sluice_h2wire::Reason;

// The message-level API, from `sluice-grpc`, under the paths it has always had here.
pub use sluice_grpc::{content_type, headers, message, path, status, timeout};
pub use sluice_grpc::{
    encode, encode_prefix, format_timeout, parse_timeout, percent_decode, percent_encode, Code,
    GrpcCodec, GrpcContentType, Message, MessageDecoder, MessageError, MethodPath,
    ParseStatusError, PathError, Status, TimeoutError, DEFAULT_MAX_MESSAGE_SIZE, MAX_TIMEOUT,
    PREFIX_LEN,
};
