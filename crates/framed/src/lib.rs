//! Framed and Buffered thrift transports, and the decode-only mesh header (sans-IO).
//!
//! * **Framed** (kitex-wire.md 2.1): `u32 length` + a strict binary thrift message or a Kitex
//!   protobuf message. [`FramedCodec`].
//! * **Buffered** (2.2): the bare strict binary thrift message; its end is found only by walking
//!   the struct, with Kitex's nesting limit. [`BufferedCodec`].
//! * **Mesh header** (1.10): `FF AF`, u16 byte length, string key/values, then a Framed or
//!   Buffered message. Kitex only decodes it, never writes it. [`mesh`].
//!
//! Decoders take the caller's `BytesMut`, return `Ok(None)` until a message is whole, and refuse
//! a message whose declared size passes the configured limit before waiting for it. Returned
//! messages are `Bytes` split off the input: no copy.
#![forbid(unsafe_code)]

pub mod mesh;

use bytes::{BufMut, Bytes, BytesMut};

/// Default limit on one Framed frame (length field included) or one Buffered message: 16 MiB.
/// Kitex enforces none by default; a proxy must bound what it buffers per connection.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;

/// Smallest message: version word, name length, seq id (an empty name and no body).
const MIN_MESSAGE_LEN: usize = 12;

/// Which payload codec a message uses, from its version word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// Thrift strict binary (`0x8001`).
    Thrift,
    /// Kitex protobuf (`0x9001`).
    KitexProtobuf,
}

impl Codec {
    /// The codec of a message starting with `word` (its first two bytes), if any.
    pub fn from_magic(b0: u8, b1: u8) -> Option<Self> {
        match (b0, b1) {
            (0x80, 0x01) => Some(Self::Thrift),
            (0x90, 0x01) => Some(Self::KitexProtobuf),
            _ => None,
        }
    }
}

/// Why bytes are not a Framed or Buffered message. Final: the connection should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The declared size passes the configured limit.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size the wire claims (frame or message).
        len: u64,
        /// Configured limit.
        max: usize,
    },
    /// The Framed length is too small to hold a message envelope.
    #[error("frame length {0} is too short for a message")]
    TooShort(u32),
    /// The framed message does not start with a thrift (0x8001) or Kitex protobuf (0x9001)
    /// version word.
    #[error("framed message starts with {0:#010x}: not strict binary thrift or Kitex protobuf")]
    BadMagic(u32),
    /// The Buffered message is not a well-formed strict binary thrift message.
    #[error("buffered message: {0}")]
    Thrift(#[from] sluice_thrift::Error),
    /// The mesh header is malformed.
    #[error("mesh header: {0}")]
    Mesh(&'static str),
}

/// A message taken off a Framed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramedMessage {
    /// Payload codec from the version word.
    pub codec: Codec,
    /// The message, without the 4-byte length.
    pub message: Bytes,
}

/// Framed transport: `u32 length` + message.
#[derive(Debug, Clone, Copy)]
pub struct FramedCodec {
    max_frame_size: usize,
}

impl Default for FramedCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl FramedCodec {
    /// A codec accepting frames up to `max_frame_size` bytes, the length field included.
    pub fn new(max_frame_size: usize) -> Self {
        Self { max_frame_size }
    }

    /// The configured limit.
    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// Whole size (length field included) of the frame at the start of `buf`, once the first 8
    /// bytes are there; checks the limit and the message magic.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, Error> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let total = u64::from(len) + 4;
        if total > self.max_frame_size as u64 {
            return Err(Error::TooLarge {
                len: total,
                max: self.max_frame_size,
            });
        }
        if (len as usize) < MIN_MESSAGE_LEN {
            return Err(Error::TooShort(len));
        }
        if buf.len() < 8 {
            return Ok(None);
        }
        if Codec::from_magic(buf[4], buf[5]).is_none() {
            return Err(Error::BadMagic(u32::from_be_bytes([
                buf[4], buf[5], buf[6], buf[7],
            ])));
        }
        Ok(Some(total as usize))
    }

    /// Takes one frame off `buf`, or `Ok(None)` (reserving room) if it is not whole yet.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<FramedMessage>, Error> {
        let Some(total) = self.frame_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < total {
            // At most a step ahead of what has arrived: the length is only the peer's claim.
            buf.reserve((total - buf.len()).min(sluice_ttheader::RESERVE_STEP));
            return Ok(None);
        }
        let codec = Codec::from_magic(buf[4], buf[5]).unwrap_or(Codec::Thrift);
        let mut frame = buf.split_to(total);
        let _ = frame.split_to(4);
        Ok(Some(FramedMessage {
            codec,
            message: frame.freeze(),
        }))
    }

    /// Writes the 4-byte length for a message of `len` bytes (for vectored writes).
    pub fn encode_head<B: BufMut>(&self, len: usize, dst: &mut B) -> Result<(), Error> {
        if len as u64 + 4 > self.max_frame_size as u64 || len > u32::MAX as usize {
            return Err(Error::TooLarge {
                len: len as u64 + 4,
                max: self.max_frame_size,
            });
        }
        dst.put_u32(len as u32);
        Ok(())
    }

    /// Writes a whole frame.
    pub fn encode(&self, message: &[u8], dst: &mut BytesMut) -> Result<(), Error> {
        dst.reserve(4 + message.len());
        self.encode_head(message.len(), dst)?;
        dst.put_slice(message);
        Ok(())
    }
}

/// Buffered transport: the bare strict binary thrift message.
#[derive(Debug, Clone, Copy)]
pub struct BufferedCodec {
    max_message_size: usize,
    max_depth: usize,
}

impl Default for BufferedCodec {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl BufferedCodec {
    /// A codec accepting messages up to `max_message_size` bytes, with Kitex's nesting limit.
    pub fn new(max_message_size: usize) -> Self {
        Self {
            max_message_size,
            max_depth: sluice_thrift::DEFAULT_MAX_DEPTH,
        }
    }

    /// The configured size limit.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Length of the message at the start of `buf`, or `Ok(None)` if it is not whole yet.
    ///
    /// The struct walk restarts from the beginning on every call; callers feed reads of many
    /// bytes at a time, and a message is bounded by the limit, so the rescan cost is bounded too.
    pub fn message_len(&self, buf: &[u8]) -> Result<Option<usize>, Error> {
        if buf.is_empty() {
            return Ok(None);
        }
        match sluice_thrift::message_len(buf, self.max_depth, self.max_message_size) {
            Ok(n) => Ok(Some(n)),
            Err(sluice_thrift::Error::Incomplete { .. }) => Ok(None),
            Err(sluice_thrift::Error::TooLarge { len, .. }) => Err(Error::TooLarge {
                len,
                max: self.max_message_size,
            }),
            Err(e) => Err(e.into()),
        }
    }

    /// Takes one message off `buf`, or `Ok(None)` if it is not whole yet.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        match self.message_len(buf)? {
            Some(n) => Ok(Some(buf.split_to(n).freeze())),
            None => Ok(None),
        }
    }

    /// Writes a message (Buffered adds nothing around it).
    pub fn encode(&self, message: &[u8], dst: &mut BytesMut) -> Result<(), Error> {
        if message.len() > self.max_message_size {
            return Err(Error::TooLarge {
                len: message.len() as u64,
                max: self.max_message_size,
            });
        }
        dst.extend_from_slice(message);
        Ok(())
    }
}
