//! Every HTTP/2 byte of the real Kitex gRPC captures (`../shared/captures/grpc-*`) through the
//! frame decoder and the HPACK decoder, checked against each capture's `DECODED.md` (written by
//! an independent decoder): frame types, offsets and lengths, and every decoded header list,
//! Huffman strings and dynamic-table references included.

use std::collections::BTreeMap;

use bytes::BytesMut;
use sluice_h2wire::hpack::{Decoder, DEFAULT_TABLE_SIZE};
use sluice_h2wire::{Frame, FrameDecoder, DEFAULT_MAX_FRAME_SIZE, PREFACE};
use sluice_testkit::{captures_dir, Capture, Dir, GRPC};

/// (conn, dir, offset) of a frame.
type Key = (usize, Dir, usize);

/// The header lists of DECODED.md, by frame position.
fn expected_lists(name: &str) -> BTreeMap<Key, Vec<(String, String)>> {
    let text = std::fs::read_to_string(captures_dir().join(name).join("DECODED.md")).unwrap();
    let mut out = BTreeMap::new();
    let mut key: Option<Key> = None;
    let mut list: Option<Vec<(String, String)>> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("### [") {
            // "### [16] conn0 client -> server, offset 307, 36 bytes (chunk #14)"
            let (_, rest) = rest.split_once("] conn").unwrap();
            let (conn, rest) = rest.split_once(' ').unwrap();
            let dir = if rest.starts_with("client -> server") {
                Dir::C2s
            } else {
                Dir::S2c
            };
            let offset = rest.split_once("offset ").unwrap().1;
            let offset = offset.split_once(',').unwrap().0;
            key = Some((conn.parse().unwrap(), dir, offset.parse().unwrap()));
            continue;
        }
        let t = line.trim();
        if t.ends_with("HPACK-decoded header list (in order):") {
            list = Some(Vec::new());
            continue;
        }
        let Some(l) = list.as_mut() else { continue };
        if t.is_empty() || t.starts_with("```") || t.starts_with("=>") {
            out.insert(key.unwrap(), list.take().unwrap());
            continue;
        }
        let (n, v) = match t.split_once(": ") {
            Some((n, v)) => (n, v),
            None => (t.strip_suffix(':').unwrap(), ""),
        };
        l.push((n.to_owned(), v.to_owned()));
    }
    out
}

fn check(name: &str) {
    let capture = Capture::load(name);
    let expected = expected_lists(name);
    assert!(!expected.is_empty(), "{name}: no header lists");
    let mut checked = 0;
    for conn in &capture.conns {
        for dir in [Dir::C2s, Dir::S2c] {
            let bytes = conn.bytes(dir);
            let mut offset = 0;
            if dir == Dir::C2s {
                assert!(bytes.starts_with(PREFACE), "{name}: preface");
                offset = PREFACE.len();
            }
            let mut buf = BytesMut::from(&bytes[offset..]);
            let frames = FrameDecoder::new(DEFAULT_MAX_FRAME_SIZE);
            let mut hpack = Decoder::new(DEFAULT_TABLE_SIZE);
            let expected_frames = capture.frames_of(conn.index, dir);
            let mut index = usize::from(dir == Dir::C2s);
            while let Some(frame) = frames.decode(&mut buf).unwrap() {
                let e = expected_frames[index];
                index += 1;
                assert_eq!(e.offset, offset, "{name}: frame order");
                let len = e.len;
                let summary = &e.summary;
                // The summary names the frame type ("HTTP/2 HEADERS stream 1 ...").
                let type_name = summary.split_whitespace().nth(1).unwrap();
                let (kind_name, block) = match &frame {
                    Frame::Headers(h) => {
                        assert!(h.end_headers, "Kitex never splits header blocks");
                        ("HEADERS", Some(h.block.clone()))
                    }
                    Frame::Data(_) => ("DATA", None),
                    Frame::Settings { .. } => ("SETTINGS", None),
                    Frame::WindowUpdate { .. } => ("WINDOW_UPDATE", None),
                    Frame::Ping { .. } => ("PING", None),
                    Frame::RstStream { .. } => ("RST_STREAM", None),
                    Frame::GoAway { .. } => ("GOAWAY", None),
                    other => panic!("{name}: unexpected frame {other:?}"),
                };
                assert_eq!(kind_name, type_name, "{name} at {offset}: {summary}");
                if let Some(block) = block {
                    let mut got = Vec::new();
                    let r = hpack
                        .decode(&block, usize::MAX, |n, v| {
                            got.push((
                                String::from_utf8(n.to_vec()).unwrap(),
                                String::from_utf8(v.to_vec()).unwrap(),
                            ))
                        })
                        .unwrap();
                    assert!(!r.too_large);
                    let want = &expected[&(conn.index, dir, offset)];
                    assert_eq!(&got, want, "{name} conn{} {dir:?} at {offset}", conn.index);
                    checked += 1;
                }
                offset += len;
            }
            assert!(buf.is_empty(), "{name}: trailing bytes");
            assert_eq!(index, expected_frames.len(), "{name}: every frame decoded");
            assert_eq!(offset, bytes.len());
        }
    }
    assert_eq!(checked, expected.len(), "{name}: every header list checked");
}

#[test]
fn every_grpc_capture_decodes_as_decoded_md_says() {
    for name in GRPC {
        check(name);
    }
}
