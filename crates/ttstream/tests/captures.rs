//! Every TTStream capture (real Kitex v0.16.1 bytes) decodes, both directions of every
//! connection, frame by frame, exactly as its DECODED.md says, with no bytes left over; every
//! frame re-encodes to its own bytes; and every way of splitting the bytes yields the same
//! frames, none before it is whole.

mod common;

use bytes::BytesMut;
use common::{contains, decode_all, int_map, str_map};
use sluice_testkit::{chunks, split_points, Capture, Dir, Expected, TTSTREAM};
use sluice_ttstream::{FrameDecoder, FrameType, StreamFrame};

fn check_frame(ctx: &str, raw: &[u8], f: &StreamFrame, e: &Expected) {
    assert_eq!(e.length, Some(raw.len() as u32 - 4), "{ctx}: LENGTH");
    assert_eq!(Some(f.header.flags), e.flags, "{ctx}: flags");
    assert_eq!(Some(f.stream_id), e.seq_id, "{ctx}: stream id");
    assert_eq!(f.header.seq_id, f.stream_id, "{ctx}");
    assert_eq!(
        Some(f.header.protocol_id),
        e.protocol_id,
        "{ctx}: protocol id"
    );
    let words = u16::from_be_bytes([raw[12], raw[13]]);
    assert_eq!(Some(words), e.header_words, "{ctx}: header size");
    assert_eq!(
        f.header.encoded_section_len(),
        usize::from(words) * 4,
        "{ctx}"
    );
    assert!(f.header.transforms.is_empty(), "{ctx}: transforms");

    assert_eq!(
        e.int_kvs.get(&27),
        Some(&(f.kind as u8).to_string()),
        "{ctx}: frame type"
    );
    assert_eq!(
        e.int_kvs.get(&9).map(String::as_bytes),
        Some(&f.method[..]),
        "{ctx}: method"
    );
    assert_eq!(int_map(&f.header.int_kvs), e.int_kvs, "{ctx}: int kvs");
    assert_eq!(str_map(&f.header.str_kvs), e.str_kvs, "{ctx}: str kvs");
    let summary = format!(
        "TTStream {} frame, stream id {}, method '{}'",
        f.kind,
        f.stream_id,
        f.method_str().unwrap()
    );
    assert!(e.summary.starts_with(&summary), "{ctx}: {}", e.summary);

    assert_eq!(
        f.payload.len(),
        e.payload_len.unwrap_or(0),
        "{ctx}: payload"
    );
    for s in &e.payload_strings {
        assert!(
            contains(&f.payload, s.as_bytes()),
            "{ctx}: payload has {s:?}"
        );
    }
    match f.exception().unwrap_or_else(|err| panic!("{ctx}: {err}")) {
        Some(ex) => {
            assert!(f.kind.carries_exception(), "{ctx}");
            assert_eq!(Some(&ex.message), e.exception_message.as_ref(), "{ctx}");
            assert_eq!(Some(ex.kind.0), e.exception_type, "{ctx}");
        }
        None => {
            assert_eq!(e.exception_message, None, "{ctx}: exception expected");
            assert_eq!(e.exception_type, None, "{ctx}");
        }
    }
    // Key order is kept, so re-encoding gives back the captured bytes exactly.
    assert_eq!(&f.to_bytes().unwrap()[..], raw, "{ctx}: re-encode");
    assert_eq!(f.encoded_len(), raw.len(), "{ctx}");
}

#[test]
fn every_capture_decodes_as_decoded_md_says() {
    let mut kinds_seen = std::collections::BTreeSet::new();
    let mut exceptions = 0;
    for name in TTSTREAM {
        let cap = Capture::load(name);
        let mut checked = 0;
        for conn in &cap.conns {
            for dir in [Dir::C2s, Dir::S2c] {
                let bytes = conn.bytes(dir);
                let got = decode_all(bytes);
                let want = cap.frames_of(conn.index, dir);
                assert_eq!(
                    got.len(),
                    want.len(),
                    "{name} conn{} {}: frame count",
                    conn.index,
                    dir.as_str()
                );
                for ((offset, len, f), e) in got.iter().zip(&want) {
                    let ctx = format!("{name} frame [{}]", e.index);
                    assert_eq!((*offset, *len), (e.offset, e.len), "{ctx}: position");
                    check_frame(&ctx, &bytes[*offset..offset + len], f, e);
                    kinds_seen.insert(f.kind);
                    exceptions += usize::from(!f.payload.is_empty() && f.kind.carries_exception());
                }
                checked += got.len();
            }
        }
        assert_eq!(checked, cap.frames.len(), "{name}: every listed frame");
    }
    // The captures cover every type but Meta, which Kitex servers never send.
    assert_eq!(
        kinds_seen.into_iter().collect::<Vec<_>>(),
        [
            FrameType::Header,
            FrameType::Data,
            FrameType::Trailer,
            FrameType::Rst
        ]
    );
    assert_eq!(exceptions, 4, "3 error trailers and 1 RST carry exceptions");
}

#[test]
fn every_split_yields_the_same_frames() {
    let dec = FrameDecoder::default();
    let mut runs = 0;
    for name in TTSTREAM {
        let cap = Capture::load(name);
        for conn in &cap.conns {
            for dir in [Dir::C2s, Dir::S2c] {
                let bytes = conn.bytes(dir);
                let reference: Vec<StreamFrame> =
                    decode_all(bytes).into_iter().map(|(_, _, f)| f).collect();
                let ends: Vec<usize> = cap
                    .frames_of(conn.index, dir)
                    .iter()
                    .map(|e| e.offset + e.len)
                    .collect();
                for points in split_points(bytes.len(), &ends) {
                    let mut buf = BytesMut::new();
                    let mut fed = 0;
                    let mut got = Vec::new();
                    for chunk in chunks(bytes, &points) {
                        buf.extend_from_slice(chunk);
                        fed += chunk.len();
                        while let Some(f) = dec.decode(&mut buf).unwrap() {
                            got.push(f);
                        }
                        // A frame comes out as soon as it is whole, and not before.
                        let whole = ends.iter().filter(|&&end| end <= fed).count();
                        assert_eq!(got.len(), whole, "{name}: after {fed} bytes");
                    }
                    assert!(buf.is_empty(), "{name}: leftover");
                    assert_eq!(got, reference, "{name}: split at {:?}", &points[..1]);
                    runs += 1;
                }
            }
        }
    }
    // 22 connection directions byte by byte, plus 3 splits around each of the 95 frame ends
    // (fewer at the end of a direction, where b and b + 1 fall outside).
    assert!(runs > 22 + 2 * 95, "{runs} splits");
}

#[test]
fn payloads_are_zero_copy_slices_of_the_input() {
    let cap = Capture::load("ttstream-bidi");
    let mut buf = BytesMut::from(&cap.conns[0].c2s[..]);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    let dec = FrameDecoder::default();
    while let Some(f) = dec.decode(&mut buf).unwrap() {
        if !f.payload.is_empty() {
            let p = f.payload.as_ptr() as usize;
            assert!(
                p >= start && p + f.payload.len() <= end,
                "payload points into the input"
            );
        }
    }
}
