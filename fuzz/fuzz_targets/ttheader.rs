//! TTHeader decoder: never panic, stay within limits, and whatever decodes re-encodes to a
//! frame that decodes equal.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_ttheader::{Decoder, Limits};

fuzz_target!(|data: &[u8]| {
    let dec = Decoder::new(Limits {
        max_frame_size: 1 << 16,
        max_header_size: 1 << 14,
    });
    let mut buf = BytesMut::from(data);
    while let Ok(Some(f)) = dec.decode(&mut buf) {
        let mut out = BytesMut::new();
        if f.encode(&mut out).is_ok() {
            let again = dec.decode(&mut out).expect("re-encoded frame decodes").expect("whole");
            assert_eq!(again.header.flags, f.header.flags);
            assert_eq!(again.header.seq_id, f.header.seq_id);
            assert_eq!(again.header.str_kvs, f.header.str_kvs);
            assert_eq!(again.header.int_kvs, f.header.int_kvs);
            assert_eq!(again.payload, f.payload);
        }
    }
    assert!(buf.capacity() <= (1 << 16) + data.len() + 64);
});
