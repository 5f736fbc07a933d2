//! gRPC length-prefixed messages: the framing inside a stream's DATA frames.
//!
//! kitex-wire.md 5.3: "Each gRPC message in DATA frames: `u8 compressed-flag` (0/1), `u32
//! length`, bytes." The length is big-endian. Message boundaries are independent of DATA frame
//! boundaries: one DATA frame may hold several messages, and one message may span several DATA
//! frames (HTTP/2 frames are at most 16 KiB by default, kitex-wire.md 7.10). The caller therefore
//! appends the payload of every DATA frame of one stream to one [`BytesMut`] and calls
//! [`MessageDecoder::decode`] until it returns `Ok(None)`; at END_STREAM it calls
//! [`MessageDecoder::finish`] to reject a message cut short.
//!
//! Kitex enforces no message size limit by default (kitex-wire.md 5.1, 7.10), so the bound here
//! is the proxy's own: [`DEFAULT_MAX_MESSAGE_SIZE`], configurable per decoder.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Size of the prefix in front of every message: 1 flag byte and a 4-byte length.
pub const PREFIX_LEN: usize = 5;

/// Default upper bound on the length of one message, in bytes: 4 MiB.
///
/// This is grpc-go's default receive limit (and so the limit of every grpc-go based peer that
/// does not raise it), which makes it the size real gRPC traffic is already shaped to. A proxy
/// buffers a whole message per stream before forwarding it, so the bound is also the memory one
/// stream can pin. Kitex itself has no default limit; peers that need more must be configured
/// with [`MessageDecoder::with_max_message_size`].
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 4 * 1024 * 1024;

/// Why a message could not be decoded or encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The declared (or, when encoding, the actual) length is above the limit.
    #[error("gRPC message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The length in bytes.
        len: u64,
        /// The limit in bytes.
        max: u64,
    },
    /// The first prefix byte is neither 0 (uncompressed) nor 1 (compressed).
    #[error("bad gRPC compressed flag {0:#04x}: must be 0 or 1")]
    BadCompressedFlag(u8),
    /// The stream ended inside a message: `buffered` bytes are left, but the prefix (when
    /// complete) or the prefix alone (when not) asks for `expected` bytes.
    #[error("stream ended inside a gRPC message: {buffered} of {expected} bytes received")]
    Truncated {
        /// Bytes left over in the buffer.
        buffered: usize,
        /// Bytes the unfinished message needs, prefix included (at least [`PREFIX_LEN`]).
        expected: usize,
    },
}

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The compressed flag: the bytes are compressed with the stream's `grpc-encoding`.
    ///
    /// The decoder does not decompress. A proxy forwards compressed messages as they are, along
    /// with `grpc-encoding`; whether a set flag without a `grpc-encoding` header is an error is
    /// for the stream layer to decide, since only it sees the headers.
    pub compressed: bool,
    /// The message bytes, without the prefix. Shares memory with the buffer it came from.
    pub data: Bytes,
}

/// Splits a stream's DATA bytes into gRPC messages.
///
/// The decoder keeps no state between calls apart from its limit: everything it needs is in the
/// buffer, and a message is taken out of the buffer only once it is complete. So an error leaves
/// the buffer as it was, and calling `decode` again returns the same error.
///
/// # Buffer management
///
/// While a message is incomplete, `decode` reserves room for more of it, but only after the
/// declared length passed the limit, and never more than what has arrived or 64 KiB beyond
/// what is buffered (whichever is more): a peer that claims a long message and sends little of
/// it does not make the decoder allocate the length it claimed.
#[derive(Debug, Clone)]
pub struct MessageDecoder {
    max_message_size: usize,
}

impl Default for MessageDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl MessageDecoder {
    /// A decoder with the limit [`DEFAULT_MAX_MESSAGE_SIZE`].
    pub fn new() -> Self {
        Self::with_max_message_size(DEFAULT_MAX_MESSAGE_SIZE)
    }

    /// A decoder that rejects messages longer than `max` bytes (prefix not counted).
    pub fn with_max_message_size(max: usize) -> Self {
        Self {
            max_message_size: max,
        }
    }

    /// The largest message length this decoder accepts, in bytes.
    pub fn max_message_size(&self) -> usize {
        self.max_message_size
    }

