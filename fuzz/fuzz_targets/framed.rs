//! Framed, Buffered and mesh-header decoders over a stream of arbitrary bytes.
#![no_main]
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let max = 1 << 16;
    let mut a = BytesMut::from(data);
    while let Ok(Some(_)) = sluice_framed::FramedCodec::new(max).decode(&mut a) {}
    assert!(a.capacity() <= max + data.len() + 64);
    let mut b = BytesMut::from(data);
    while let Ok(Some(_)) = sluice_framed::BufferedCodec::new(max).decode(&mut b) {}
    let mut c = BytesMut::from(data);
    let _ = sluice_framed::mesh::decode(&mut c);
});
