//! The strict binary message envelope (kitex-wire.md 2.3):
//!
//! ```text
//! u32  0x8001_0000 | type      version 1 in the high 16 bits, message type in the low 16
//! i32  N                       method name length
//! N    name                    UTF-8, no NUL
//! i32  seq id
//! ...  one struct (args, result, or TApplicationException)
//! ```
//!
//! The same layout with magic `0x9001` is the Kitex protobuf envelope ([`crate::kitex_pb`]), so
//! both share this reader, parameterised by the magic.

use bytes::BufMut;

use crate::Error;

/// Thrift strict binary version word, before the message type is OR-ed in.
pub const THRIFT_MAGIC: u16 = 0x8001;
/// Kitex protobuf version word (kitex-wire.md 2.5).
pub const KITEX_PB_MAGIC: u16 = 0x9001;

/// Longest method name accepted on decode. Kitex sets no limit; names are identifiers, and a
/// bound here stops a 2 GiB claimed length from being waited for.
pub const MAX_NAME_LEN: usize = 64 * 1024;

/// A thrift (and Kitex protobuf) message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// A request that expects a reply.
    Call = 1,
    /// A successful reply (the result struct may still carry a declared exception).
    Reply = 2,
    /// A `TApplicationException` (or Kitex protobuf `ErrorProto`) reply.
    Exception = 3,
    /// A request that expects no reply.
    Oneway = 4,
}

impl MessageType {
    /// The type for a wire value, if it is one of the four that travel on the wire.
    pub fn from_wire(v: u16) -> Result<Self, Error> {
        match v {
            1 => Ok(Self::Call),
            2 => Ok(Self::Reply),
            3 => Ok(Self::Exception),
            4 => Ok(Self::Oneway),
            other => Err(Error::UnknownMessageType(other)),
        }
    }

    /// Upper-case name as Kitex logs it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Call => "CALL",
            Self::Reply => "REPLY",
            Self::Exception => "EXCEPTION",
            Self::Oneway => "ONEWAY",
        }
    }

    /// True for the request types a server accepts (call and oneway).
    pub fn is_request(self) -> bool {
        matches!(self, Self::Call | Self::Oneway)
    }
}

/// A decoded envelope. `name` borrows from the input; `body_offset` is where the struct starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader<'a> {
    /// Method name.
    pub name: &'a str,
    /// Message type.
    pub msg_type: MessageType,
    /// Sequence id (opaque; negative values are legal).
    pub seq_id: i32,
    /// Offset of the body (the struct) from the start of the envelope: `12 + name.len()`.
    pub body_offset: usize,
}

impl MessageHeader<'_> {
    /// Offset of the seq id field from the start of the envelope.
    pub fn seq_offset(&self) -> usize {
        self.body_offset - 4
    }
}

/// Reads a thrift strict binary envelope from the start of `buf`.
///
/// Returns [`Error::Incomplete`] when `buf` stops inside the envelope, so it can be used on a
/// growing buffer; the body itself is not examined.
pub fn decode_header(buf: &[u8]) -> Result<MessageHeader<'_>, Error> {
    decode_with_magic(buf, THRIFT_MAGIC)
}

pub(crate) fn decode_with_magic(buf: &[u8], magic: u16) -> Result<MessageHeader<'_>, Error> {
    let word = read_u32(buf, 0)?;
    if (word >> 16) as u16 != magic {
        return Err(Error::BadVersion(word));
    }
    let msg_type = MessageType::from_wire((word & 0xFFFF) as u16)?;
    let name_len = read_i32(buf, 4)?;
    if name_len < 0 {
        return Err(Error::NegativeLength(name_len));
    }
    let name_len = name_len as usize;
    if name_len > MAX_NAME_LEN {
        return Err(Error::TooLarge {
            len: name_len as u64,
            max: MAX_NAME_LEN as u64,
        });
    }
    let name_end = 8 + name_len;
    let seq_id = read_i32(buf, name_end)?;
    let name = std::str::from_utf8(&buf[8..name_end]).map_err(|_| Error::InvalidName)?;
    Ok(MessageHeader {
        name,
        msg_type,
        seq_id,
        body_offset: name_end + 4,
    })
}

/// Writes a thrift strict binary envelope; the caller appends the body.
pub fn write_header<B: BufMut>(dst: &mut B, name: &str, msg_type: MessageType, seq_id: i32) {
    write_with_magic(dst, THRIFT_MAGIC, name, msg_type, seq_id);
}

