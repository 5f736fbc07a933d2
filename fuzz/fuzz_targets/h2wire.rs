//! HTTP/2 frames and HPACK: never panic, never reserve past the frame limit, and a header list
//! is never delivered past its limit.
#![no_main]
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use sluice_h2wire::hpack::{huffman, Decoder};
use sluice_h2wire::{Frame, FrameDecoder, DEFAULT_MAX_FRAME_SIZE, HEAD_LEN};

fuzz_target!(|data: &[u8]| {
    // The input as a connection's bytes (the preface skipped if present).
    let body = data.strip_prefix(&sluice_h2wire::PREFACE[..]).unwrap_or(data);
    let frames = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
    let mut hpack = Decoder::new(4096);
    let mut buf = BytesMut::from(body);
    loop {
        match frames.decode(&mut buf) {
            Ok(Some(Frame::Headers(h))) => {
                let mut size = 0;
                let _ = hpack.decode(&h.block, 1024, |n, v| size += n.len() + v.len() + 32);
                assert!(size <= 1024);
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) if e.stream.is_some() => {}
            Err(_) => break,
        }
        assert!(buf.capacity() <= HEAD_LEN + DEFAULT_MAX_FRAME_SIZE as usize + body.len() + 64);
    }
    // The whole input as one header block, and as one Huffman string.
    let mut fresh = Decoder::new(4096);
    let _ = fresh.decode(&Bytes::copy_from_slice(data), usize::MAX, |_, _| {});
    let mut out = Vec::new();
    let _ = huffman::decode(data, &mut out);
    assert!(out.len() <= data.len() * 8 / 5);
});
