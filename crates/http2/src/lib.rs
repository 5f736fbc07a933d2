//! gRPC over HTTP/2 as Kitex speaks it: the message-level pieces, without any I/O.
//!
//! What lives here is everything about a gRPC call that is independent of the HTTP/2 connection
//! itself:
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
//! builds on. Everything here parses from byte slices or `BytesMut` and writes into
//! [`bytes::BufMut`]; the HTTP/2 connection driver sits on top of these pieces.
#![forbid(unsafe_code)]

pub mod content_type;
pub mod headers;
pub mod message;
pub mod path;
pub mod status;
pub mod timeout;

pub use content_type::{Codec, GrpcContentType};
pub use message::{
    encode, encode_prefix, Message, MessageDecoder, MessageError, DEFAULT_MAX_MESSAGE_SIZE,
    PREFIX_LEN,
};
pub use path::{MethodPath, PathError};
pub use status::{percent_decode, percent_encode, Code, ParseStatusError, Status};
pub use timeout::{format_timeout, parse_timeout, TimeoutError, MAX_TIMEOUT};
