//! gRPC message framing and the header value parsers: never panic, never reserve past the limit.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_grpc::message::MessageDecoder;

fuzz_target!(|data: &[u8]| {
    let dec = MessageDecoder::with_max_message_size(1 << 16);
    let mut buf = BytesMut::from(data);
    while let Ok(Some(_)) = dec.decode(&mut buf) {}
    assert!(buf.capacity() <= (1 << 16) + 5 + data.len() + 64);
    let _ = dec.finish(&buf);
    let _ = sluice_grpc::timeout::parse_timeout(data);
    let _ = sluice_grpc::status::Code::parse(data);
    let _ = sluice_grpc::status::percent_decode(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = sluice_grpc::path::MethodPath::parse(s);
        let _ = sluice_grpc::content_type::GrpcContentType::parse(s);
    }
});
