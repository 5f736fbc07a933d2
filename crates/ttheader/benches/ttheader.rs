//! TTHeader decode/encode of the captured Kitex request with a 1 KiB payload, and Buffered
//! delimiting of a 1 KiB message. Run: `cargo bench -p sluice-ttheader`.
//!
//! The frame is the first request of `captures/ttheader-unary` (real Kitex header: 2 string and
//! 8 int key/values, inner framed length) with its 16-byte message string grown to 1 KiB.

use bytes::{BufMut, Bytes, BytesMut};
use divan::{black_box, AllocProfiler, Bencher};
use sluice_testkit::Capture;
use sluice_ttheader::{Decoder, Frame};

#[global_allocator]
static ALLOC: AllocProfiler = AllocProfiler::system();

fn main() {
    divan::main();
}

/// The captured request with its args struct carrying a 1 KiB string.
fn kitex_request_1k() -> (Bytes, Bytes) {
    let cap = Capture::load("ttheader-unary");
    let bytes = Bytes::from(cap.conns[0].c2s.clone());
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize + 4;
    let frame = Decoder::default()
        .decode_frame(&bytes.slice(..len))
        .unwrap();
    let hdr = sluice_thrift::envelope::decode_header(&frame.payload).unwrap();
    let mut msg = BytesMut::new();
    msg.put_slice(&frame.payload[..hdr.body_offset]);
    // args { 1: EchoRequest { 1: string (1024 bytes) } }
    msg.put_slice(&[0x0c, 0x00, 0x01, 0x0b, 0x00, 0x01]);
    msg.put_i32(1024);
    msg.put_bytes(b'x', 1024);
    msg.put_slice(&[0x00, 0x00]);
    let msg = msg.freeze();
    let mut out = BytesMut::new();
    sluice_ttheader::encode(&frame.header, true, &msg, &mut out).unwrap();
    (out.freeze(), msg)
}

#[divan::bench]
fn decode_1k(bencher: Bencher) {
    let (frame, _) = kitex_request_1k();
    let dec = Decoder::default();
    bencher.bench(|| dec.decode_frame(black_box(&frame)).unwrap());
}

#[divan::bench]
fn encode_head_1k(bencher: Bencher) {
    // The hot path writes the head and sends the payload `Bytes` as its own iovec.
    let (frame, _) = kitex_request_1k();
    let f: Frame = Decoder::default().decode_frame(&frame).unwrap();
    let mut out = BytesMut::with_capacity(4096);
    bencher.bench_local(|| {
        out.clear();
        sluice_ttheader::encode_head(&f.header, f.inner_framed, f.payload.len(), &mut out).unwrap();
        black_box(&out);
    });
}

#[divan::bench]
fn encode_whole_1k(bencher: Bencher) {
    let (frame, _) = kitex_request_1k();
    let f: Frame = Decoder::default().decode_frame(&frame).unwrap();
    let mut out = BytesMut::with_capacity(4096);
    bencher.bench_local(|| {
        out.clear();
        f.encode(&mut out).unwrap();
        black_box(&out);
    });
}

#[divan::bench]
fn buffered_delimit_1k(bencher: Bencher) {
    let (_, msg) = kitex_request_1k();
    bencher.bench(|| sluice_thrift::message_len(black_box(&msg), 64, 16 << 20).unwrap());
}
