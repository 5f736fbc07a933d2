//! Kitex TTHeader frames, decoded and encoded without losing anything that was on the wire.
//!
//! Spec: kitex-wire.md section 1 (and the CloudWeGo TTHeader reference it cites). A frame is
//!
//! ```text
//! u32 LENGTH        bytes after this field
//! u16 MAGIC 0x1000
//! u16 FLAGS         0x0001 mux request, 0x0002 TTStream
//! i32 SEQ ID        request seq id, or TTStream stream id
//! u16 HEADER SIZE   header section length in 4-byte words, counted from PROTOCOL ID
//! u8  PROTOCOL ID, u8 N transforms, N transform ids
//! info blocks       0x01 string KVs, 0x10 int KVs, 0x11 ACL token, 0x00 padding
//! payload           optionally u32 inner length + message ("TTHeaderFramed")
//! ```
//!
//! The decoder keeps flags, seq id, protocol id, transforms, every string and integer key/value
//! (repeated keys: the last value wins, as in Kitex), the ACL token, and whether the payload
//! carried the inner framed length, so [`encode`] can mirror it. The payload is a [`Bytes`]
//! slice of the input buffer: no copy.
//!
//! Everything here is sans-IO: [`Decoder::decode`] takes a `BytesMut` that the caller fills,
//! returns `Ok(None)` until a frame is whole, and checks every length before using it.
#![forbid(unsafe_code)]

pub mod keys;
mod kv;

use bytes::{BufMut, Bytes, BytesMut};

pub use keys::{flags, info_id, int_key, metainfo, protocol_id, str_key};
pub use kv::{IntKvs, StrKvs};

/// Most room a decoder reserves ahead of the bytes that have arrived. A frame's length is the
/// peer's claim: memory is committed as its bytes come (the buffer grows by doubling), not
/// when the claim is read.
pub const RESERVE_STEP: usize = 64 * 1024;

/// `u16` MAGIC at offset 4; detection masks the u32 at [4..8] with `0xFFFF_0000`.
pub const MAGIC: u16 = 0x1000;
/// Bytes before the header section: LENGTH, MAGIC, FLAGS, SEQ ID, HEADER SIZE.
pub const PREFIX_LEN: usize = 14;
/// Default limit on a whole frame (LENGTH + 4): 16 MiB. Kitex sets none; a proxy must.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16 * 1024 * 1024;
/// Default limit on the header section when decoding: what Kitex >= v0.15.4 accepts (4 * 65535).
pub const DEFAULT_MAX_HEADER_SIZE: usize = 4 * 65535;
/// Largest header section this crate encodes: Kitex v0.15.1 - v0.15.3 reject anything larger
/// (their `words * 4` wraps in u16; kitex-wire.md 1.4).
pub const MAX_ENCODED_HEADER_SIZE: usize = 65532;

/// Limits applied while decoding. Both are checked before any allocation or wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest whole frame (LENGTH + 4) accepted.
    pub max_frame_size: usize,
    /// Largest header section (HEADER SIZE * 4) accepted.
    pub max_header_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_size: DEFAULT_MAX_FRAME_SIZE,
            max_header_size: DEFAULT_MAX_HEADER_SIZE,
        }
    }
}

