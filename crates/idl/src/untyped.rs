//! Payloads as JSON without an IDL: thrift binary by field id and type (the binary protocol
//! carries both), protobuf by field number and wire type.
//!
//! Thrift fields print as `"<id>:<type>"` keys (`"1:string"`); protobuf fields as `"<number>"`
//! keys, a field seen several times as an array. Strings that are not UTF-8 print as
//! `{"hex": "..."}`. A length-delimited protobuf field prints as a message when its bytes read
//! as one whole message, else as a string or hex. Everything is bounded: lengths against the
//! buffer, nesting at [`MAX_DEPTH`].

use serde_json::{Map, Value};
use sluice_thrift::field::{read_pb_field, wire, Scalar};
use sluice_thrift::ttype;

use crate::{Error, MAX_DEPTH};

/// A bounded reader over thrift binary bytes.
#[derive(Debug)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes read so far.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    pub(crate) fn malformed(&self, at: &str, reason: &str) -> Error {
        Error::Malformed {
            at: format!("{} (byte {})", crate::names::here(at), self.pos),
            reason: reason.to_owned(),
        }
    }

    fn take(&mut self, n: usize, at: &str) -> Result<&'a [u8], Error> {
        match self.pos.checked_add(n).filter(|&e| e <= self.buf.len()) {
            Some(end) => {
                let b = &self.buf[self.pos..end];
                self.pos = end;
                Ok(b)
            }
            None => Err(self.malformed(
                at,
                &format!("needs {n} more bytes, {} left", self.buf.len() - self.pos),
            )),
        }
    }

    pub(crate) fn u8(&mut self, at: &str) -> Result<u8, Error> {
        Ok(self.take(1, at)?[0])
    }

    pub(crate) fn i16(&mut self, at: &str) -> Result<i16, Error> {
        let b = self.take(2, at)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn i32(&mut self, at: &str) -> Result<i32, Error> {
        let b = self.take(4, at)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i64(&mut self, at: &str) -> Result<i64, Error> {
        let b = self.take(8, at)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(i64::from_be_bytes(a))
    }

    fn len(&mut self, at: &str) -> Result<usize, Error> {
        let n = self.i32(at)?;
        if n < 0 {
            return Err(self.malformed(at, &format!("negative length {n}")));
        }
        Ok(n as usize)
    }

    pub(crate) fn string(&mut self, at: &str) -> Result<&'a [u8], Error> {
        let n = self.len(at)?;
        self.take(n, at)
    }

    /// A list or set head: element type and count, the count checked against what is left
    /// (every element takes at least one byte), so a lying count costs nothing.
    pub(crate) fn list_head(&mut self, at: &str) -> Result<(u8, usize), Error> {
        let et = self.u8(at)?;
        let n = self.len(at)?;
        self.check_count(n, at)?;
        Ok((et, n))
    }

    pub(crate) fn map_head(&mut self, at: &str) -> Result<(u8, u8, usize), Error> {
        let kt = self.u8(at)?;
        let vt = self.u8(at)?;
        let n = self.len(at)?;
        self.check_count(n.saturating_mul(2), at)?;
        Ok((kt, vt, n))
    }

    fn check_count(&self, n: usize, at: &str) -> Result<(), Error> {
        if n > self.buf.len() - self.pos {
            return Err(self.malformed(
                at,
                &format!(
                    "a count of {n} cannot fit in the {} bytes left",
                    self.buf.len() - self.pos
                ),
            ));
        }
        Ok(())
    }
}

/// The key of a thrift field shown without its name.
pub(crate) fn thrift_key(id: i16, t: u8) -> String {
    format!("{id}:{}", type_name(t))
}

/// The IDL name of a thrift binary type code.
pub fn type_name(t: u8) -> &'static str {
    match t {
        ttype::BOOL => "bool",
        ttype::BYTE => "byte",
        ttype::DOUBLE => "double",
        ttype::I16 => "i16",
        ttype::I32 => "i32",
        ttype::I64 => "i64",
        ttype::STRING => "string",
        ttype::STRUCT => "struct",
        ttype::MAP => "map",
        ttype::SET => "set",
        ttype::LIST => "list",
        _ => "unknown",
    }
}

