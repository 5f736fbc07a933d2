//! The mesh header (kitex-wire.md 1.10), decode only.
//!
//! ```text
//! u16 magic 0xFFAF
//! u16 header length in bytes (not words)
//! len bytes: u16 count, then count x (u16 klen, key, u16 vlen, value)
//! then a Framed or Buffered thrift / Kitex protobuf message
//! ```
//!
//! Kitex copies the pairs into the request's string map (so `isn` and `rip` work) and replies
//! with a plain Framed or Buffered message: no mesh header on the way back.

use bytes::{Bytes, BytesMut};
use sluice_ttheader::StrKvs;

use crate::Error;

/// The u16 magic at offset 0.
pub const MAGIC: u16 = 0xFFAF;

/// A decoded mesh header; the message that follows stays in the buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MeshHeader {
    /// The string key/values.
    pub str_kvs: StrKvs,
}

/// True if `buf` starts with the mesh magic.
pub fn is_mesh(buf: &[u8]) -> bool {
    buf.len() >= 2 && buf[0] == 0xFF && buf[1] == 0xAF
}

/// Size of the mesh header at the start of `buf` (magic and length included), once 4 bytes are
/// there. The header length is a u16, so it is bounded by 65535 by construction.
pub fn header_len(buf: &[u8]) -> Result<Option<usize>, Error> {
    if buf.len() < 4 {
        return Ok(None);
    }
    if !is_mesh(buf) {
        return Err(Error::Mesh("bad magic"));
    }
    Ok(Some(4 + usize::from(u16::from_be_bytes([buf[2], buf[3]]))))
}

/// Takes the mesh header off the front of `buf` once it is whole, leaving the message behind.
pub fn decode(buf: &mut BytesMut) -> Result<Option<MeshHeader>, Error> {
    let Some(len) = header_len(buf)? else {
        return Ok(None);
    };
    if buf.len() < len {
        return Ok(None);
    }
    // Validate before splitting so the buffer is untouched on error.
    parse_pairs(&buf[4..len])?;
    let head = buf.split_to(len).freeze();
    let body = head.slice(4..);
    let mut str_kvs = StrKvs::new();
    for (k, v) in parse_pairs(&body)? {
        str_kvs.insert(body.slice(k.0..k.1), body.slice(v.0..v.1));
    }
    Ok(Some(MeshHeader { str_kvs }))
}

type Range = (usize, usize);

fn parse_pairs(b: &[u8]) -> Result<Vec<(Range, Range)>, Error> {
    if b.len() < 2 {
        return Err(Error::Mesh("header shorter than its pair count"));
    }
    let count = usize::from(u16::from_be_bytes([b[0], b[1]]));
    let mut pos = 2;
    let mut out = Vec::with_capacity(count.min(b.len() / 4));
    let read = |pos: &mut usize| -> Result<Range, Error> {
        let n = b
            .get(*pos..*pos + 2)
            .map(|x| usize::from(u16::from_be_bytes([x[0], x[1]])))
            .ok_or(Error::Mesh("pair runs past the header"))?;
        let start = *pos + 2;
        if start + n > b.len() {
            return Err(Error::Mesh("pair runs past the header"));
        }
        *pos = start + n;
        Ok((start, start + n))
    };
    for _ in 0..count {
        let k = read(&mut pos)?;
        let v = read(&mut pos)?;
        out.push((k, v));
    }
    if pos != b.len() {
        return Err(Error::Mesh("bytes left after the last pair"));
    }
    Ok(out)
}

/// The header's pairs as owned `Bytes`, for callers that hold the header bytes already.
pub fn decode_pairs(body: &Bytes) -> Result<StrKvs, Error> {
    let mut kvs = StrKvs::new();
    for (k, v) in parse_pairs(body)? {
        kvs.insert(body.slice(k.0..k.1), body.slice(v.0..v.1));
    }
    Ok(kvs)
}
