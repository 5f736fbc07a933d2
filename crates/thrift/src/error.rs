/// Why a thrift or Kitex-protobuf message could not be read.
///
/// `Incomplete` is the only variant that may resolve itself with more bytes; every other variant
/// means the bytes are not a message Kitex would accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The buffer ends before the message does; `needed` is a lower bound on the total length.
    #[error("incomplete message: at least {needed} bytes needed")]
    Incomplete {
        /// Lower bound on the number of bytes the message needs in total.
        needed: usize,
    },
    /// The first word is not `0x8001_00TT` (thrift) or `0x9001_00TT` (Kitex protobuf).
    #[error("bad message version word {0:#010x}: not a strict binary (0x8001) or Kitex protobuf (0x9001) message")]
    BadVersion(u32),
    /// A string, name, list, set or map length is negative.
    #[error("negative length {0}")]
    NegativeLength(i32),
    /// A length or count points past the limit the caller allows.
    #[error("length {len} exceeds the limit of {max} bytes")]
    TooLarge {
        /// What the wire claimed, in bytes.
        len: u64,
        /// The configured limit.
        max: u64,
    },
    /// Structs, lists, sets or maps nest deeper than the depth limit.
    #[error("nesting deeper than {0} levels")]
    DepthLimit(usize),
    /// A field or element type code that the binary protocol does not define.
    #[error("unknown thrift type code {0}")]
    UnknownType(u8),
    /// A method name that is not UTF-8.
    #[error("method name is not valid UTF-8")]
    InvalidName,
    /// A message type outside 1..=4.
    #[error("unknown message type {0}")]
    UnknownMessageType(u16),
    /// A struct or protobuf body that could not be read as the expected shape.
    #[error("malformed body: {0}")]
    Malformed(&'static str),
}
