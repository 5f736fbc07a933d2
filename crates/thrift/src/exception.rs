//! `TApplicationException`, the error body of a thrift EXCEPTION message (kitex-wire.md 2.7).
//!
//! Kitex writes field 1 (message) then field 2 (type) then STOP; readers must accept any order
//! and skip unknown fields, which [`ApplicationException::decode`] does.

use bytes::BufMut;

use crate::envelope::{self, read_i32, MessageType};
use crate::skip::{skip_struct, skip_value, DEFAULT_MAX_DEPTH};
use crate::{ttype, Error};

/// Exception type ids (`kitex: pkg/remote/trans_errors.go`; 0-10 as in Apache thrift).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExceptionKind(pub i32);

impl ExceptionKind {
    /// Unknown application exception (the default).
    pub const UNKNOWN: Self = Self(0);
    /// Unknown method.
    pub const UNKNOWN_METHOD: Self = Self(1);
    /// Bad request or response message type.
    pub const INVALID_MESSAGE_TYPE: Self = Self(2);
    /// Wrong method name in a reply.
    pub const WRONG_METHOD_NAME: Self = Self(3);
    /// Reply seq id does not match the request.
    pub const BAD_SEQUENCE_ID: Self = Self(4);
    /// Result struct had no field set.
    pub const MISSING_RESULT: Self = Self(5);
    /// Any handler error in Kitex (`"biz error: ..."`), and internal failures.
    pub const INTERNAL_ERROR: Self = Self(6);
    /// A request that could not be decoded.
    pub const PROTOCOL_ERROR: Self = Self(7);
    /// Invalid transform.
    pub const INVALID_TRANSFORM: Self = Self(8);
    /// Codec or protocol mismatch.
    pub const INVALID_PROTOCOL: Self = Self(9);
    /// Unsupported client type.
    pub const UNSUPPORTED_CLIENT_TYPE: Self = Self(10);
    /// Kitex: unknown service.
    pub const UNKNOWN_SERVICE: Self = Self(20);
    /// Kitex: no service name.
    pub const NO_SERVICE_NAME: Self = Self(21);
    /// TTStream: the peer cancelled with `cancel()` (12007).
    pub const TTSTREAM_USER_CANCEL: Self = Self(12007);
    /// TTStream: the stream was cancelled by its downstream (12009: the client received RST).
    pub const TTSTREAM_CANCELED_BY_DOWNSTREAM: Self = Self(12009);
    /// TTStream: the stream's deadline passed (12015).
    pub const TTSTREAM_TIMEOUT: Self = Self(12015);

    /// The type's name as Apache thrift and Kitex spell it (`INTERNAL_ERROR`), `TTSTREAM` for
    /// TTStream's 12000-12999 range, `None` for any other id.
    pub const fn name(self) -> Option<&'static str> {
        Some(match self.0 {
            0 => "UNKNOWN",
            1 => "UNKNOWN_METHOD",
            2 => "INVALID_MESSAGE_TYPE",
            3 => "WRONG_METHOD_NAME",
            4 => "BAD_SEQUENCE_ID",
            5 => "MISSING_RESULT",
            6 => "INTERNAL_ERROR",
            7 => "PROTOCOL_ERROR",
            8 => "INVALID_TRANSFORM",
            9 => "INVALID_PROTOCOL",
            10 => "UNSUPPORTED_CLIENT_TYPE",
            20 => "UNKNOWN_SERVICE",
            21 => "NO_SERVICE_NAME",
            12000..=12999 => "TTSTREAM",
            _ => return None,
        })
    }
}

/// A `TApplicationException`: a message and a type id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplicationException {
    /// Human-readable message (field 1).
    pub message: String,
    /// Type id (field 2).
    pub kind: ExceptionKind,
}

