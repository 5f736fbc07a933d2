//! Reading one field of a payload by its path of field ids, without decoding the rest.
//!
//! Payload routing (a route's `field` and `equals`) needs a single value out of a request: the
//! string at `args.1 (req).3 (tenant)`, say. A runtime IDL turns the names into ids once, when
//! the configuration loads; per request, [`thrift_field`] walks the args struct, skips every
//! other field with the bounded skipper and returns the value at the end of the path.
//! [`pb_field`] does the same for a protobuf message by field numbers. Nothing is allocated and
//! nothing past the field is read.

use crate::envelope::read_i32;
use crate::skip::skip_value;
use crate::{ttype, Error};

/// A scalar found at the end of a field path, as it is on the wire.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scalar<'a> {
    /// A thrift string or binary, or a protobuf length-delimited field (string, bytes).
    Bytes(&'a [u8]),
    /// A thrift bool (0 or 1), byte, i16, i32 or i64; a protobuf varint as its raw 64 bits
    /// (zigzag not undone) or a fixed32 / fixed64 field's raw bits.
    Int(i64),
    /// A thrift double.
    Double(f64),
}

/// One step of a thrift field path: the field id and the type the IDL declares for it.
pub type ThriftStep = (i16, u8);

/// The value at `path` in the thrift struct at the start of `buf` (an args struct), or `None`
/// when a field on the path is absent or has another type than the path says.
///
/// Every step but the last must be a struct field. Fields are skipped with the bounded skipper
/// (`max_depth` levels, nothing past `buf`), so malformed bytes give an error, never a panic.
pub fn thrift_field<'a>(
    buf: &'a [u8],
    path: &[ThriftStep],
    max_depth: usize,
) -> Result<Option<Scalar<'a>>, Error> {
    let mut pos = 0usize;
    for (i, &(id, want)) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        // Find field `id` in the struct starting at `pos`.
        loop {
            let t = *buf.get(pos).ok_or(Error::Incomplete { needed: pos + 1 })?;
            if t == ttype::STOP {
                return Ok(None);
            }
            let fid = buf
                .get(pos + 1..pos + 3)
                .map(|b| i16::from_be_bytes([b[0], b[1]]))
                .ok_or(Error::Incomplete { needed: pos + 3 })?;
            pos += 3;
            if fid == id {
                if t != want {
                    return Ok(None);
                }
                if last {
                    return scalar(&buf[pos..], t).map(Some);
                }
                if t != ttype::STRUCT {
                    return Ok(None);
                }
                break;
            }
            pos += skip_value(&buf[pos..], t, max_depth, buf.len() - pos)?;
        }
    }
    Ok(None)
}

fn scalar(buf: &[u8], t: u8) -> Result<Scalar<'_>, Error> {
    let need =
        |n: usize| -> Result<&[u8], Error> { buf.get(..n).ok_or(Error::Incomplete { needed: n }) };
    Ok(match t {
        ttype::BOOL | ttype::BYTE => Scalar::Int(need(1)?[0] as i8 as i64),
        ttype::I16 => {
            let b = need(2)?;
            Scalar::Int(i16::from_be_bytes([b[0], b[1]]) as i64)
        }
        ttype::I32 => Scalar::Int(read_i32(buf, 0)? as i64),
        ttype::I64 => Scalar::Int(i64::from_be_bytes(eight(need(8)?))),
        ttype::DOUBLE => Scalar::Double(f64::from_be_bytes(eight(need(8)?))),
        ttype::STRING => {
            let n = read_i32(buf, 0)?;
            if n < 0 {
                return Err(Error::NegativeLength(n));
            }
            let end = 4 + n as usize;
            Scalar::Bytes(buf.get(4..end).ok_or(Error::Incomplete { needed: end })?)
        }
        _ => return Err(Error::Malformed("a field path must end at a scalar field")),
    })
}

