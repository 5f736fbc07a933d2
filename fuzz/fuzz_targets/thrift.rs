//! Envelope, Buffered delimiting, TApplicationException and ErrorProto readers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sluice_thrift::envelope::decode_header(data);
    let _ = sluice_thrift::kitex_pb::decode_header(data);
    if let Ok(n) = sluice_thrift::message_len(data, 64, 1 << 16) {
        assert!(n <= data.len());
    }
    if let Ok(n) = sluice_thrift::skip_struct(data, 64, 1 << 16) {
        assert!(n <= data.len());
    }
    let _ = sluice_thrift::ApplicationException::decode(data);
    let _ = sluice_thrift::ApplicationException::decode_message(data);
    let _ = sluice_thrift::kitex_pb::ErrorProto::decode(data);
    let mut m = data.to_vec();
    let _ = sluice_thrift::envelope::rewrite_seq_id(&mut m, 7);
});
