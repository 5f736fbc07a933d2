//! gRPC as Kitex speaks it, at the message level: everything about a gRPC call that does not
//! depend on how its HTTP/2 connection is driven. Sans-IO: the modules parse from byte slices,
//! `BytesMut` or decoded header fields and write into [`bytes::BufMut`]; there is no socket,
//! task or clock here. `sluice-http2` builds its server driver and client on top.
//!
//! * [`message`]: the 5-byte length-prefixed message framing carried in DATA frames
//!   (kitex-wire.md 5.3), with a bounded, zero-copy decoder and an encoder;
//! * [`status`]: `grpc-status` codes (the 17 standard ones and Kitex's non-standard ones),
//!   `grpc-message` percent-encoding, and the HTTP-status fallback (kitex-wire.md 5.4, 7.9);
//! * [`timeout`]: the `grpc-timeout` header (kitex-wire.md 5.2);
//! * [`content_type`]: `content-type` recognition and the [`GrpcCodec`] Kitex picks from it
//!   (kitex-wire.md 5.5);
//! * [`path`]: splitting `:path` into package, service and method (kitex-wire.md 5.5);
//! * [`headers`]: the header names gRPC and Kitex use;
//! * [`fields`]: decoded header fields: what HTTP/2 lets them carry, the compressed-flag rule
//!   (`grpc-encoding`), and the status a response's header blocks carry.
//!
//! Wire reference: `kitex-wire.md` (section 5 "gRPC as Kitex implements it", 7.9 "gRPC details",
//! 7.10 "Frame/message sizes", 8.8 test vectors), and the gRPC "PROTOCOL-HTTP2" document that it
//! builds on.
#![forbid(unsafe_code)]

pub mod content_type;
pub mod fields;
pub mod headers;
pub mod message;
pub mod path;
pub mod status;
pub mod timeout;

pub use content_type::{GrpcCodec, GrpcContentType};
pub use message::{
    encode, encode_prefix, Message, MessageDecoder, MessageError, DEFAULT_MAX_MESSAGE_SIZE,
    PREFIX_LEN,
};
pub use path::{MethodPath, PathError};
pub use status::{percent_decode, percent_encode, Code, ParseStatusError, Status};
pub use timeout::{format_timeout, parse_timeout, TimeoutError, MAX_TIMEOUT};