/// Why bytes are not a TTHeader frame this decoder accepts. Each variant is final: more bytes
/// will not fix it, and the connection it came from should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// MAGIC at offset 4 is not 0x1000.
    #[error("bad magic {0:#06x}: not a TTHeader frame")]
    BadMagic(u16),
    /// LENGTH + 4 is larger than the configured limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Frame size the wire claims.
        len: u64,
        /// Configured limit.
        max: usize,
    },
    /// LENGTH is too small to hold the fixed prefix and the header section.
    #[error("frame LENGTH {0} is too short for a TTHeader")]
    FrameTooShort(u32),
    /// HEADER SIZE * 4 is below the 2 bytes that protocol id and transform count need.
    #[error("header size {0} bytes is too small")]
    HeaderTooSmall(usize),
    /// HEADER SIZE * 4 is above the configured limit.
    #[error("header size {len} bytes exceeds the limit of {max}")]
    HeaderTooLarge {
        /// Header section size the wire claims.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The header section would end past the end of the frame.
    #[error("header section of {header} bytes does not fit in a frame of {frame} bytes")]
    HeaderOutOfFrame {
        /// Header section size.
        header: usize,
        /// Whole frame size.
        frame: usize,
    },
    /// A protocol id Kitex refuses (0x01, 0x02, 0x05.., except 0x10 and 0x11).
    #[error("unsupported protocol id {0:#04x}")]
    UnsupportedProtocol(u8),
    /// The transform id list runs past the header section.
    #[error("transform list runs past the header section")]
    TransformsOverrun,
    /// An info block id Kitex does not know (it does not skip unknown blocks either).
    #[error("unknown info id {0:#04x}")]
    UnknownInfoId(u8),
    /// An info block runs past the header section.
    #[error("info block {0:#04x} runs past the header section")]
    InfoBlockOverrun(u8),
    /// The inner framed length disagrees with the TTHeader payload size.
    #[error("inner framed length {inner} does not match the payload size {payload}")]
    InnerLengthMismatch {
        /// The inner u32 length.
        inner: u32,
        /// TTHeader payload size minus the 4 length bytes.
        payload: usize,
    },
    /// Encoding: a key or value longer than a u16 length can say.
    #[error("string of {0} bytes is longer than 65535")]
    StringTooLong(usize),
    /// Encoding: more than 65535 entries in one block.
    #[error("{0} entries do not fit in one info block")]
    TooManyEntries(usize),
    /// Encoding: the header section would exceed [`MAX_ENCODED_HEADER_SIZE`].
    #[error("encoded header section of {0} bytes exceeds {MAX_ENCODED_HEADER_SIZE}")]
    EncodedHeaderTooLarge(usize),
    /// Encoding: the frame would not fit in a u32 LENGTH.
    #[error("payload of {0} bytes is too large for a TTHeader frame")]
    PayloadTooLarge(usize),
}

/// The header part of a frame: everything except the payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Header {
    /// FLAGS bit field ([`flags`]).
    pub flags: u16,
    /// Request seq id, or TTStream stream id.
    pub seq_id: i32,
    /// Protocol id ([`protocol_id`]).
    pub protocol_id: u8,
    /// Transform ids, kept as sent (Kitex ignores them and never sends any).
    pub transforms: Vec<u8>,
    /// ACL token (info block 0x11), if any.
    pub acl_token: Option<Bytes>,
    /// String key/values (info block 0x01).
    pub str_kvs: StrKvs,
    /// Integer key/values (info block 0x10).
    pub int_kvs: IntKvs,
}

impl Header {
    /// A header with the given seq id and flags, protocol id 0 and no info.
    pub fn new(seq_id: i32, flags: u16) -> Self {
        Self {
            seq_id,
            flags,
            ..Self::default()
        }
    }

    /// True if the TTStream flag is set.
    pub fn is_streaming(&self) -> bool {
        self.flags & flags::STREAMING != 0
    }

    /// Size of the header section this header encodes to, padding included.
    pub fn encoded_section_len(&self) -> usize {
        let mut n = 2 + self.transforms.len();
        if let Some(t) = &self.acl_token {
            n += 3 + t.len();
        }
        if !self.str_kvs.is_empty() {
            n += 3 + self
                .str_kvs
                .iter()
                .map(|(k, v)| 4 + k.len() + v.len())
                .sum::<usize>();
        }
        if !self.int_kvs.is_empty() {
            n += 3 + self.int_kvs.iter().map(|(_, v)| 4 + v.len()).sum::<usize>();
        }
        n.div_ceil(4) * 4
    }
}