pub(crate) fn write_with_magic<B: BufMut>(
    dst: &mut B,
    magic: u16,
    name: &str,
    msg_type: MessageType,
    seq_id: i32,
) {
    dst.put_u32((u32::from(magic) << 16) | msg_type as u32);
    dst.put_i32(name.len() as i32);
    dst.put_slice(name.as_bytes());
    dst.put_i32(seq_id);
}

/// Number of bytes [`write_header`] writes for `name`.
pub fn header_len(name: &str) -> usize {
    12 + name.len()
}

/// Replaces the seq id of the thrift or Kitex-protobuf envelope at the start of `msg`, returning
/// the old one. The rest of the message is untouched, so a proxy can renumber a request for its
/// downstream connection and restore the caller's id on the reply (kitex-wire.md 7.1).
pub fn rewrite_seq_id(msg: &mut [u8], seq_id: i32) -> Result<i32, Error> {
    let word = read_u32(msg, 0)?;
    let magic = (word >> 16) as u16;
    if magic != THRIFT_MAGIC && magic != KITEX_PB_MAGIC {
        return Err(Error::BadVersion(word));
    }
    let hdr = decode_with_magic(msg, magic)?;
    let at = hdr.seq_offset();
    let old = hdr.seq_id;
    msg[at..at + 4].copy_from_slice(&seq_id.to_be_bytes());
    Ok(old)
}

pub(crate) fn read_u32(buf: &[u8], at: usize) -> Result<u32, Error> {
    match buf.get(at..at + 4) {
        Some(b) => Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        None => Err(Error::Incomplete { needed: at + 4 }),
    }
}

pub(crate) fn read_i32(buf: &[u8], at: usize) -> Result<i32, Error> {
    read_u32(buf, at).map(|v| v as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    // kitex-wire.md 8.2, Buffered request CALL "Echo" seq 1.
    const CALL: &[u8] = &[
        0x80, 0x01, 0x00, 0x01, 0x00, 0x00, 0x00, 0x04, 0x45, 0x63, 0x68, 0x6f, 0x00, 0x00, 0x00,
        0x01, 0x0c, 0x00, 0x01, 0x0b, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05, 0x68, 0x65, 0x6c, 0x6c,
        0x6f, 0x00, 0x00,
    ];

    #[test]
    fn decodes_vector_8_2() {
        let h = decode_header(CALL).unwrap();
        assert_eq!(h.name, "Echo");
        assert_eq!(h.msg_type, MessageType::Call);
        assert_eq!(h.seq_id, 1);
        assert_eq!(h.body_offset, 16);
    }

    #[test]
    fn write_matches_vector() {
        let mut out = Vec::new();
        write_header(&mut out, "Echo", MessageType::Call, 1);
        assert_eq!(&out[..], &CALL[..16]);
        assert_eq!(header_len("Echo"), 16);
    }

    #[test]
    fn every_prefix_is_incomplete() {
        for n in 0..16 {
            assert!(
                matches!(decode_header(&CALL[..n]), Err(Error::Incomplete { .. })),
                "prefix {n}"
            );
        }
    }

    #[test]
    fn rewrites_seq_in_place() {
        let mut m = CALL.to_vec();
        assert_eq!(rewrite_seq_id(&mut m, -7).unwrap(), 1);
        let h = decode_header(&m).unwrap();
        assert_eq!(h.seq_id, -7);
        assert_eq!(&m[16..], &CALL[16..]);
    }

    #[test]
    fn rejects_non_strict_and_compact() {
        // Non-strict binary starts with the name length.
        let non_strict = [0, 0, 0, 4, b'E', b'c', b'h', b'o', 1, 0, 0, 0, 1];
        assert_eq!(decode_header(&non_strict), Err(Error::BadVersion(4)));
        let compact = [0x82, 0x21, 0x01, 0x04, b'E', b'c', b'h', b'o'];
        assert!(matches!(decode_header(&compact), Err(Error::BadVersion(_))));
    }

    #[test]
    fn rejects_negative_and_huge_names() {
        let neg = [0x80, 0x01, 0x00, 0x01, 0xff, 0xff, 0xff, 0xfe];
        assert_eq!(decode_header(&neg), Err(Error::NegativeLength(-2)));
        let huge = [0x80, 0x01, 0x00, 0x01, 0x7f, 0xff, 0xff, 0xff];
        assert!(matches!(decode_header(&huge), Err(Error::TooLarge { .. })));
        let bad_type = [0x80, 0x01, 0x00, 0x09, 0, 0, 0, 0, 0, 0, 0, 1];
        assert_eq!(decode_header(&bad_type), Err(Error::UnknownMessageType(9)));
    }
}
