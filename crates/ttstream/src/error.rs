use bytes::Bytes;
use sluice_thrift::MessageType;

/// Why bytes are not a TTStream frame, or why a frame's payload or keys cannot be read.
///
/// Kitex treats every frame-level failure as an "illegal frame" and closes the connection
/// (kitex-wire.md 4.1), so a caller normally does the same; the variants exist so that logs and
/// tests can say exactly what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The TTHeader layer refused the bytes (or could not encode the frame).
    #[error("ttheader: {0}")]
    Header(#[from] sluice_ttheader::Error),
    /// FLAGS lacks the streaming bit 0x0002: a ping-pong TTHeader message, not a stream frame.
    #[error("FLAGS {flags:#06x} lack the streaming bit 0x0002")]
    NotStreaming {
        /// FLAGS as received.
        flags: u16,
    },
    /// Integer key 27 (FrameType) is absent.
    #[error("frame type (int key 27) is missing")]
    MissingFrameType,
    /// Integer key 27 is not one of `"1"` to `"5"`.
    #[error("unknown frame type {0:?} (int key 27)")]
    UnknownFrameType(Bytes),
    /// Integer key 9 (ToMethod) is absent; Kitex writes it on every frame.
    #[error("method (int key 9) is missing")]
    MissingMethod,
    /// A Trailer or Rst payload is a thrift message of another type than EXCEPTION.
    #[error("payload is a thrift {} message, not EXCEPTION", .0.as_str())]
    NotAnException(MessageType),
    /// A Trailer or Rst payload is not a readable thrift EXCEPTION message.
    #[error("exception payload: {0}")]
    BadExceptionPayload(#[source] sluice_thrift::Error),
    /// `biz-status` is present but not a decimal i32.
    #[error("biz-status {0:?} is not a decimal i32")]
    BadBizStatus(Bytes),
}