/// A whole TTHeader frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Everything before the payload.
    pub header: Header,
    /// True if the payload carried an inner u32 length ("TTHeaderFramed"); the encoder writes it
    /// back, so a reply mirrors its request.
    pub inner_framed: bool,
    /// The message: after the inner length when `inner_framed`. A slice of the input, no copy.
    pub payload: Bytes,
}

/// True if `buf` (at least 8 bytes) starts like a TTHeader frame: u32 at [4..8] & 0xFFFF0000 ==
/// 0x10000000. Flags are ignored, as in Kitex's `IsTTHeader`.
pub fn is_ttheader(buf: &[u8]) -> bool {
    buf.len() >= 8 && buf[4] == 0x10 && buf[5] == 0x00
}

/// A TTHeader decoder with limits.
#[derive(Debug, Clone, Copy, Default)]
pub struct Decoder {
    limits: Limits,
}

impl Decoder {
    /// A decoder with the given limits.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Size of the frame at the start of `buf`, once its first 8 bytes are there.
    ///
    /// Checks magic and the frame-size limit first, so an oversized frame is refused before any
    /// of it is buffered.
    pub fn frame_len(&self, buf: &[u8]) -> Result<Option<usize>, Error> {
        if buf.len() < 8 {
            return Ok(None);
        }
        let magic = u16::from_be_bytes([buf[4], buf[5]]);
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        let length = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let total = u64::from(length) + 4;
        if total > self.limits.max_frame_size as u64 {
            return Err(Error::FrameTooLarge {
                len: total,
                max: self.limits.max_frame_size,
            });
        }
        if (length as usize) < PREFIX_LEN - 4 + 4 {
            // LENGTH must cover FLAGS..HEADER SIZE and the smallest (4-byte) header section.
            return Err(Error::FrameTooShort(length));
        }
        Ok(Some(total as usize))
    }

