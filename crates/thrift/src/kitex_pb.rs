//! The Kitex protobuf envelope and its `ErrorProto` error body (kitex-wire.md 2.5).
//!
//! ```text
//! u32  length L of everything that follows      (owned by the Framed/TTHeader layer)
//! u32  0x9001_0000 | type                        1 call, 2 reply, 3 exception
//! i32  N, N bytes method name (no service or package)
//! i32  seq id
//! ...  the bare protobuf message, or ErrorProto{1: int32 type_id, 2: string message}
//! ```
//!
//! Functions here start at the magic word; the 4-byte length belongs to the framing layer.

use bytes::BufMut;

use crate::envelope::{self, MessageHeader, MessageType, KITEX_PB_MAGIC};
use crate::field::{read_pb_field, wire, Scalar};
use crate::Error;

/// Reads the Kitex protobuf envelope at the start of `buf` (which starts at the magic).
pub fn decode_header(buf: &[u8]) -> Result<MessageHeader<'_>, Error> {
    envelope::decode_with_magic(buf, KITEX_PB_MAGIC)
}

/// Writes a Kitex protobuf envelope (no length prefix); the caller appends the body.
pub fn write_header<B: BufMut>(dst: &mut B, name: &str, msg_type: MessageType, seq_id: i32) {
    envelope::write_with_magic(dst, KITEX_PB_MAGIC, name, msg_type, seq_id);
}

/// `ErrorProto { int32 TypeID = 1; string Message = 2; }`, the body of a Kitex-pb EXCEPTION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorProto {
    /// Error type id (same numbering as `TApplicationException`).
    pub type_id: i32,
    /// Message.
    pub message: String,
}

impl ErrorProto {
    /// Writes the protobuf encoding (proto3: zero/empty fields are omitted).
    pub fn encode<B: BufMut>(&self, dst: &mut B) {
        if self.type_id != 0 {
            dst.put_u8(0x08);
            // int32 is sign-extended to 64 bits on the wire.
            put_varint(dst, self.type_id as i64 as u64);
        }
        if !self.message.is_empty() {
            dst.put_u8(0x12);
            put_varint(dst, self.message.len() as u64);
            dst.put_slice(self.message.as_bytes());
        }
    }

    /// Reads the protobuf encoding; unknown fields are skipped, the last value of a field wins.
    pub fn decode(buf: &[u8]) -> Result<Self, Error> {
        let mut out = Self {
            type_id: 0,
            message: String::new(),
        };
        let mut pos = 0;
        while pos < buf.len() {
            let f = read_pb_field(buf, &mut pos)?;
            match (f.number, f.value) {
                // int32 is sign-extended to 64 bits on the wire: its low 32 bits are the value.
                (1, Scalar::Int(v)) if f.wire_type == wire::VARINT => out.type_id = v as i32,
                (2, Scalar::Bytes(b)) => out.message = String::from_utf8_lossy(b).into_owned(),
                _ => {}
            }
        }
        Ok(out)
    }

    /// Writes a whole Kitex-pb EXCEPTION message (envelope and body, no length prefix).
    pub fn encode_message<B: BufMut>(&self, dst: &mut B, name: &str, seq_id: i32) {
        write_header(dst, name, MessageType::Exception, seq_id);
        self.encode(dst);
    }
}

fn put_varint<B: BufMut>(dst: &mut B, mut v: u64) {
    while v >= 0x80 {
        dst.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    dst.put_u8(v as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_8_5_request_envelope() {
        // Framed request "Echo" seq 1, after the 4-byte length.
        let msg = [
            0x90, 0x01, 0x00, 0x01, 0, 0, 0, 4, b'E', b'c', b'h', b'o', 0, 0, 0, 1, 0x0a, 0x05,
            b'h', b'e', b'l', b'l', b'o',
        ];
        let h = decode_header(&msg).unwrap();
        assert_eq!(
            (h.name, h.msg_type, h.seq_id),
            ("Echo", MessageType::Call, 1)
        );
        assert_eq!(
            &msg[h.body_offset..],
            &[0x0a, 0x05, b'h', b'e', b'l', b'l', b'o']
        );
        let mut out = Vec::new();
        write_header(&mut out, "Echo", MessageType::Call, 1);
        assert_eq!(&out[..], &msg[..16]);
        // A thrift reader refuses the pb magic and vice versa.
        assert!(matches!(
            envelope::decode_header(&msg),
            Err(Error::BadVersion(_))
        ));
    }

    #[test]
    fn vector_8_5_error_proto() {
        let body = [
            0x08, 0x01, 0x12, 0x0e, b'u', b'n', b'k', b'n', b'o', b'w', b'n', b' ', b'm', b'e',
            b't', b'h', b'o', b'd',
        ];
        let e = ErrorProto::decode(&body).unwrap();
        assert_eq!(e.type_id, 1);
        assert_eq!(e.message, "unknown method");
        let mut out = Vec::new();
        e.encode(&mut out);
        assert_eq!(&out[..], &body[..]);
    }

    #[test]
    fn error_proto_negative_and_garbage() {
        let e = ErrorProto {
            type_id: -1,
            message: "x".into(),
        };
        let mut out = Vec::new();
        e.encode(&mut out);
        assert_eq!(ErrorProto::decode(&out).unwrap(), e);
        assert!(ErrorProto::decode(&[0x12, 0x05, b'a']).is_err());
        assert!(ErrorProto::decode(&[0xff; 11]).is_err());
        assert!(ErrorProto::decode(&[0x0b]).is_err());
    }
}
