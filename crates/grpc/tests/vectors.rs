//! The gRPC test vectors of kitex-wire.md 8.8 (h2c, unary protobuf `Echo`, and the thrift and
//! biz-error variants), taken frame by frame.
//!
//! The spec's header blocks use plain HPACK literals (no Huffman, fresh dynamic table), so a
//! small literal-only HPACK reader below is enough to get at the header values.

use sluice_testkit::h2frames as common;

use bytes::BytesMut;
use common::{split_frames, TYPE_DATA, TYPE_HEADERS};
use sluice_grpc::{
    headers, parse_timeout, Code, GrpcCodec, GrpcContentType, MessageDecoder, MethodPath, Status,
};
use sluice_testkit::hex;
use std::time::Duration;

const CLIENT: &str = "
50 52 49 20 2a 20 48 54 54 50 2f 32 2e 30 0d 0a
0d 0a 53 4d 0d 0a 0d 0a
00 00 06 04 00 00 00 00 00 00 04 00 00 ff ff
00 00 d2 01 04 00 00 00 01 83 86 44 16 2f 65 63
68 6f 2e 45 63 68 6f 53 65 72 76 69 63 65 2f 45
63 68 6f 41 04 65 63 68 6f 5f 10 61 70 70 6c 69
63 61 74 69 6f 6e 2f 67 72 70 63 7a 0d 6b 69 74
65 78 2f 76 30 2e 31 36 2e 33 40 02 74 65 08 74
72 61 69 6c 65 72 73 40 0c 67 72 70 63 2d 74 69
6d 65 6f 75 74 08 31 30 30 30 30 30 30 75 40 0e
72 70 63 2d 70 65 72 73 69 73 74 2d 6b 31 02 76
31 40 13 64 65 73 74 69 6e 61 74 69 6f 6e 2d 73
65 72 76 69 63 65 04 65 63 68 6f 40 12 64 65 73
74 69 6e 61 74 69 6f 6e 2d 6d 65 74 68 6f 64 04
45 63 68 6f 40 0e 73 6f 75 72 63 65 2d 73 65 72
76 69 63 65 06 63 6c 69 65 6e 74 40 0d 73 6f 75
72 63 65 2d 6d 65 74 68 6f 64 00
00 00 0c 00 01 00 00 00 01 00 00 00 00 07 0a 05
68 65 6c 6c 6f
";

const SERVER: &str = "
00 00 06 04 00 00 00 00 00 00 05 00 00 40 00
00 00 00 04 01 00 00 00 00
00 00 13 01 04 00 00 00 01 88 5f 10 61 70 70 6c
69 63 61 74 69 6f 6e 2f 67 72 70 63
00 00 0c 00 00 00 00 00 01 00 00 00 00 07 0a 05
68 65 6c 6c 6f
00 00 1e 01 05 00 00 00 01 40 0b 67 72 70 63 2d
73 74 61 74 75 73 01 30 40 0c 67 72 70 63 2d 6d
65 73 73 61 67 65 00
";

const BIZ_ERROR: &str = "
00 00 72 01 05 00 00 00 01 88 5f 10 61 70 70 6c
69 63 61 74 69 6f 6e 2f 67 72 70 63 40 0b 67 72
70 63 2d 73 74 61 74 75 73 02 31 33 40 0c 67 72
70 63 2d 6d 65 73 73 61 67 65 09 62 69 7a 20 65
72 72 6f 72 40 0a 62 69 7a 2d 73 74 61 74 75 73
03 35 30 32 40 09 62 69 7a 2d 65 78 74 72 61 1b
7b 22 64 65 74 61 69 6c 22 3a 22 74 65 73 74 20
62 69 7a 20 65 72 72 6f 72 22 7d
";