    /// Takes the next complete message off the front of `buf`.
    ///
    /// Returns `Ok(None)` when `buf` does not hold a whole message yet; the bytes stay in `buf`.
    /// The flag byte is checked as soon as it arrives and the length as soon as the prefix is
    /// complete, so a bad prefix fails before any of its body is waited for.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Message>, MessageError> {
        let Some((compressed, len)) = self.prefix(buf)? else {
            buf.reserve(PREFIX_LEN.saturating_sub(buf.len()));
            return Ok(None);
        };
        let total = PREFIX_LEN + len;
        if buf.len() < total {
            // Grown with what arrives, not with what the prefix claims.
            buf.reserve(sluice_h2wire::frame::reserve_step(
                buf.len(),
                total - buf.len(),
            ));
            return Ok(None);
        }
        buf.advance(PREFIX_LEN);
        let data = buf.split_to(len).freeze();
        Ok(Some(Message { compressed, data }))
    }

    /// Like [`Self::decode`], but takes the message straight out of `src` without copying it:
    /// for bytes that arrive whole, as an HTTP/2 DATA frame usually carries whole messages.
    /// Returns `Ok(None)` (leaving `src` as it was) when `src` does not hold a whole message.
    #[inline]
    pub fn decode_bytes(&self, src: &mut Bytes) -> Result<Option<Message>, MessageError> {
        let Some((compressed, len)) = self.prefix(src)? else {
            return Ok(None);
        };
        if src.len() < PREFIX_LEN + len {
            return Ok(None);
        }
        src.advance(PREFIX_LEN);
        let data = src.split_to(len);
        Ok(Some(Message { compressed, data }))
    }

    /// The compressed flag and the checked length, once the 5-byte prefix is there. The flag
    /// byte is checked as soon as it arrives, so a bad prefix fails before the rest is awaited.
    fn prefix(&self, buf: &[u8]) -> Result<Option<(bool, usize)>, MessageError> {
        let Some(&flag) = buf.first() else {
            return Ok(None);
        };
        // PROTOCOL-HTTP2: "Compressed-Flag → 0 / 1 ; encoded as 1 byte unsigned integer".
        let compressed = match flag {
            0 => false,
            1 => true,
            other => return Err(MessageError::BadCompressedFlag(other)),
        };
        let Some(prefix) = buf.get(..PREFIX_LEN) else {
            return Ok(None);
        };
        let declared = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
        let len = self.check_len(declared)?;
        // `len <= max_message_size`, so `PREFIX_LEN + len` cannot overflow unless the limit is
        // within 5 of `usize::MAX`; refuse that rather than wrap.
        if len > usize::MAX - PREFIX_LEN {
            return Err(MessageError::TooLarge {
                len: u64::from(declared),
                max: self.max_message_size as u64,
            });
        }
        Ok(Some((compressed, len)))
    }

    /// Checks what is left in `buf` when the stream has ended (END_STREAM or trailers).
    ///
    /// Call it after `decode` returned `Ok(None)`. Any byte left is the start of a message that
    /// never completed, which gRPC treats as a protocol error. (Called without draining `decode`
    /// first, it also reports a complete message that is still buffered, with `buffered >=
    /// expected`.)
    pub fn finish(&self, buf: &BytesMut) -> Result<(), MessageError> {
        if buf.is_empty() {
            return Ok(());
        }
        let expected = match buf.get(..PREFIX_LEN) {
            // Saturating: a length over the limit would have failed in `decode` already; this
            // only keeps the report sensible when `finish` is called without it.
            Some(p) => {
                let len = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
                usize::try_from(len)
                    .unwrap_or(usize::MAX)
                    .saturating_add(PREFIX_LEN)
            }
            None => PREFIX_LEN,
        };
        Err(MessageError::Truncated {
            buffered: buf.len(),
            expected,
        })
    }

    fn check_len(&self, declared: u32) -> Result<usize, MessageError> {
        let too_large = || MessageError::TooLarge {
            len: u64::from(declared),
            max: self.max_message_size as u64,
        };
        let len = usize::try_from(declared).map_err(|_| too_large())?;
        if len > self.max_message_size {
            return Err(too_large());
        }
        Ok(len)
    }
}

/// The 5-byte prefix for a message of `len` bytes, for writers that send the prefix and the
/// message as separate buffers (a vectored write or a chain of `Bytes`).
///
/// Fails with [`MessageError::TooLarge`] when `len` does not fit the 32-bit length field.
#[inline]
pub fn encode_prefix(len: usize, compressed: bool) -> Result<[u8; PREFIX_LEN], MessageError> {
    let wire_len = u32::try_from(len).map_err(|_| MessageError::TooLarge {
        len: len as u64,
        max: u64::from(u32::MAX),
    })?;
    let [a, b, c, d] = wire_len.to_be_bytes();
    Ok([u8::from(compressed), a, b, c, d])
}