/// A thrift struct as JSON by field id and type.
pub fn thrift_struct(buf: &[u8]) -> Result<(Value, usize), Error> {
    let mut r = Reader::new(buf);
    let v = thrift_value(&mut r, ttype::STRUCT, "", 0)?;
    Ok((v, r.pos()))
}

pub(crate) fn thrift_value(
    r: &mut Reader<'_>,
    t: u8,
    at: &str,
    depth: usize,
) -> Result<Value, Error> {
    if depth > MAX_DEPTH {
        return Err(r.malformed(at, "nesting past 64 levels"));
    }
    Ok(match t {
        ttype::BOOL => Value::Bool(r.u8(at)? != 0),
        ttype::BYTE => Value::from(r.u8(at)? as i8),
        ttype::I16 => Value::from(r.i16(at)?),
        ttype::I32 => Value::from(r.i32(at)?),
        ttype::I64 => Value::from(r.i64(at)?),
        ttype::DOUBLE => {
            let f = f64::from_bits(r.i64(at)? as u64);
            serde_json::Number::from_f64(f)
                .map(Value::Number)
                .unwrap_or_else(|| Value::String(f.to_string()))
        }
        ttype::STRING => string_value(r.string(at)?),
        ttype::STRUCT => {
            let mut map = Map::new();
            loop {
                let ft = r.u8(at)?;
                if ft == ttype::STOP {
                    break;
                }
                let id = r.i16(at)?;
                let v = thrift_value(r, ft, &format!("{at}.{id}"), depth + 1)?;
                map.insert(thrift_key(id, ft), v);
            }
            Value::Object(map)
        }
        ttype::LIST | ttype::SET => {
            let (et, n) = r.list_head(at)?;
            let mut a = Vec::new();
            for i in 0..n {
                a.push(thrift_value(r, et, &format!("{at}[{i}]"), depth + 1)?);
            }
            Value::Array(a)
        }
        ttype::MAP => {
            let (kt, vt, n) = r.map_head(at)?;
            let mut pairs = Vec::new();
            for i in 0..n {
                let at = format!("{at}[{i}]");
                let k = thrift_value(r, kt, &at, depth + 1)?;
                let v = thrift_value(r, vt, &at, depth + 1)?;
                pairs.push((k, v));
            }
            map_value(pairs)
        }
        other => return Err(r.malformed(at, &format!("unknown thrift type code {other}"))),
    })
}

/// A map as a JSON object when every key is a string or number, else as `[[key, value], ...]`.
pub(crate) fn map_value(pairs: Vec<(Value, Value)>) -> Value {
    if pairs
        .iter()
        .all(|(k, _)| matches!(k, Value::String(_) | Value::Number(_) | Value::Bool(_)))
    {
        let mut m = Map::new();
        for (k, v) in pairs {
            let k = match k {
                Value::String(s) => s,
                other => other.to_string(),
            };
            m.insert(k, v);
        }
        Value::Object(m)
    } else {
        Value::Array(
            pairs
                .into_iter()
                .map(|(k, v)| Value::Array(vec![k, v]))
                .collect(),
        )
    }
}

/// A string as JSON: itself when UTF-8, else `{"hex": "..."}`.
pub(crate) fn string_value(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) => Value::String(s.to_owned()),
        Err(_) => binary_value(b),
    }
}

/// Binary as JSON: `{"hex": "..."}`, or the string when it is printable UTF-8.
pub(crate) fn binary_value(b: &[u8]) -> Value {
    match std::str::from_utf8(b) {
        Ok(s) if !s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') => {
            Value::String(s.to_owned())
        }
        _ => {
            let mut m = Map::new();
            m.insert("hex".into(), Value::String(to_hex(b)));
            Value::Object(m)
        }
    }
}

/// Lower-case hex.
pub fn to_hex(b: &[u8]) -> String {
    const D: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for &x in b {
        s.push(D[(x >> 4) as usize] as char);
        s.push(D[(x & 15) as usize] as char);
    }
    s
}

