//! TTStream (TTHeader Streaming): frames and the per-stream state machine, sans-IO.
//!
//! Spec: kitex-wire.md section 4 (4.1 frames, 4.2 frame types, 4.3 lifecycle, 4.4 errors,
//! 4.5 multiplexing, 4.6 metadata) and 7.8; test vectors in 8.7.
//!
//! Each TTStream frame is one TTHeader message with FLAGS 0x0002, SEQ ID = stream id, protocol
//! id 0x10, integer key 27 = frame type and integer key 9 = method; many streams interleave on
//! one connection, with no flow control, keepalive or connection-level frames.
//!
//! # API
//!
//! * [`FrameDecoder::decode`] takes whole frames off a caller-filled `BytesMut` as
//!   [`StreamFrame`]s; [`StreamFrame::from_ttheader`] does the same for an already decoded
//!   [`sluice_ttheader::Frame`]. [`StreamFrame::encode`] writes one back.
//! * Constructors for the frames a proxy writes: [`StreamFrame::client_header`],
//!   [`StreamFrame::server_header`], [`StreamFrame::data`], [`StreamFrame::trailer`],
//!   [`StreamFrame::trailer_with_biz_status`], [`StreamFrame::trailer_with_exception`],
//!   [`StreamFrame::rst`].
//! * Payload and key helpers: [`StreamFrame::exception`] / [`parse_exception`] and
//!   [`exception_payload`] for the thrift EXCEPTION payload of Trailer and Rst frames,
//!   [`StreamFrame::biz_status`] for `biz-*` trailer keys, [`extend_cancel_path`] for `ttscp`.
//! * [`Stream`] follows one stream's lifecycle: feed it every frame sent
//!   ([`Stream::send`]) and received ([`Stream::recv`]); it answers with a [`Step`] (opened,
//!   half-closed, ended, or a late frame to ignore) or a [`StateError`].
//!
//! ```
//! use bytes::BytesMut;
//! use sluice_ttstream::{End, FrameDecoder, FrameType, Side, Step, Stream, StreamFrame};
//!
//! // A client opens stream 7 and half-closes; the proxy's server end reads both frames.
//! let mut wire = BytesMut::new();
//! let no_metadata: [(&'static str, &'static str); 0] = [];
//! StreamFrame::client_header(7, "EchoBidi", "EchoService", no_metadata).encode(&mut wire)?;
//! StreamFrame::trailer(7, "EchoBidi").encode(&mut wire)?;
//!
//! let decoder = FrameDecoder::default();
//! let mut stream = Stream::new(Side::Server, 7)?;
//! let open = decoder.decode(&mut wire)?.expect("a whole frame");
//! assert_eq!((open.kind, open.service()), (FrameType::Header, Some("EchoService")));
//! assert_eq!(stream.recv(open.kind)?, Step::Opened);
//! let close = decoder.decode(&mut wire)?.expect("a whole frame");
//! assert_eq!(stream.recv(close.kind)?, Step::HalfClosed);
//!
//! // The server end owes its Header before it may end the stream.
//! assert!(stream.server_header_due());
//! assert_eq!(stream.send(FrameType::Header)?, Step::Accepted);
//! assert_eq!(stream.send(FrameType::Trailer)?, Step::Ended(End::Finished));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Keeping the table of streams per connection is the caller's job; the rules it needs (id 0
//! reserved, negative ids legal, frames for unknown ids dropped) are in the [`Stream`] docs.
#![forbid(unsafe_code)]

mod error;
mod frame;
mod state;

pub use error::Error;
pub use frame::{
    encode_data_head, exception_payload, extend_cancel_path, parse_exception, BizStatus,
    FrameDecoder, FrameType, StreamFrame,
};
pub use state::{End, Side, StateError, Step, Stream};
