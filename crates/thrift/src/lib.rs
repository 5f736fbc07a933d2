//! Thrift strict-binary and Kitex-protobuf message envelopes, without IDL.
//!
//! Sluice forwards payloads without decoding them. What it does need from thrift is small and
//! lives here:
//!
//! * the strict binary message envelope (`0x8001_00TT`, name, seq id): read, write, and rewrite
//!   the seq id in place ([`envelope`]);
//! * a bounded struct skipper that finds where a Buffered message ends ([`skip`]);
//! * `TApplicationException`, the error body every Kitex thrift peer understands ([`exception`]);
//! * the Kitex protobuf envelope (`0x9001_00TT`) and its `ErrorProto` error body ([`kitex_pb`]);
//! * one field of a thrift struct or protobuf message read by its path of ids, for payload
//!   routing ([`field`]).
//!
//! Wire reference: kitex-wire.md sections 2.3 (strict binary), 2.5 (Kitex protobuf) and 2.7
//! (TApplicationException). Every function here is pure: it reads a byte slice or writes into a
//! [`bytes::BufMut`], and every length read from the wire is checked before it is used.
#![forbid(unsafe_code)]

pub mod envelope;
pub mod exception;
pub mod field;
pub mod kitex_pb;
pub mod skip;

mod error;

pub use envelope::{MessageHeader, MessageType};
pub use error::Error;
pub use exception::{ApplicationException, ExceptionKind};
pub use skip::{message_len, skip_struct, skip_value, DEFAULT_MAX_DEPTH};

/// Thrift field/value type codes of the binary protocol (kitex-wire.md 2.3).
pub mod ttype {
    /// End of a struct.
    pub const STOP: u8 = 0;
    /// Boolean, one byte.
    pub const BOOL: u8 = 2;
    /// Signed byte.
    pub const BYTE: u8 = 3;
    /// IEEE double, 8 bytes.
    pub const DOUBLE: u8 = 4;
    /// i16.
    pub const I16: u8 = 6;
    /// i32.
    pub const I32: u8 = 8;
    /// i64.
    pub const I64: u8 = 10;
    /// String or binary: i32 length and bytes.
    pub const STRING: u8 = 11;
    /// Nested struct.
    pub const STRUCT: u8 = 12;
    /// Map: u8 key type, u8 value type, i32 count.
    pub const MAP: u8 = 13;
    /// Set: u8 element type, i32 count.
    pub const SET: u8 = 14;
    /// List: u8 element type, i32 count.
    pub const LIST: u8 = 15;
}