/// Hex digits (whitespace ignored) to bytes; `None` for anything else or an odd count.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .map(|b| (b as char).to_digit(16).map(|d| d as u8))
        .collect::<Option<_>>()?;
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    Some(digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect())
}

/// A protobuf message as JSON by field number, or an error when the bytes are not a message.
pub fn pb_message(buf: &[u8]) -> Result<Value, Error> {
    pb_value(buf, 0)
}

fn pb_value(buf: &[u8], depth: usize) -> Result<Value, Error> {
    if depth > MAX_DEPTH {
        return Err(Error::Malformed {
            at: "protobuf".into(),
            reason: "nesting past 64 levels".into(),
        });
    }
    let mut map = Map::new();
    let mut pos = 0;
    while pos < buf.len() {
        let at = pos;
        let f = read_pb_field(buf, &mut pos).map_err(|e| Error::Malformed {
            at: format!("protobuf (byte {at})"),
            reason: e.to_string(),
        })?;
        let v = match (f.wire_type, f.value) {
            (wire::LEN, Scalar::Bytes(b)) => match pb_value(b, depth + 1) {
                // Bytes that read as a whole message with printable content are shown as one;
                // an empty field or text that happens to parse is shown as a string.
                Ok(m) if !b.is_empty() && !looks_like_text(b) => m,
                _ => string_value(b),
            },
            (wire::I32, Scalar::Int(n)) => Value::from(n as u32),
            // Varints and fixed64 fields as their raw 64 bits.
            (_, Scalar::Int(n)) => Value::from(n as u64),
            (_, other) => Value::String(format!("{other:?}")),
        };
        let key = f.number.to_string();
        match map.get_mut(&key) {
            Some(Value::Array(a)) => a.push(v),
            Some(prev) => {
                let first = std::mem::take(prev);
                *prev = Value::Array(vec![first, v]);
            }
            None => {
                map.insert(key, v);
            }
        }
    }
    Ok(Value::Object(map))
}

fn looks_like_text(b: &[u8]) -> bool {
    std::str::from_utf8(b).is_ok_and(|s| {
        s.chars()
            .all(|c| !c.is_control() || c == '\n' || c == '\t' || c == '\r')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thrift_struct_by_id_and_type() {
        // { 1: { 1: "hi" }, 2: i32 7, 3: list<i16> [1, 2], 4: map<string, bool> {"a": true} }
        let mut b = vec![0x0c, 0, 1, 0x0b, 0, 1, 0, 0, 0, 2, b'h', b'i', 0];
        b.extend_from_slice(&[0x08, 0, 2, 0, 0, 0, 7]);
        b.extend_from_slice(&[0x0f, 0, 3, 0x06, 0, 0, 0, 2, 0, 1, 0, 2]);
        b.extend_from_slice(&[0x0d, 0, 4, 0x0b, 0x02, 0, 0, 0, 1, 0, 0, 0, 1, b'a', 1]);
        b.push(0);
        let (v, n) = thrift_struct(&b).unwrap();
        assert_eq!(n, b.len());
        assert_eq!(
            v.to_string(),
            r#"{"1:struct":{"1:string":"hi"},"2:i32":7,"3:list":[1,2],"4:map":{"a":true}}"#
        );
    }

    #[test]
    fn a_lying_count_is_refused_at_once() {
        let b = [0x0f, 0, 3, 0x0c, 0x7f, 0xff, 0xff, 0xff, 0];
        assert!(thrift_struct(&b).is_err());
    }

    #[test]
    fn a_pb_message_by_field_number() {
        // { 1: "hi", 2: { 3: 150 }, 4: 1, 4: 2 }
        let b = [
            0x0a, 2, b'h', b'i', 0x12, 3, 0x18, 0x96, 0x01, 0x20, 1, 0x20, 2,
        ];
        assert_eq!(
            pb_message(&b).unwrap().to_string(),
            r#"{"1":"hi","2":{"3":150},"4":[1,2]}"#
        );
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(from_hex("00 ff\n1a").unwrap(), vec![0, 255, 26]);
        assert_eq!(to_hex(&[0, 255, 26]), "00ff1a");
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = thrift_struct(&b);
            let _ = pb_message(&b);
        }
    }
}