fn eight(b: &[u8]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// Protobuf wire types.
pub mod wire {
    /// int32, int64, uint32, uint64, sint32, sint64, bool, enum.
    pub const VARINT: u8 = 0;
    /// fixed64, sfixed64, double.
    pub const I64: u8 = 1;
    /// string, bytes, embedded messages, packed repeated fields.
    pub const LEN: u8 = 2;
    /// Deprecated group start.
    pub const SGROUP: u8 = 3;
    /// Deprecated group end.
    pub const EGROUP: u8 = 4;
    /// fixed32, sfixed32, float.
    pub const I32: u8 = 5;
}

/// Reads a protobuf varint at `buf[*pos..]`, moving `pos` past it.
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, Error> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf
            .get(*pos)
            .ok_or(Error::Incomplete { needed: *pos + 1 })?;
        *pos += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(Error::Malformed("varint longer than 10 bytes"))
}

/// One protobuf field as read off the wire: its number, wire type and value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PbField<'a> {
    /// Field number.
    pub number: u32,
    /// Wire type ([`wire`]).
    pub wire_type: u8,
    /// The value: [`Scalar::Bytes`] for length-delimited fields, [`Scalar::Int`] otherwise.
    pub value: Scalar<'a>,
}

/// Reads the protobuf field at `buf[*pos..]`, moving `pos` past it. Groups are refused (proto3
/// has none, and Kitex never sends them).
pub fn read_pb_field<'a>(buf: &'a [u8], pos: &mut usize) -> Result<PbField<'a>, Error> {
    let key = read_varint(buf, pos)?;
    let number = u32::try_from(key >> 3).map_err(|_| Error::Malformed("field number too large"))?;
    if number == 0 {
        return Err(Error::Malformed("field number 0"));
    }
    let wire_type = (key & 7) as u8;
    let take = |pos: &mut usize, n: usize| -> Result<&'a [u8], Error> {
        let end = pos
            .checked_add(n)
            .filter(|&e| e <= buf.len())
            .ok_or(Error::Incomplete {
                needed: pos.saturating_add(n),
            })?;
        let b = &buf[*pos..end];
        *pos = end;
        Ok(b)
    };
    let value = match wire_type {
        wire::VARINT => Scalar::Int(read_varint(buf, pos)? as i64),
        wire::I64 => Scalar::Int(i64::from_le_bytes(eight(take(pos, 8)?))),
        wire::I32 => {
            let b = take(pos, 4)?;
            Scalar::Int(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64)
        }
        wire::LEN => {
            let n = read_varint(buf, pos)?;
            let n = usize::try_from(n).map_err(|_| Error::TooLarge {
                len: n,
                max: buf.len() as u64,
            })?;
            Scalar::Bytes(take(pos, n)?)
        }
        _ => return Err(Error::Malformed("protobuf group or unknown wire type")),
    };
    Ok(PbField {
        number,
        wire_type,
        value,
    })
}

