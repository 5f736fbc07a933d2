//! What a [`DefaultHandler`] receives and returns.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use sluice_sniff::Codec;
use sluice_thrift::{ApplicationException, MessageType};
use sluice_ttheader::{Header, StrKvs};

/// The ping-pong transport a request arrived on; the reply is written the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TTHeader with the inner u32 length (Kitex's default), as `sluice_client::Transport::TTHeader`.
    TTHeader,
    /// TTHeader with the message right after the header (no inner length).
    TTHeaderUnframed,
    /// `u32 length` + message.
    Framed,
    /// The bare message.
    Buffered,
    /// Mesh header, then Framed (`true`) or Buffered; replies omit the mesh header, as Kitex.
    Mesh(bool),
}

impl Transport {
    /// Short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::TTHeader => "ttheader",
            Transport::TTHeaderUnframed => "ttheader-unframed",
            Transport::Framed => "framed",
            Transport::Buffered => "buffered",
            Transport::Mesh(true) => "mesh-framed",
            Transport::Mesh(false) => "mesh-buffered",
        }
    }

    /// True for the TTHeader transports (which carry headers and may be pipelined).
    pub fn is_ttheader(self) -> bool {
        matches!(self, Transport::TTHeader | Transport::TTHeaderUnframed)
    }
}

/// A ping-pong request with its envelope separated out.
#[derive(Debug, Clone)]
pub struct Request {
    /// Who sent it.
    pub peer: SocketAddr,
    /// Service name: TTHeader/mesh `isn`, else the listener's default service, else empty.
    pub service: String,
    /// Method name from the envelope.
    pub method: String,
    /// The caller's seq id (the server puts it back on the reply).
    pub seq_id: i32,
    /// [`MessageType::Call`] or [`MessageType::Oneway`].
    pub msg_type: MessageType,
    /// Thrift or Kitex protobuf, from the payload magic.
    pub codec: Codec,
    /// How the request was framed.
    pub transport: Transport,
    /// Every TTHeader field as received (empty for Framed/Buffered; the mesh header's pairs
    /// for mesh requests).
    pub header: Header,
    /// Deadline from TTHeader int key 12 (RPC timeout, ms), counted from when the request was
    /// read.
    pub deadline: Option<Instant>,
    /// The args struct (thrift) or request message (Kitex protobuf): the bytes after the
    /// envelope. A slice of the read buffer.
    pub args: Bytes,
    /// The name of the listener the request arrived on.
    pub listener: &'static str,
}

/// What the handler answers.
#[derive(Debug, Clone)]
pub struct Response {
    /// The body.
    pub body: ResponseBody,
    /// String key/values for the TTHeader reply (backward metainfo, `biz-*`). Ignored for
    /// Framed and Buffered, which have nowhere to put them.
    pub str_kvs: StrKvs,
}

/// The body of a [`Response`].
#[derive(Debug, Clone)]
pub enum ResponseBody {
    /// A REPLY: the result struct (thrift) or response message (Kitex protobuf), verbatim.
    Reply(Bytes),
    /// An EXCEPTION whose body is already encoded for the request's codec (a thrift
    /// `TApplicationException` struct or a Kitex-pb `ErrorProto`), passed through verbatim.
    RawException(Bytes),
    /// An EXCEPTION the server renders in the request's codec.
    Error(ApplicationException),
}

impl Response {
    /// A REPLY with `body` and no header keys.
    pub fn reply(body: Bytes) -> Self {
        Self {
            body: ResponseBody::Reply(body),
            str_kvs: StrKvs::new(),
        }
    }

    /// An EXCEPTION rendered from `ex`.
    pub fn error(ex: ApplicationException) -> Self {
        Self {
            body: ResponseBody::Error(ex),
            str_kvs: StrKvs::new(),
        }
    }
}

/// Handles ping-pong requests: the counterpart of Kitex's `DefaultHandler`.
///
/// The server calls it once per request, possibly concurrently for TTHeader requests of one
/// connection. For oneway requests the response is dropped.
pub trait DefaultHandler: Send + Sync + 'static {
    /// Handles one request.
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send;
}

/// A shared handler handles requests as the handler it points to (so a layer can wrap an
/// `Arc` of a handler that is also used elsewhere).
impl<H: DefaultHandler> DefaultHandler for std::sync::Arc<H> {
    fn handle(&self, req: Request) -> impl Future<Output = Response> + Send {
        (**self).handle(req)
    }
}
