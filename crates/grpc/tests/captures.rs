//! The gRPC captures of real Kitex conversations (`../shared/captures/grpc-*`) as golden fixtures.
//!
//! Expectations come from each capture's `DECODED.md` (written by an independent decoder), never
//! from this crate: the "gRPC compressed flag = F" / "gRPC message length = N" annotations of
//! every DATA frame, the quoted strings of its summary line, and the HPACK-decoded header lists.

use sluice_testkit::h2frames as common;

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::BytesMut;
use common::{split_frames, TYPE_DATA};
use sluice_grpc::{
    format_timeout, parse_timeout, percent_decode, Code, GrpcCodec, GrpcContentType, Message,
    MessageDecoder, MethodPath,
};
use sluice_testkit::{captures_dir, chunks, split_points, Capture, Dir, GRPC};

/// What DECODED.md says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExpectedMsg {
    compressed: bool,
    len: usize,
}

/// One DATA frame as DECODED.md describes it.
#[derive(Debug, Clone)]
struct ExpectedData {
    offset: usize,
    stream: u32,
    messages: Vec<ExpectedMsg>,
    strings: Vec<String>,
}

/// Key of one byte stream of messages: connection, direction, HTTP/2 stream id.
type StreamKey = (usize, Dir, u32);

fn read_decoded(name: &str) -> String {
    std::fs::read_to_string(captures_dir().join(name).join("DECODED.md")).unwrap()
}

/// The gRPC message annotations per frame index, in the order DECODED.md lists them.
fn message_annotations(decoded: &str) -> BTreeMap<usize, Vec<ExpectedMsg>> {
    let mut out: BTreeMap<usize, Vec<ExpectedMsg>> = BTreeMap::new();
    let mut current = None;
    let mut flag = None;
    for line in decoded.lines() {
        if let Some(rest) = line.strip_prefix("### [") {
            current = Some(rest.split_once(']').unwrap().0.parse::<usize>().unwrap());
            flag = None;
            continue;
        }
        if let Some((_, v)) = line.split_once("gRPC compressed flag = ") {
            assert!(flag.is_none(), "two flags without a length: {line}");
            flag = Some(match v.trim() {
                "0" => false,
                "1" => true,
                other => panic!("unexpected compressed flag {other}"),
            });
        } else if let Some((_, v)) = line.split_once("gRPC message length = ") {
            let len = v.trim().parse().unwrap();
            let compressed = flag.take().expect("flag line before length line");
            out.entry(current.expect("inside a frame"))
                .or_default()
                .push(ExpectedMsg { compressed, len });
        }
    }
    out
}

/// The DATA frames of each stream, from DECODED.md, in stream order.
fn expected_data(capture: &Capture, decoded: &str) -> BTreeMap<StreamKey, Vec<ExpectedData>> {
    let annotations = message_annotations(decoded);
    let mut out: BTreeMap<StreamKey, Vec<ExpectedData>> = BTreeMap::new();
    for (i, frame) in capture.frames.iter().enumerate() {
        assert_eq!(frame.index, i, "frames are listed by index");
        let messages = annotations.get(&i).cloned().unwrap_or_default();
        let Some(rest) = frame.summary.strip_prefix("HTTP/2 DATA stream ") else {
            assert!(messages.is_empty(), "messages outside DATA in frame {i}");
            continue;
        };
        let stream = rest.split_whitespace().next().unwrap().parse().unwrap();
        out.entry((frame.conn, frame.dir.unwrap(), stream))
            .or_default()
            .push(ExpectedData {
                offset: frame.offset,
                stream,
                messages,
                strings: frame.payload_strings.clone(),
            });
    }
    for frames in out.values_mut() {
        frames.sort_by_key(|f| f.offset);
    }
    let listed: usize = annotations.values().map(Vec::len).sum();
    let lines = decoded.matches("gRPC message length = ").count();
    assert_eq!(listed, lines, "every message annotation belongs to a frame");
    out
}

/// Decodes `bytes` delivered in `pieces`, draining the decoder after every piece.
fn decode_pieces(dec: &MessageDecoder, pieces: &[&[u8]]) -> Vec<Message> {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        while let Some(m) = dec.decode(&mut buf).unwrap() {
            out.push(m);
        }
    }
    dec.finish(&buf).unwrap();
    assert!(buf.is_empty(), "no leftover bytes");
    out
}