/// Writes `message` with its prefix into `dst`.
///
/// Fails, writing nothing, when the message does not fit the 32-bit length field.
pub fn encode<B: BufMut + ?Sized>(
    message: &[u8],
    compressed: bool,
    dst: &mut B,
) -> Result<(), MessageError> {
    let prefix = encode_prefix(message.len(), compressed)?;
    dst.put_slice(&prefix);
    dst.put_slice(message);
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn decode_bytes_takes_whole_messages_without_copying() {
        let mut wire = vec![0u8, 0, 0, 0, 3, b'a', b'b', b'c', 1, 0, 0, 0, 2, b'x'];
        wire.push(b'y');
        wire.extend_from_slice(&[0, 0, 0, 0, 9, b'p']); // a partial third message
        let mut src = Bytes::from(wire);
        let base = src.as_ptr() as usize;
        let dec = MessageDecoder::new();
        let m = dec.decode_bytes(&mut src).unwrap().unwrap();
        assert_eq!((m.compressed, &m.data[..]), (false, &b"abc"[..]));
        assert_eq!(
            m.data.as_ptr() as usize,
            base + 5,
            "a slice of the source, not a copy"
        );
        let m = dec.decode_bytes(&mut src).unwrap().unwrap();
        assert_eq!((m.compressed, &m.data[..]), (true, &b"xy"[..]));
        let rest = src.clone();
        assert_eq!(dec.decode_bytes(&mut src).unwrap(), None);
        assert_eq!(src, rest, "a partial message is left where it was");
        let mut bad = Bytes::from_static(&[7, 0, 0, 0, 0]);
        assert_eq!(
            dec.decode_bytes(&mut bad),
            Err(MessageError::BadCompressedFlag(7))
        );
        let mut big = Bytes::from_static(&[0, 0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(
            dec.decode_bytes(&mut big),
            Err(MessageError::TooLarge { .. })
        ));
    }

    use super::*;

    fn decode_all(dec: &MessageDecoder, buf: &mut BytesMut) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(m) = dec.decode(buf).unwrap() {
            out.push(m);
        }
        out
    }

    #[test]
    fn empty_buffer_needs_more() {
        let mut buf = BytesMut::new();
        assert_eq!(MessageDecoder::new().decode(&mut buf), Ok(None));
        assert_eq!(MessageDecoder::new().finish(&buf), Ok(()));
    }

    #[test]
    fn spec_8_8_protobuf_echo() {
        // kitex-wire.md 8.8: DATA payload `00 | 00 00 00 07 | 0A 05 68 65 6C 6C 6F`.
        let mut buf = BytesMut::from(&[0, 0, 0, 0, 7, 0x0a, 5, b'h', b'e', b'l', b'l', b'o'][..]);
        let dec = MessageDecoder::new();
        let m = dec.decode(&mut buf).unwrap().unwrap();
        assert!(!m.compressed);
        assert_eq!(&m.data[..], b"\x0a\x05hello");
        assert!(buf.is_empty());
        assert_eq!(dec.finish(&buf), Ok(()));
    }

    #[test]
    fn zero_length_message() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 0][..]);
        let m = MessageDecoder::new().decode(&mut buf).unwrap().unwrap();
        assert!(m.data.is_empty());
        assert!(buf.is_empty());
    }

    #[test]
    fn compressed_flag_one_is_reported() {
        let mut buf = BytesMut::from(&[1u8, 0, 0, 0, 2, 0xab, 0xcd][..]);
        let m = MessageDecoder::new().decode(&mut buf).unwrap().unwrap();
        assert!(m.compressed);
        assert_eq!(&m.data[..], &[0xab, 0xcd]);
    }

    #[test]
    fn bad_flag_fails_on_first_byte() {
        let mut buf = BytesMut::from(&[2u8][..]);
        assert_eq!(
            MessageDecoder::new().decode(&mut buf),
            Err(MessageError::BadCompressedFlag(2))
        );
        // The buffer is untouched and the error repeats.
        assert_eq!(buf.len(), 1);
        assert_eq!(
            MessageDecoder::new().decode(&mut buf),
            Err(MessageError::BadCompressedFlag(2))
        );
    }

    #[test]
    fn too_large_fails_before_the_body_arrives() {
        let dec = MessageDecoder::with_max_message_size(16);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 17][..]);
        let cap = buf.capacity();
        assert_eq!(
            dec.decode(&mut buf),
            Err(MessageError::TooLarge { len: 17, max: 16 })
        );
        assert_eq!(
            buf.capacity(),
            cap,
            "nothing reserved for a rejected message"
        );

        let mut at_limit = BytesMut::from(&[0u8, 0, 0, 0, 16][..]);
        assert_eq!(dec.decode(&mut at_limit), Ok(None));
        assert!(at_limit.capacity() >= PREFIX_LEN + 16);
    }

    #[test]
    fn max_u32_length_is_rejected_by_default() {
        let mut buf = BytesMut::from(&[0u8, 0xff, 0xff, 0xff, 0xff][..]);
        assert_eq!(
            MessageDecoder::new().decode(&mut buf),
            Err(MessageError::TooLarge {
                len: u64::from(u32::MAX),
                max: DEFAULT_MAX_MESSAGE_SIZE as u64
            })
        );
    }

    #[test]
    fn a_claimed_length_is_reserved_as_bytes_arrive() {
        let dec = MessageDecoder::with_max_message_size(64 * 1024 * 1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0, 0x01, 0, 0, 0]); // 16 MiB announced
        buf.extend_from_slice(b"few");
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert!(
            buf.capacity() <= 8 + 64 * 1024,
            "capacity {} for 8 bytes received",
            buf.capacity()
        );
    }

    #[test]
    fn reserves_what_the_message_still_needs() {
        let dec = MessageDecoder::new();
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&[0, 0, 0, 4, 0]); // 1024-byte message announced
        assert_eq!(dec.decode(&mut buf), Ok(None));
        assert!(buf.capacity() >= PREFIX_LEN + 1024);
        let mut partial = BytesMut::from(&[0u8, 0][..]);
        assert_eq!(dec.decode(&mut partial), Ok(None));
        assert!(partial.capacity() >= PREFIX_LEN);
    }

    #[test]
    fn several_messages_in_one_buffer() {
        let mut buf = BytesMut::new();
        encode(b"one", false, &mut buf).unwrap();
        encode(b"", false, &mut buf).unwrap();
        encode(b"three", true, &mut buf).unwrap();
        encode(b"fo", false, &mut buf).unwrap();
        buf.truncate(buf.len() - 1); // last message cut short
        let dec = MessageDecoder::new();
        let msgs = decode_all(&dec, &mut buf);
        let got: Vec<(bool, &[u8])> = msgs.iter().map(|m| (m.compressed, &m.data[..])).collect();
        assert_eq!(
            got,
            vec![
                (false, &b"one"[..]),
                (false, &b""[..]),
                (true, &b"three"[..])
            ]
        );
        assert_eq!(
            dec.finish(&buf),
            Err(MessageError::Truncated {
                buffered: 6,
                expected: 7
            })
        );
    }

    #[test]
    fn finish_reports_a_partial_prefix() {
        let buf = BytesMut::from(&[0u8, 0, 0][..]);
        assert_eq!(
            MessageDecoder::new().finish(&buf),
            Err(MessageError::Truncated {
                buffered: 3,
                expected: PREFIX_LEN
            })
        );
    }

    #[test]
    fn decoded_data_shares_the_buffer() {
        let mut buf = BytesMut::with_capacity(64);
        encode(b"zero-copy", false, &mut buf).unwrap();
        let base = buf.as_ptr() as usize;
        let m = MessageDecoder::new().decode(&mut buf).unwrap().unwrap();
        assert_eq!(m.data.as_ptr() as usize, base + PREFIX_LEN);
    }

    #[test]
    fn prefix_encoding() {
        assert_eq!(encode_prefix(7, false), Ok([0, 0, 0, 0, 7]));
        assert_eq!(encode_prefix(0x11, false), Ok([0, 0, 0, 0, 0x11]));
        assert_eq!(
            encode_prefix(0x0102_0304, true),
            Ok([1, 0x01, 0x02, 0x03, 0x04])
        );
        assert_eq!(
            encode_prefix(u32::MAX as usize, false),
            Ok([0, 0xff, 0xff, 0xff, 0xff])
        );
    }

    #[cfg(target_pointer_width = "64")]
    #[test]
    fn prefix_rejects_lengths_over_u32() {
        let len = u32::MAX as usize + 1;
        assert_eq!(
            encode_prefix(len, false),
            Err(MessageError::TooLarge {
                len: len as u64,
                max: u64::from(u32::MAX)
            })
        );
    }

    #[test]
    fn encode_matches_spec_vector() {
        // kitex-wire.md 8.8, thrift variant: `00 | 00 00 00 11 | 0C 00 01 ...`.
        let args = [
            0x0c, 0x00, 0x01, 0x0b, 0x00, 0x01, 0x00, 0x00, 0x00, 0x05, b'h', b'e', b'l', b'l',
            b'o', 0x00, 0x00,
        ];
        let mut out = Vec::new();
        encode(&args, false, &mut out).unwrap();
        assert_eq!(&out[..5], &[0, 0, 0, 0, 0x11]);
        assert_eq!(&out[5..], &args);
    }
}