    /// Takes one whole frame off the front of `buf`, or returns `Ok(None)` if it is not all there
    /// yet (reserving room for more of it, at most [`RESERVE_STEP`] beyond what is buffered).
    ///
    /// On error the offending frame has been taken off `buf` when its length was known: the
    /// stream cannot be resynchronised after a malformed frame, so the caller closes it.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let Some(len) = self.frame_len(buf)? else {
            return Ok(None);
        };
        if buf.len() < len {
            // Room for what is missing, but never more than a step ahead of what has arrived:
            // a peer's length claim alone must not make us allocate the whole frame.
            buf.reserve((len - buf.len()).min(RESERVE_STEP));
            return Ok(None);
        }
        let frame = buf.split_to(len).freeze();
        self.parse(&frame).map(Some)
    }

    /// Decodes one frame that is exactly `frame` (no bytes before or after).
    pub fn decode_frame(&self, frame: &Bytes) -> Result<Frame, Error> {
        match self.frame_len(frame)? {
            Some(len) if len == frame.len() => {}
            Some(len) => {
                return Err(Error::HeaderOutOfFrame {
                    header: len,
                    frame: frame.len(),
                })
            }
            None => return Err(Error::FrameTooShort(frame.len() as u32)),
        }
        self.parse(frame)
    }

    /// Parses a frame whose length is already known to be `buf.len()` (>= 18 bytes, checked by
    /// [`Self::frame_len`]). Keys, values and payload are slices of `buf`.
    fn parse(&self, buf: &Bytes) -> Result<Frame, Error> {
        let flags = u16::from_be_bytes([buf[6], buf[7]]);
        let seq_id = i32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let header_len = usize::from(u16::from_be_bytes([buf[12], buf[13]])) * 4;
        if header_len < 2 {
            return Err(Error::HeaderTooSmall(header_len));
        }
        if header_len > self.limits.max_header_size {
            return Err(Error::HeaderTooLarge {
                len: header_len,
                max: self.limits.max_header_size,
            });
        }
        let header_end = PREFIX_LEN + header_len;
        if header_end > buf.len() {
            return Err(Error::HeaderOutOfFrame {
                header: header_len,
                frame: buf.len(),
            });
        }
        let section = &buf[PREFIX_LEN..header_end];
        let protocol_id = section[0];
        if !protocol_id::is_supported(protocol_id) {
            return Err(Error::UnsupportedProtocol(protocol_id));
        }
        let n_transforms = usize::from(section[1]);
        if 2 + n_transforms > section.len() {
            return Err(Error::TransformsOverrun);
        }
        let mut header = Header {
            flags,
            seq_id,
            protocol_id,
            transforms: section[2..2 + n_transforms].to_vec(),
            acl_token: None,
            str_kvs: StrKvs::new(),
            int_kvs: IntKvs::new(),
        };
        let slice = |(a, b): Range| buf.slice(PREFIX_LEN + a..PREFIX_LEN + b);
        let mut pos = 2 + n_transforms;
        while pos < section.len() {
            let id = section[pos];
            pos += 1;
            match id {
                info_id::PADDING => {}
                info_id::KEY_VALUE => {
                    let count = read_u16(section, pos, id)?;
                    pos += 2;
                    // Each pair needs at least 4 bytes: bound the reservation by what is left.
                    header
                        .str_kvs
                        .reserve(usize::from(count).min((section.len() - pos) / 4));
                    for _ in 0..count {
                        let k = read_str(section, &mut pos, id)?;
                        let v = read_str(section, &mut pos, id)?;
                        header.str_kvs.insert(slice(k), slice(v));
                    }
                }
                info_id::INT_KEY_VALUE => {
                    let count = read_u16(section, pos, id)?;
                    pos += 2;
                    header
                        .int_kvs
                        .reserve(usize::from(count).min((section.len() - pos) / 4));
                    for _ in 0..count {
                        let key = read_u16(section, pos, id)?;
                        pos += 2;
                        let v = read_str(section, &mut pos, id)?;
                        header.int_kvs.insert(key, slice(v));
                    }
                }
                info_id::ACL_TOKEN => {
                    let t = read_str(section, &mut pos, id)?;
                    header.acl_token = Some(slice(t));
                }
                other => return Err(Error::UnknownInfoId(other)),
            }
        }
        // Inner framing (kitex-wire.md 1.5, 2.8): ping-pong payloads only. TTStream payloads are
        // bare structs, never framed.
        let payload = &buf[header_end..];
        let mut payload_start = header_end;
        let mut inner_framed = false;
        if flags & flags::STREAMING == 0
            && !matches!(
                protocol_id,
                protocol_id::THRIFT_STRUCT | protocol_id::PROTOBUF_STRUCT
            )
            && payload.len() >= 8
            && !is_message_magic(&payload[0..4])
            && is_message_magic(&payload[4..8])
        {
            let inner = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]);
            // Kitex trusts the inner length; a proxy checks that it agrees with LENGTH.
            if inner as usize != payload.len() - 4 {
                return Err(Error::InnerLengthMismatch {
                    inner,
                    payload: payload.len() - 4,
                });
            }
            inner_framed = true;
            payload_start += 4;
        }
        Ok(Frame {
            header,
            inner_framed,
            payload: buf.slice(payload_start..),
        })
    }
}

/// The thrift (0x8001) or Kitex protobuf (0x9001) version word.
fn is_message_magic(b: &[u8]) -> bool {
    (b[0] == 0x80 || b[0] == 0x90) && b[1] == 0x01
}

type Range = (usize, usize);

