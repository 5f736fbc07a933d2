//! Sluice: a Kitex-compatible multi-protocol generic proxy, and the crates it is built from.
//!
//! Each crate is re-exported as a module (`sluice::server`, `sluice::proxy`, ...), so every type
//! in a public signature is reachable from here; the types an embedder starts from are also at
//! the top level:
//!
//! * serve: [`Server`] with a [`DefaultHandler`] (ping-pong) and a [`StreamingHandler`]
//!   (TTStream, gRPC), wrapped in [`Layer`]s if you like, or made of closures with
//!   [`handler_fn`] and [`stream_handler_fn`];
//! * forward: [`Proxy`] and its [`Forwarder`], customised through [`Phases`];
//! * call: [`GenericClient`] (ping-pong), [`TTStreamClient`] and [`GrpcClient`] (streams);
//! * errors Sluice answers callers with: [`ProxyError`] and its [`ErrorKind`];
//! * IDLs read at run time ([`idl`]): JSON to and from thrift and protobuf payloads, payloads
//!   as JSON without an IDL, one field of a payload read by its path.
#![forbid(unsafe_code)]
pub use bytes;
pub use sluice_admin as admin;
pub use sluice_client as client;
pub use sluice_discovery as discovery;
pub use sluice_framed as framed;
pub use sluice_grpc as grpc;
pub use sluice_h2wire as h2wire;
pub use sluice_http2 as http2;
pub use sluice_idl as idl;
pub use sluice_io as io;
pub use sluice_metrics as metrics;
pub use sluice_otlp as otlp;
pub use sluice_proxy as proxy;
pub use sluice_resilience as resilience;
pub use sluice_server as server;
pub use sluice_sniff as sniff;
pub use sluice_stream as stream;
pub use sluice_thrift as thrift;
pub use sluice_ttheader as ttheader;
pub use sluice_ttstream as ttstream;

pub use sluice_client::{ClientConfig, GenericClient, TTStreamClient};
pub use sluice_http2::GrpcClient;
pub use sluice_proxy::{Config, Forwarder, Phases, Proxy};
pub use sluice_server::layer::{handler_fn, stream_handler_fn, Layer};
pub use sluice_server::{
    DefaultHandler, Drain, DrainHandle, ErrorKind, ProxyError, Request, Response, Server,
    ServerConfig, StreamingHandler,
};
pub use sluice_stream::{ClientStream, Metadata, ServerStream, StreamEnd, StreamRequest};