/// The value at `path` (field numbers) in the protobuf message `buf`, or `None` when a field on
/// the path is absent.
///
/// Every step but the last must be an embedded message (the first occurrence is followed); the
/// last occurrence of the final field wins, as protobuf's merge rules say for scalars. Every
/// length is checked against the buffer before use.
pub fn pb_field<'a>(buf: &'a [u8], path: &[u32]) -> Result<Option<Scalar<'a>>, Error> {
    let mut msg = buf;
    for (i, &number) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        let mut pos = 0;
        let mut found = None;
        while pos < msg.len() {
            let f = read_pb_field(msg, &mut pos)?;
            if f.number == number {
                found = Some(f.value);
                if !last {
                    break;
                }
            }
        }
        match (found, last) {
            (None, _) => return Ok(None),
            (Some(v), true) => return Ok(Some(v)),
            (Some(Scalar::Bytes(inner)), false) => msg = inner,
            (Some(_), false) => return Ok(None),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `args { 1: EchoRequest { 1: "hi", 2: i32 7, 3: "gold" } }`
    fn args() -> Vec<u8> {
        let mut b = vec![0x0c, 0, 1];
        b.extend_from_slice(&[0x0b, 0, 1, 0, 0, 0, 2, b'h', b'i']);
        b.extend_from_slice(&[0x08, 0, 2, 0, 0, 0, 7]);
        b.extend_from_slice(&[0x0b, 0, 3, 0, 0, 0, 4, b'g', b'o', b'l', b'd']);
        b.extend_from_slice(&[0, 0]);
        b
    }

    #[test]
    fn finds_a_nested_thrift_field_past_others() {
        let a = args();
        let tenant = [(1, ttype::STRUCT), (3, ttype::STRING)];
        assert_eq!(
            thrift_field(&a, &tenant, 64).unwrap(),
            Some(Scalar::Bytes(b"gold"))
        );
        let n = [(1, ttype::STRUCT), (2, ttype::I32)];
        assert_eq!(thrift_field(&a, &n, 64).unwrap(), Some(Scalar::Int(7)));
    }

    #[test]
    fn an_absent_or_differently_typed_thrift_field_is_none() {
        let a = args();
        assert_eq!(
            thrift_field(&a, &[(1, ttype::STRUCT), (9, ttype::STRING)], 64).unwrap(),
            None
        );
        assert_eq!(
            thrift_field(&a, &[(1, ttype::STRUCT), (2, ttype::STRING)], 64).unwrap(),
            None
        );
        assert_eq!(thrift_field(&a, &[(1, ttype::STRING)], 64).unwrap(), None);
    }

    #[test]
    fn truncated_or_lying_thrift_bytes_are_errors() {
        let a = args();
        let tenant = [(1, ttype::STRUCT), (3, ttype::STRING)];
        for cut in 0..a.len() - 6 {
            assert!(
                thrift_field(&a[..cut], &tenant, 64).is_err(),
                "cut at {cut}"
            );
        }
        // A string claiming 2 GiB.
        let lie = [0x0c, 0, 1, 0x0b, 0, 3, 0x7f, 0xff, 0xff, 0xff, b'x'];
        assert!(thrift_field(&lie, &tenant, 64).is_err());
    }

    /// `{ 1: "hi", 2: { 3: "gold", 4: varint 150 } }`
    fn message() -> Vec<u8> {
        let inner = [0x1a, 4, b'g', b'o', b'l', b'd', 0x20, 0x96, 0x01];
        let mut b = vec![0x0a, 2, b'h', b'i', 0x12, inner.len() as u8];
        b.extend_from_slice(&inner);
        b
    }

    #[test]
    fn finds_a_nested_pb_field() {
        let m = message();
        assert_eq!(pb_field(&m, &[2, 3]).unwrap(), Some(Scalar::Bytes(b"gold")));
        assert_eq!(pb_field(&m, &[2, 4]).unwrap(), Some(Scalar::Int(150)));
        assert_eq!(pb_field(&m, &[1]).unwrap(), Some(Scalar::Bytes(b"hi")));
        assert_eq!(pb_field(&m, &[2, 5]).unwrap(), None);
        assert_eq!(pb_field(&m, &[3, 1]).unwrap(), None);
    }

    #[test]
    fn the_last_pb_occurrence_wins() {
        let m = [0x0a, 1, b'a', 0x0a, 1, b'b'];
        assert_eq!(pb_field(&m, &[1]).unwrap(), Some(Scalar::Bytes(b"b")));
    }

    #[test]
    fn truncated_pb_bytes_are_errors() {
        let m = message();
        for cut in 1..m.len() {
            if cut == 4 {
                continue; // a whole first field: the second is absent, not malformed
            }
            assert!(pb_field(&m[..cut], &[2, 3]).is_err(), "cut at {cut}");
        }
        // A length of 2^62.
        let lie = [0x0a, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        assert!(pb_field(&lie, &[1]).is_err());
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = thrift_field(&b, &[(1, ttype::STRUCT), (3, ttype::STRING)], 64);
            let _ = pb_field(&b, &[2, 3]);
        }
    }
}