fn read_u16(section: &[u8], pos: usize, id: u8) -> Result<u16, Error> {
    section
        .get(pos..pos + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or(Error::InfoBlockOverrun(id))
}

/// Reads a u16-length string; returns its range within `section`.
fn read_str(section: &[u8], pos: &mut usize, id: u8) -> Result<Range, Error> {
    let n = usize::from(read_u16(section, *pos, id)?);
    let start = *pos + 2;
    let end = start + n;
    if end > section.len() {
        return Err(Error::InfoBlockOverrun(id));
    }
    *pos = end;
    Ok((start, end))
}

/// Writes everything of a frame except the payload bytes: prefix, header section, padding, and
/// the inner length when `inner_framed`. The caller writes (or vectors) `payload_len` bytes next.
pub fn encode_head<B: BufMut>(
    header: &Header,
    inner_framed: bool,
    payload_len: usize,
    dst: &mut B,
) -> Result<(), Error> {
    write_head(
        &Parts {
            flags: header.flags,
            seq_id: header.seq_id,
            protocol_id: header.protocol_id,
            transforms: &header.transforms,
            acl_token: header.acl_token.as_deref(),
            str_kvs: header.str_kvs.iter(),
            int_kvs: header.int_kvs.iter(),
        },
        inner_framed,
        payload_len,
        dst,
    )
}

/// A header to encode, borrowed: for frames built on the fly (a reply, a stream's Data frame),
/// encoding this costs no allocation, where filling a [`Header`] allocates its key/value lists.
/// No transforms and no ACL token.
#[derive(Debug, Clone, Copy)]
pub struct HeadRef<'a> {
    /// FLAGS.
    pub flags: u16,
    /// SEQ ID.
    pub seq_id: i32,
    /// PROTOCOL ID.
    pub protocol_id: u8,
    /// String key/values, in order.
    pub str_kvs: &'a StrKvs,
    /// Integer key/values, in order.
    pub int_kvs: &'a [(u16, &'a [u8])],
}

/// [`encode_head`] for a borrowed header: the same bytes as a [`Header`] with these fields.
pub fn encode_head_ref<B: BufMut>(
    header: &HeadRef<'_>,
    inner_framed: bool,
    payload_len: usize,
    dst: &mut B,
) -> Result<(), Error> {
    write_head(
        &Parts {
            flags: header.flags,
            seq_id: header.seq_id,
            protocol_id: header.protocol_id,
            transforms: &[],
            acl_token: None,
            str_kvs: header.str_kvs.iter(),
            int_kvs: header.int_kvs.iter().map(|&(k, v)| (k, v)),
        },
        inner_framed,
        payload_len,
        dst,
    )
}

/// What a head is written from, whoever owns it.
struct Parts<'a, S, I> {
    flags: u16,
    seq_id: i32,
    protocol_id: u8,
    transforms: &'a [u8],
    acl_token: Option<&'a [u8]>,
    str_kvs: S,
    int_kvs: I,
}

