//! TTStream frame decoder and the exception/biz-status readers: never panic; whatever decodes
//! re-encodes to a frame that decodes equal.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_ttheader::Limits;
use sluice_ttstream::FrameDecoder;

fuzz_target!(|data: &[u8]| {
    let dec = FrameDecoder::new(Limits {
        max_frame_size: 1 << 16,
        max_header_size: 1 << 14,
    });
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = dec.decode(&mut buf) {
        let _ = f.exception();
        let _ = f.biz_status();
        let mut out = BytesMut::new();
        if f.encode(&mut out).is_err() {
            continue;
        }
        let again = dec.decode(&mut out).expect("re-encoded frame decodes").expect("whole");
        assert_eq!(again.kind, f.kind);
        assert_eq!(again.stream_id, f.stream_id);
        assert_eq!(again.method, f.method);
        assert_eq!(again.payload, f.payload);
    }
    let _ = sluice_ttstream::parse_exception(data);
});