/// Reads an HPACK integer with an `n`-bit prefix (RFC 7541 5.1).
fn hpack_int(block: &[u8], pos: &mut usize, n: u32) -> usize {
    let mask = (1usize << n) - 1;
    let mut value = usize::from(block[*pos]) & mask;
    *pos += 1;
    if value == mask {
        let mut shift = 0;
        loop {
            let b = block[*pos];
            *pos += 1;
            value += usize::from(b & 0x7f) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    value
}

/// Reads an HPACK string literal; the vectors never use Huffman coding.
fn hpack_str(block: &[u8], pos: &mut usize) -> String {
    assert_eq!(
        block[*pos] & 0x80,
        0,
        "Huffman strings are not expected here"
    );
    let len = hpack_int(block, pos, 7);
    let s = std::str::from_utf8(&block[*pos..*pos + len])
        .unwrap()
        .to_owned();
    *pos += len;
    s
}

/// The static table entries the vectors refer to (RFC 7541 appendix A).
fn static_entry(index: usize) -> (&'static str, &'static str) {
    match index {
        1 => (":authority", ""),
        2 => (":method", "GET"),
        3 => (":method", "POST"),
        4 => (":path", "/"),
        6 => (":scheme", "http"),
        8 => (":status", "200"),
        31 => ("content-type", ""),
        58 => ("user-agent", ""),
        other => panic!("static table entry {other} not expected in the vectors"),
    }
}

/// Decodes a header block made of indexed fields and literals (no dynamic-table references).
fn hpack_decode(block: &[u8]) -> Vec<(String, String)> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < block.len() {
        let b = block[pos];
        if b & 0x80 != 0 {
            let (n, v) = static_entry(hpack_int(block, &mut pos, 7));
            out.push((n.to_owned(), v.to_owned()));
            continue;
        }
        // Literal with incremental indexing (01), without indexing (0000), never indexed (0001).
        let prefix = if b & 0x40 != 0 {
            6
        } else {
            assert_eq!(b & 0xe0, 0, "no dynamic table size updates expected");
            4
        };
        let index = hpack_int(block, &mut pos, prefix);
        let name = if index == 0 {
            hpack_str(block, &mut pos)
        } else {
            static_entry(index).0.to_owned()
        };
        let value = hpack_str(block, &mut pos);
        out.push((name, value));
    }
    out
}

fn header<'a>(list: &'a [(String, String)], name: &str) -> &'a str {
    let mut values = list
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str());
    let v = values.next().unwrap_or_else(|| panic!("no {name}"));
    assert!(values.next().is_none(), "one {name}");
    v
}

#[test]
fn request_headers() {
    let bytes = hex(CLIENT);
    let frames = split_frames(&bytes, true);
    let h = frames.iter().find(|f| f.ty == TYPE_HEADERS).unwrap();
    assert_eq!(h.stream, 1);
    let list = hpack_decode(h.body());

    let path = MethodPath::parse(header(&list, ":path")).unwrap();
    assert_eq!(
        (path.package, path.service, path.method),
        ("echo", "EchoService", "Echo")
    );
    let ct = GrpcContentType::parse(header(&list, headers::CONTENT_TYPE)).unwrap();
    assert_eq!((ct.subtype(), ct.codec()), (None, GrpcCodec::Protobuf));
    assert_eq!(
        parse_timeout(header(&list, headers::GRPC_TIMEOUT).as_bytes()),
        Ok(Duration::from_secs(1))
    );
    assert_eq!(header(&list, headers::DESTINATION_METHOD), "Echo");
    assert_eq!(header(&list, headers::SOURCE_METHOD), "");
    assert_eq!(header(&list, "rpc-persist-k1"), "v1");
    assert!(list
        .iter()
        .any(|(n, _)| n.starts_with(headers::RPC_PERSIST_PREFIX)));
}

#[test]
fn request_and_response_messages() {
    let client = hex(CLIENT);
    let server = hex(SERVER);
    for (bytes, is_client) in [(&client, true), (&server, false)] {
        let frames = split_frames(bytes, is_client);
        let data: Vec<_> = frames.iter().filter(|f| f.ty == TYPE_DATA).collect();
        assert_eq!(data.len(), 1);
        // A unary request is one DATA frame with END_STREAM; the response's DATA is not the end.
        assert_eq!(data[0].end_stream(), is_client);
        assert_eq!(
            data[0].body(),
            &[0, 0, 0, 0, 7, 0x0a, 5, b'h', b'e', b'l', b'l', b'o']
        );
        let dec = MessageDecoder::new();
        let mut buf = BytesMut::from(data[0].body());
        let m = dec.decode(&mut buf).unwrap().unwrap();
        assert!(!m.compressed);
        assert_eq!(&m.data[..], b"\x0a\x05hello");
        assert_eq!(dec.decode(&mut buf), Ok(None));
        dec.finish(&buf).unwrap();
    }
}