fn check_messages(name: &str) {
    let capture = Capture::load(name);
    let decoded = read_decoded(name);
    let mut expected = expected_data(&capture, &decoded);
    let dec = MessageDecoder::new();
    let mut streams_checked = 0;

    for conn in &capture.conns {
        for dir in [Dir::C2s, Dir::S2c] {
            // DATA payloads per stream, in wire order, with the frame offsets.
            let mut streams: BTreeMap<u32, Vec<(usize, &[u8])>> = BTreeMap::new();
            for f in split_frames(conn.bytes(dir), dir == Dir::C2s) {
                if f.ty == TYPE_DATA {
                    streams
                        .entry(f.stream)
                        .or_default()
                        .push((f.offset, f.body()));
                }
            }
            for (stream, frames) in streams {
                let key = (conn.index, dir, stream);
                let want = expected
                    .remove(&key)
                    .unwrap_or_else(|| panic!("{name}: {key:?} not in DECODED.md"));
                let ctx = format!("{name} conn{} {} stream {stream}", conn.index, dir.as_str());
                let offsets: Vec<usize> = frames.iter().map(|f| f.0).collect();
                let want_offsets: Vec<usize> = want.iter().map(|f| f.offset).collect();
                assert_eq!(offsets, want_offsets, "{ctx}: DATA frame offsets");
                assert!(want.iter().all(|w| w.stream == stream));

                let payloads: Vec<&[u8]> = frames.iter().map(|f| f.1).collect();
                let all: Vec<u8> = payloads.concat();
                let want_msgs: Vec<ExpectedMsg> =
                    want.iter().flat_map(|w| w.messages.clone()).collect();

                // Whole stream at once, then frame by frame.
                let msgs = decode_pieces(&dec, &[&all]);
                let got: Vec<ExpectedMsg> = msgs
                    .iter()
                    .map(|m| ExpectedMsg {
                        compressed: m.compressed,
                        len: m.data.len(),
                    })
                    .collect();
                assert_eq!(got, want_msgs, "{ctx}: messages");
                assert_eq!(decode_pieces(&dec, &payloads), msgs, "{ctx}: per frame");

                // Every byte split, and splits around each frame boundary.
                let mut boundaries = Vec::new();
                let mut at = 0;
                for p in &payloads {
                    at += p.len();
                    boundaries.push(at);
                }
                for points in split_points(all.len(), &boundaries) {
                    let pieces = chunks(&all, &points);
                    assert_eq!(
                        decode_pieces(&dec, &pieces),
                        msgs,
                        "{ctx}: split at {points:?}"
                    );
                }

                // The strings DECODED.md shows for a frame are in the messages that start in it.
                let mut start = 0;
                let mut starts = Vec::new();
                for m in &msgs {
                    starts.push(start);
                    start += sluice_grpc::PREFIX_LEN + m.data.len();
                }
                let mut frame_start = 0;
                for (w, payload) in want.iter().zip(&payloads) {
                    let frame_end = frame_start + payload.len();
                    let text: Vec<u8> = msgs
                        .iter()
                        .zip(&starts)
                        .filter(|(_, &s)| s >= frame_start && s < frame_end)
                        .flat_map(|(m, _)| m.data.to_vec())
                        .collect();
                    for s in &w.strings {
                        assert!(
                            text.windows(s.len()).any(|win| win == s.as_bytes()),
                            "{ctx}: frame at {} should carry {s:?}",
                            w.offset
                        );
                    }
                    frame_start = frame_end;
                }
                streams_checked += 1;
            }
        }
    }
    assert!(
        expected.is_empty(),
        "{name}: DECODED.md lists DATA on streams the bytes lack: {:?}",
        expected.keys().collect::<Vec<_>>()
    );
    assert!(streams_checked > 0, "{name}: no DATA at all");
}

/// The HPACK-decoded header lists of DECODED.md, per frame index, and the "=> gRPC trailers"
/// lines.
fn header_lists(decoded: &str) -> (Vec<Vec<(String, String)>>, Vec<String>) {
    let mut lists = Vec::new();
    let mut trailer_lines = Vec::new();
    let mut current: Option<Vec<(String, String)>> = None;
    for line in decoded.lines() {
        let t = line.trim();
        if t.ends_with("HPACK-decoded header list (in order):") {
            current = Some(Vec::new());
            continue;
        }
        if let Some(rest) = t.strip_prefix("=> gRPC trailers: ") {
            trailer_lines.push(rest.to_owned());
        }
        let Some(list) = current.as_mut() else {
            continue;
        };
        if t.starts_with("```") || t.starts_with("=>") || t.is_empty() {
            lists.push(current.take().unwrap());
            continue;
        }
        let (name, value) = match t.split_once(": ") {
            Some((n, v)) => (n, v),
            None => (t.strip_suffix(':').expect("header line"), ""),
        };
        list.push((name.to_owned(), value.to_owned()));
    }
    (lists, trailer_lines)
}