impl ApplicationException {
    /// A new exception.
    pub fn new(kind: ExceptionKind, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            kind,
        }
    }

    /// Writes the struct (`0B 00 01 <len><msg> 08 00 02 <type> 00`), Kitex's field order.
    pub fn encode<B: BufMut>(&self, dst: &mut B) {
        dst.put_u8(ttype::STRING);
        dst.put_i16(1);
        dst.put_i32(self.message.len() as i32);
        dst.put_slice(self.message.as_bytes());
        dst.put_u8(ttype::I32);
        dst.put_i16(2);
        dst.put_i32(self.kind.0);
        dst.put_u8(ttype::STOP);
    }

    /// Size of [`Self::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        3 + 4 + self.message.len() + 3 + 4 + 1
    }

    /// Reads the struct at the start of `buf`; returns it and the bytes it used.
    ///
    /// Fields may come in any order; unknown fields are skipped (bounded like every skip); a
    /// non-UTF-8 message is kept lossily rather than failing the whole reply.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), Error> {
        let len = skip_struct(buf, DEFAULT_MAX_DEPTH, buf.len())?;
        let mut pos = 0;
        let mut message = String::new();
        let mut kind = ExceptionKind::UNKNOWN;
        loop {
            let ft = buf[pos];
            if ft == ttype::STOP {
                break;
            }
            let id = i16::from_be_bytes([buf[pos + 1], buf[pos + 2]]);
            pos += 3;
            let field_len = skip_value(&buf[pos..len], ft, DEFAULT_MAX_DEPTH, len - pos)?;
            match (id, ft) {
                (1, ttype::STRING) => {
                    message = String::from_utf8_lossy(&buf[pos + 4..pos + field_len]).into_owned();
                }
                (2, ttype::I32) => kind = ExceptionKind(read_i32(buf, pos)?),
                _ => {}
            }
            pos += field_len;
        }
        Ok((Self { message, kind }, len))
    }

    /// Writes a whole thrift EXCEPTION message: envelope (`name`, `seq_id`) plus this struct.
    pub fn encode_message<B: BufMut>(&self, dst: &mut B, name: &str, seq_id: i32) {
        envelope::write_header(dst, name, MessageType::Exception, seq_id);
        self.encode(dst);
    }

    /// Reads a whole thrift EXCEPTION message; returns the method name, seq id and exception.
    pub fn decode_message(buf: &[u8]) -> Result<(String, i32, Self), Error> {
        let hdr = envelope::decode_header(buf)?;
        if hdr.msg_type != MessageType::Exception {
            return Err(Error::Malformed("not an EXCEPTION message"));
        }
        let (ex, used) = Self::decode(&buf[hdr.body_offset..])?;
        if hdr.body_offset + used != buf.len() {
            return Err(Error::Malformed("bytes after the exception struct"));
        }
        Ok((hdr.name.to_owned(), hdr.seq_id, ex))
    }
}

impl std::fmt::Display for ApplicationException {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (type {})", self.message, self.kind.0)
    }
}

impl std::error::Error for ApplicationException {}

#[cfg(test)]
mod tests {
    use super::*;

    // kitex-wire.md 8.3: framed EXCEPTION "Foo" seq 7, UnknownMethod "unknown method Foo".
    const FRAMED_EXC: &str = "00000030800100030000000346 6f6f00000007 0b000100000012756e6b6e6f776e206d6574686f6420466f6f 0800020000000100";

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn vector_8_3_exception_round_trips() {
        let frame = hex(FRAMED_EXC);
        assert_eq!(frame.len(), 52);
        let (name, seq, ex) = ApplicationException::decode_message(&frame[4..]).unwrap();
        assert_eq!(name, "Foo");
        assert_eq!(seq, 7);
        assert_eq!(
            ex,
            ApplicationException::new(ExceptionKind::UNKNOWN_METHOD, "unknown method Foo")
        );
        let mut out = Vec::new();
        ex.encode_message(&mut out, "Foo", 7);
        assert_eq!(&out[..], &frame[4..]);
        assert_eq!(ex.encoded_len() + 15, out.len());
    }

    #[test]
    fn any_field_order_and_unknown_fields() {
        let mut b = vec![];
        b.extend_from_slice(&[ttype::I32, 0, 2, 0, 0, 0, 6]);
        b.extend_from_slice(&[
            ttype::LIST,
            0,
            9,
            ttype::STRING,
            0,
            0,
            0,
            1,
            0,
            0,
            0,
            1,
            b'x',
        ]);
        b.extend_from_slice(&[ttype::STRING, 0, 1, 0, 0, 0, 2, b'h', b'i']);
        b.push(0);
        let (ex, used) = ApplicationException::decode(&b).unwrap();
        assert_eq!(used, b.len());
        assert_eq!(
            ex,
            ApplicationException::new(ExceptionKind::INTERNAL_ERROR, "hi")
        );
    }
}
