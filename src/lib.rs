//! Sluice: a Kitex-compatible multi-protocol generic proxy, and the crates it is built from.
#![forbid(unsafe_code)]
pub use sluice_client as client;
pub use sluice_framed as framed;
pub use sluice_http2 as http2;
pub use sluice_proxy as proxy;
pub use sluice_server as server;
pub use sluice_sniff as sniff;
pub use sluice_stream as stream;
pub use sluice_thrift as thrift;
pub use sluice_ttheader as ttheader;
pub use sluice_ttstream as ttstream;