fn check_headers(name: &str) {
    let decoded = read_decoded(name);
    let (lists, trailer_lines) = header_lists(&decoded);
    assert!(!lists.is_empty(), "{name}: no header lists");
    let codec = if name.starts_with("grpc-pb") {
        GrpcCodec::Protobuf
    } else {
        GrpcCodec::Thrift
    };
    let mut seen = BTreeMap::<&str, usize>::new();
    for list in &lists {
        for (header, value) in list {
            match header.as_str() {
                "grpc-timeout" => {
                    let d = parse_timeout(value.as_bytes()).unwrap();
                    // Kitex sends what is left of its 5 s deadline, in microseconds.
                    assert!(
                        d > Duration::from_secs(4) && d <= Duration::from_secs(5),
                        "{d:?}"
                    );
                    assert_eq!(format_timeout(d), *value);
                }
                ":path" => {
                    let p = MethodPath::parse(value).unwrap();
                    assert_eq!(p.service, "EchoService");
                    assert!(p.method.starts_with("Echo"), "{value}");
                    let package = if codec == GrpcCodec::Protobuf {
                        "echo"
                    } else {
                        ""
                    };
                    assert_eq!(p.package, package, "{value}");
                }
                "content-type" => {
                    let ct = GrpcContentType::parse(value).unwrap();
                    assert_eq!(ct.codec(), codec, "{value}");
                    assert_eq!(codec.content_type(), value);
                }
                "grpc-status" => {
                    let code = Code::parse(value.as_bytes()).unwrap();
                    assert!(code == Code::OK || code == Code::INTERNAL, "{code:?}");
                }
                "grpc-message" => {
                    // Kitex's messages are plain ASCII: they decode to themselves.
                    assert_eq!(percent_decode(value.as_bytes()), value.as_str());
                }
                _ => continue,
            }
            *seen.entry(header.as_str()).or_default() += 1;
        }
    }
    // A cancelled call ends with the client's RST_STREAM: the server sends no trailers.
    let has_trailers = !name.ends_with("-cancel");
    let mut required = vec![":path", "content-type", "grpc-timeout"];
    if has_trailers {
        required.extend(["grpc-status", "grpc-message"]);
    }
    for h in required {
        assert!(seen.get(h).copied().unwrap_or(0) > 0, "{name}: no {h}");
    }

    // "grpc-status 13 (INTERNAL), grpc-message "..."": the code's name and the message.
    assert_eq!(!trailer_lines.is_empty(), has_trailers, "{name}: trailers");
    for line in &trailer_lines {
        let rest = line.strip_prefix("grpc-status ").unwrap();
        let (num, rest) = rest.split_once(" (").unwrap();
        let (code_name, rest) = rest.split_once("), grpc-message \"").unwrap();
        let message = rest.strip_suffix('"').unwrap();
        let code = Code::parse(num.as_bytes()).unwrap();
        assert_eq!(code.name(), Some(code_name));
        let status =
            sluice_grpc::Status::from_header_values(num.as_bytes(), Some(message.as_bytes()))
                .unwrap();
        assert_eq!(status.message, message);
        if code != Code::OK {
            assert!(message.ends_with("[biz error]"), "{message}");
        }
    }
}

macro_rules! scenarios {
    ($($test:ident => $name:literal,)*) => {
        $(
            mod $test {
                #[test]
                fn messages() {
                    super::check_messages($name);
                }

                #[test]
                fn headers() {
                    super::check_headers($name);
                }
            }
        )*

        #[test]
        fn every_grpc_capture_is_covered() {
            assert_eq!(&[$($name),*][..], GRPC);
        }
    };
}

scenarios! {
    grpc_thrift_unary => "grpc-thrift-unary",
    grpc_thrift_bidi => "grpc-thrift-bidi",
    grpc_thrift_echofail => "grpc-thrift-echofail",
    grpc_thrift_bidi_error => "grpc-thrift-bidi-error",
    grpc_thrift_bidi_cancel => "grpc-thrift-bidi-cancel",
    grpc_pb_unary => "grpc-pb-unary",
    grpc_pb_unary_multi => "grpc-pb-unary-multi",
    grpc_pb_bidi => "grpc-pb-bidi",
    grpc_pb_echofail => "grpc-pb-echofail",
    grpc_streaming_bidi => "grpc-streaming-bidi",
}