#[test]
fn response_headers_and_trailers() {
    let bytes = hex(SERVER);
    let frames = split_frames(&bytes, false);
    let hs: Vec<_> = frames.iter().filter(|f| f.ty == TYPE_HEADERS).collect();
    assert_eq!(hs.len(), 2);

    let head = hpack_decode(hs[0].body());
    assert_eq!(header(&head, ":status"), "200");
    let ct = GrpcContentType::parse(header(&head, headers::CONTENT_TYPE)).unwrap();
    assert_eq!(ct.codec(), GrpcCodec::Protobuf);

    assert!(hs[1].end_stream());
    let trailers = hpack_decode(hs[1].body());
    let status = Status::from_header_values(
        header(&trailers, headers::GRPC_STATUS).as_bytes(),
        Some(header(&trailers, headers::GRPC_MESSAGE).as_bytes()),
    )
    .unwrap();
    assert_eq!(status, Status::ok());
    // Kitex always sends grpc-message, empty on success.
    assert_eq!(status.encoded_message(), "");
}

#[test]
fn trailers_only_biz_error() {
    let bytes = hex(BIZ_ERROR);
    let frames = split_frames(&bytes, false);
    assert_eq!(frames.len(), 1);
    assert!(frames[0].end_stream());
    let list = hpack_decode(frames[0].body());
    assert_eq!(header(&list, ":status"), "200");
    assert_eq!(
        GrpcContentType::parse(header(&list, headers::CONTENT_TYPE)).map(|c| c.codec()),
        Some(GrpcCodec::Protobuf)
    );
    let status = Status::from_header_values(
        header(&list, headers::GRPC_STATUS).as_bytes(),
        Some(header(&list, headers::GRPC_MESSAGE).as_bytes()),
    )
    .unwrap();
    assert_eq!(status, Status::new(Code::INTERNAL, "biz error"));
    assert_eq!(header(&list, headers::BIZ_STATUS), "502");
    assert_eq!(
        header(&list, headers::BIZ_EXTRA),
        r#"{"detail":"test biz error"}"#
    );
}

#[test]
fn thrift_args_and_result_messages() {
    // kitex-wire.md 8.8: `00 | 00 00 00 11 | 0C 00 01 0B 00 01 00 00 00 05 68 65 6C 6C 6F 00 00`
    // (the Echo args struct) and the result struct `0C 00 00 ...`.
    let args = hex("0C 00 01 0B 00 01 00 00 00 05 68 65 6C 6C 6F 00 00");
    let result = hex("0C 00 00 0B 00 01 00 00 00 05 68 65 6C 6C 6F 00 00");
    let mut wire = hex("00 00 00 00 11");
    wire.extend_from_slice(&args);
    wire.extend_from_slice(&hex("00 00 00 00 11"));
    wire.extend_from_slice(&result);

    let dec = MessageDecoder::new();
    let mut buf = BytesMut::from(&wire[..]);
    let a = dec.decode(&mut buf).unwrap().unwrap();
    let r = dec.decode(&mut buf).unwrap().unwrap();
    assert_eq!(&a.data[..], &args[..]);
    assert_eq!(&r.data[..], &result[..]);
    assert_eq!(dec.decode(&mut buf), Ok(None));
    dec.finish(&buf).unwrap();

    let mut out = Vec::new();
    sluice_grpc::encode(&args, false, &mut out).unwrap();
    sluice_grpc::encode(&result, false, &mut out).unwrap();
    assert_eq!(out, wire);
    assert_eq!(
        GrpcContentType::parse("application/grpc+thrift").map(|c| c.codec()),
        Some(GrpcCodec::Thrift)
    );
}
