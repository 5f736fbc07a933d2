//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use bytes::BytesMut;
use sluice_ttheader::{IntKvs, StrKvs};
use sluice_ttstream::{FrameDecoder, StreamFrame};

/// Decodes a whole connection direction: `(offset, length, frame)` for every frame. Panics on
/// an error or on leftover bytes.
pub fn decode_all(bytes: &[u8]) -> Vec<(usize, usize, StreamFrame)> {
    let dec = FrameDecoder::default();
    let mut buf = BytesMut::from(bytes);
    let mut out = Vec::new();
    let mut offset = 0;
    while let Some(frame) = dec
        .decode(&mut buf)
        .unwrap_or_else(|e| panic!("frame at offset {offset}: {e}"))
    {
        let len = bytes.len() - offset - buf.len();
        out.push((offset, len, frame));
        offset += len;
    }
    assert!(
        buf.is_empty(),
        "{} leftover bytes at offset {offset}",
        buf.len()
    );
    out
}

/// Decodes exactly one frame.
pub fn decode_one(bytes: &[u8]) -> StreamFrame {
    let mut all = decode_all(bytes);
    assert_eq!(all.len(), 1, "exactly one frame");
    all.pop().unwrap().2
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).expect("UTF-8 key or value")
}

/// String KVs as a map, for comparing without regard to order.
pub fn str_map(kvs: &StrKvs) -> BTreeMap<String, String> {
    kvs.iter().map(|(k, v)| (text(k), text(v))).collect()
}

/// Integer KVs as a map.
pub fn int_map(kvs: &IntKvs) -> BTreeMap<u16, String> {
    kvs.iter().map(|(k, v)| (k, text(v))).collect()
}

/// True if `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}
