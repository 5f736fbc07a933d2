//! The HTTP/2 server connection (`sluice_http2::serve_connection`) with an echo handler and
//! small limits. The input is what the client sends after its handshake: the preface and an
//! empty SETTINGS frame are written first unless the input starts with the preface itself (a
//! captured connection). The connection must end, without a panic, once the client has closed.
#![no_main]
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{run_connection, FuzzEcho, Step, PEER};
use sluice_http2::GrpcServerConfig;

/// An empty SETTINGS frame: length 0, type 4, no flags, stream 0.
const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];

fuzz_target!(|data: &[u8]| {
    let mut bytes = BytesMut::with_capacity(data.len() + 33);
    if !data.starts_with(sluice_h2wire::PREFACE) {
        bytes.put_slice(sluice_h2wire::PREFACE);
        bytes.put_slice(&SETTINGS);
    }
    bytes.put_slice(data);
    let steps = vec![Step::Write(bytes.freeze())];
    run_connection(steps, |io| async move {
        // Every field set today; the update keeps this building when the config grows one.
        #[allow(clippy::needless_update)]
        let config = GrpcServerConfig::default()
            .with_max_concurrent_streams(8)
            .with_initial_stream_window(65_535)
            .with_initial_connection_window(4 * 65_535)
            .with_max_frame_size(16 * 1024)
            .with_max_header_list_size(16 * 1024)
            .with_max_message_size(64 * 1024)
            .with_handshake_timeout(Duration::from_secs(1));
        let handler = Arc::new(FuzzEcho::default());
        // Errors are the connection's verdict on bad input, not findings.
        let _ = sluice_http2::serve_connection(io, PEER, &config, handler, std::future::pending())
            .await;
    });
});