fn write_head<'a, S, I, B>(
    h: &Parts<'a, S, I>,
    inner_framed: bool,
    payload_len: usize,
    dst: &mut B,
) -> Result<(), Error>
where
    S: ExactSizeIterator<Item = (&'a [u8], &'a [u8])> + Clone,
    I: ExactSizeIterator<Item = (u16, &'a [u8])> + Clone,
    B: BufMut,
{
    // Same arithmetic as `Header::encoded_section_len`.
    let mut section = 2 + h.transforms.len();
    if let Some(t) = h.acl_token {
        section += 3 + t.len();
    }
    if h.str_kvs.len() > 0 {
        section += 3 + h
            .str_kvs
            .clone()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum::<usize>();
    }
    if h.int_kvs.len() > 0 {
        section += 3 + h.int_kvs.clone().map(|(_, v)| 4 + v.len()).sum::<usize>();
    }
    let section = section.div_ceil(4) * 4;
    if section > MAX_ENCODED_HEADER_SIZE {
        return Err(Error::EncodedHeaderTooLarge(section));
    }
    if h.transforms.len() > usize::from(u8::MAX) {
        return Err(Error::TooManyEntries(h.transforms.len()));
    }
    check_block(h.str_kvs.len())?;
    check_block(h.int_kvs.len())?;
    let inner = if inner_framed { 4 } else { 0 };
    let length = (PREFIX_LEN - 4) + section + inner + payload_len;
    if length > 0x3FFF_FFFF || (inner_framed && payload_len > u32::MAX as usize) {
        return Err(Error::PayloadTooLarge(payload_len));
    }
    for (k, v) in h.str_kvs.clone() {
        check_str(k)?;
        check_str(v)?;
    }
    for (_, v) in h.int_kvs.clone() {
        check_str(v)?;
    }
    if let Some(t) = h.acl_token {
        check_str(t)?;
    }

    // Build the head in one contiguous buffer and hand it to `dst` with a single `put_slice`:
    // one capacity check instead of one per field (most heads fit on the stack).
    let head_len = PREFIX_LEN + section + inner;
    let mut stack = [0u8; 512];
    let mut heap = Vec::new();
    let out: &mut [u8] = if head_len <= stack.len() {
        &mut stack[..head_len]
    } else {
        heap.resize(head_len, 0);
        &mut heap[..]
    };
    let mut w = Cursor { buf: out, pos: 0 };
    w.u32(length as u32);
    w.u16(MAGIC);
    w.u16(h.flags);
    w.u32(h.seq_id as u32);
    w.u16((section / 4) as u16);
    w.u8(h.protocol_id);
    w.u8(h.transforms.len() as u8);
    w.bytes(h.transforms);
    // Kitex's block order: ACL token, string KVs, integer KVs.
    if let Some(t) = h.acl_token {
        w.u8(info_id::ACL_TOKEN);
        w.str(t);
    }
    if h.str_kvs.len() > 0 {
        w.u8(info_id::KEY_VALUE);
        w.u16(h.str_kvs.len() as u16);
        for (k, v) in h.str_kvs.clone() {
            w.str(k);
            w.str(v);
        }
    }
    if h.int_kvs.len() > 0 {
        w.u8(info_id::INT_KEY_VALUE);
        w.u16(h.int_kvs.len() as u16);
        for (k, v) in h.int_kvs.clone() {
            w.u16(k);
            w.str(v);
        }
    }
    // Padding: the buffer is zeroed, so skipping to the end of the section writes it.
    w.pos = PREFIX_LEN + section;
    if inner_framed {
        w.u32(payload_len as u32);
    }
    debug_assert_eq!(w.pos, head_len);
    dst.put_slice(&w.buf[..head_len]);
    Ok(())
}

struct Cursor<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn bytes(&mut self, b: &[u8]) {
        self.buf[self.pos..self.pos + b.len()].copy_from_slice(b);
        self.pos += b.len();
    }
    fn u8(&mut self, v: u8) {
        self.buf[self.pos] = v;
        self.pos += 1;
    }
    fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }
    fn str(&mut self, s: &[u8]) {
        self.u16(s.len() as u16);
        self.bytes(s);
    }
}

/// Encodes a whole frame into `dst`.
pub fn encode(
    header: &Header,
    inner_framed: bool,
    payload: &[u8],
    dst: &mut BytesMut,
) -> Result<(), Error> {
    dst.reserve(PREFIX_LEN + header.encoded_section_len() + 4 + payload.len());
    encode_head(header, inner_framed, payload.len(), dst)?;
    dst.put_slice(payload);
    Ok(())
}

impl Frame {
    /// Encodes this frame into `dst`, mirroring its inner framing.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), Error> {
        encode(&self.header, self.inner_framed, &self.payload, dst)
    }
}

fn check_block(n: usize) -> Result<(), Error> {
    if n > usize::from(u16::MAX) {
        return Err(Error::TooManyEntries(n));
    }
    Ok(())
}

fn check_str(s: &[u8]) -> Result<(), Error> {
    if s.len() > usize::from(u16::MAX) {
        return Err(Error::StringTooLong(s.len()));
    }
    Ok(())
}
