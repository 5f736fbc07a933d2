//! The ping-pong driver behind the real sniffer: the input is everything a client writes on
//! one connection (TTHeader, Framed, Buffered, Kitex protobuf, mesh header, or anything else);
//! the echo server answers with small limits (64 KiB frames, 4 requests in flight). The
//! connection must end, without a panic, once the client has closed.
#![no_main]
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{run_connection, serve_with_server, Step};
use sluice_server::Cluster;

fuzz_target!(|data: &[u8]| {
    // The TTStream cluster serves every ping-pong transport (and TTStream, and refuses an
    // HTTP/2 preface with a GOAWAY), so whatever the sniffer makes of the input is served.
    let steps = vec![Step::Write(Bytes::copy_from_slice(data))];
    run_connection(steps, serve_with_server(Cluster::TTStream));
});
