//! Header and trailer names used by gRPC and by Kitex's gRPC transport.
//!
//! All names are lower case, as HTTP/2 requires (RFC 9113 8.2.1). Wire reference: kitex-wire.md
//! 5.2 (request headers) and 5.4 (responses and trailers).

/// Request and response `content-type`; see [`crate::content_type`].
pub const CONTENT_TYPE: &str = "content-type";

/// Request deadline, `<digits><unit>`; see [`crate::timeout`].
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// Name of the compressor used for messages with the compressed flag set.
pub const GRPC_ENCODING: &str = "grpc-encoding";

/// Compressors the sender accepts for the messages it receives.
pub const GRPC_ACCEPT_ENCODING: &str = "grpc-accept-encoding";

/// Retry attempt counter that grpc-go and Kitex send on retried calls.
pub const GRPC_PREVIOUS_RPC_ATTEMPTS: &str = "grpc-previous-rpc-attempts";

/// Trailer: the decimal status code; see [`crate::status::Code`].
pub const GRPC_STATUS: &str = "grpc-status";

/// Trailer: the percent-encoded status message; see [`crate::status::percent_encode`].
///
/// Kitex always sends it, empty on success (kitex-wire.md 7.9).
pub const GRPC_MESSAGE: &str = "grpc-message";

/// Trailer: a serialized `google.rpc.Status`, base64 without padding (a `-bin` header).
pub const GRPC_STATUS_DETAILS_BIN: &str = "grpc-status-details-bin";

/// Kitex trailer: the business status code of a `BizStatusError` (decimal), sent with
/// `grpc-status` 13 (kitex-wire.md 5.4).
pub const BIZ_STATUS: &str = "biz-status";

/// Kitex trailer: the extra fields of a `BizStatusError`, as a JSON object.
pub const BIZ_EXTRA: &str = "biz-extra";

/// Kitex request metadata: the destination service name.
pub const DESTINATION_SERVICE: &str = "destination-service";

/// Kitex request metadata: the destination method name.
pub const DESTINATION_METHOD: &str = "destination-method";

/// Kitex request metadata: the caller's service name (may be empty).
pub const SOURCE_SERVICE: &str = "source-service";

/// Kitex request metadata: the caller's method name (may be empty).
pub const SOURCE_METHOD: &str = "source-method";

/// Prefix of Kitex transient metainfo headers (`KX_REQ_ID` travels as `rpc-transit-kx-req-id`).
pub const RPC_TRANSIT_PREFIX: &str = "rpc-transit-";

/// Prefix of Kitex persistent metainfo headers.
pub const RPC_PERSIST_PREFIX: &str = "rpc-persist-";
