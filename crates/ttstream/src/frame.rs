//! TTStream frames: one TTHeader message each (kitex-wire.md 4.1, 4.2).
//!
//! A frame is a TTHeader frame with FLAGS bit 0x0002, SEQ ID = stream id, protocol id 0x10, and
//! two integer keys that Kitex writes on every frame: 27 (frame type, `"1"` to `"5"`) and 9
//! (method). The payload is a bare thrift struct (Data), an optional thrift EXCEPTION message
//! (Trailer, Rst), or normally nothing (Header, Meta).
//!
//! [`StreamFrame`] keeps the whole TTHeader [`Header`] as received, so string keys, other
//! integer keys, extra flag bits and transforms survive a decode/encode round trip, and the key
//! order is kept: a decoded frame re-encodes to the bytes it came from.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use sluice_thrift::{envelope, ApplicationException, MessageType};
use sluice_ttheader::{self as ttheader, flags, int_key, protocol_id, str_key, Header, Limits};

use crate::Error;

/// The five frame types, carried as ASCII decimal in integer key 27.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum FrameType {
    /// Server to client only, opaque; Kitex servers never send it.
    Meta = 1,
    /// Client: opens the stream (`isn` + metadata). Server: response headers, sent lazily.
    Header = 2,
    /// One message: a bare thrift struct.
    Data = 3,
    /// Client: half-close. Server: end of stream, maybe with an exception or `biz-*` keys.
    Trailer = 4,
    /// Abort from either side, maybe with an exception and a cancel path.
    Rst = 5,
}

impl FrameType {
    /// Every frame type, in wire-value order.
    pub const ALL: [FrameType; 5] = [
        FrameType::Meta,
        FrameType::Header,
        FrameType::Data,
        FrameType::Trailer,
        FrameType::Rst,
    ];

    /// The type for the value of integer key 27. Only the exact strings `"1"` to `"5"` count:
    /// Kitex writes nothing else, and accepting variants such as `"03"` would let two peers
    /// disagree about a frame.
    pub fn from_wire(value: &[u8]) -> Option<Self> {
        match value {
            b"1" => Some(Self::Meta),
            b"2" => Some(Self::Header),
            b"3" => Some(Self::Data),
            b"4" => Some(Self::Trailer),
            b"5" => Some(Self::Rst),
            _ => None,
        }
    }

    /// The value written in integer key 27.
    pub fn wire_value(self) -> &'static [u8] {
        match self {
            Self::Meta => b"1",
            Self::Header => b"2",
            Self::Data => b"3",
            Self::Trailer => b"4",
            Self::Rst => b"5",
        }
    }

    /// Upper-case name, as Kitex and the capture decoder spell it (`"HEADER"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Meta => "META",
            Self::Header => "HEADER",
            Self::Data => "DATA",
            Self::Trailer => "TRAILER",
            Self::Rst => "RST",
        }
    }

    /// True for the types whose payload, when present, is a thrift EXCEPTION message.
    pub fn carries_exception(self) -> bool {
        matches!(self, Self::Trailer | Self::Rst)
    }
}

impl std::fmt::Display for FrameType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A business error carried by a server Trailer in `biz-status` / `biz-message` / `biz-extra`
/// (kitex-wire.md 4.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BizStatus {
    /// Non-zero status code (`biz-status`, decimal i32).
    pub code: i32,
    /// `biz-message`; empty when absent.
    pub message: Bytes,
    /// `biz-extra`, a JSON object of string to string; Kitex writes it only when set.
    pub extra: Option<Bytes>,
}

impl BizStatus {
    /// A status with a code and message and no extra.
    pub fn new(code: i32, message: impl Into<Bytes>) -> Self {
        Self {
            code,
            message: message.into(),
            extra: None,
        }
    }

    /// Adds `biz-extra` (a JSON object; an invalid one makes a Kitex client fail the call).
    pub fn with_extra(mut self, extra: impl Into<Bytes>) -> Self {
        self.extra = Some(extra.into());
        self
    }
}

/// One decoded (or to-be-encoded) TTStream frame.
///
/// `kind`, `stream_id` and `method` are the authoritative copies of FrameType (key 27), SEQ ID
/// and ToMethod (key 9). `header` holds everything else as received, including its own copies
/// of those three; [`StreamFrame::encode`] overwrites the copies from the typed fields but keeps
/// their position, so changing `stream_id` to forward a frame on another connection is a field
/// assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamFrame {
    /// Frame type (integer key 27).
    pub kind: FrameType,
    /// Stream id (TTHeader SEQ ID). Chosen by the client; 0 is reserved, negatives are legal.
    pub stream_id: i32,
    /// Method name (integer key 9). Bytes, because Go strings need not be UTF-8.
    pub method: Bytes,
    /// The TTHeader header as received: flags, protocol id, transforms, every key/value.
    pub header: Header,
    /// Payload, a slice of the decoded buffer (no copy).
    pub payload: Bytes,
}

impl StreamFrame {
    /// A frame with no string keys and no payload: flags 0x0002, protocol id 0x10, keys 9 and
    /// 27 in ascending order (the order of the spec's vectors; Kitex's own order is random).
    pub fn new(kind: FrameType, stream_id: i32, method: impl Into<Bytes>) -> Self {
        let method = method.into();
        let mut header = Header::new(stream_id, flags::STREAMING);
        header.protocol_id = protocol_id::THRIFT_STRUCT;
        header.int_kvs.insert(int_key::TO_METHOD, method.clone());
        header
            .int_kvs
            .insert(int_key::FRAME_TYPE, Bytes::from_static(kind.wire_value()));
        Self {
            kind,
            stream_id,
            method,
            header,
            payload: Bytes::new(),
        }
    }

    /// Adds (or replaces) a string key/value.
    pub fn with_str_kv(mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) -> Self {
        self.header.str_kvs.insert(key, value);
        self
    }

    /// Sets the payload.
    pub fn with_payload(mut self, payload: impl Into<Bytes>) -> Self {
        self.payload = payload.into();
        self
    }

    /// The client Header that opens a stream: `isn` = `service` (left out when empty, as Kitex
    /// does), then `metadata` in the given order (`RPC_PERSIST_*`, `RPC_TRANSIT_*`, user keys).
    pub fn client_header<K, V>(
        stream_id: i32,
        method: impl Into<Bytes>,
        service: &str,
        metadata: impl IntoIterator<Item = (K, V)>,
    ) -> Self
    where
        K: Into<Bytes>,
        V: Into<Bytes>,
    {
        let mut f = Self::new(FrameType::Header, stream_id, method);
        if !service.is_empty() {
            f.header.str_kvs.insert(
                str_key::IDL_SERVICE_NAME,
                Bytes::copy_from_slice(service.as_bytes()),
            );
        }
        for (k, v) in metadata {
            f.header.str_kvs.insert(k, v);
        }
        f
    }

    /// A server Header with no user headers (add them with [`Self::with_str_kv`]).
    pub fn server_header(stream_id: i32, method: impl Into<Bytes>) -> Self {
        Self::new(FrameType::Header, stream_id, method)
    }

    /// A Data frame carrying one bare thrift struct.
    pub fn data(stream_id: i32, method: impl Into<Bytes>, payload: impl Into<Bytes>) -> Self {
        Self::new(FrameType::Data, stream_id, method).with_payload(payload)
    }

    /// A Trailer with no keys and no payload: the client's half-close, or a successful end.
    pub fn trailer(stream_id: i32, method: impl Into<Bytes>) -> Self {
        Self::new(FrameType::Trailer, stream_id, method)
    }

    /// A server Trailer for a business error: `biz-status`, `biz-message`, and `biz-extra`
    /// when set; no payload.
    pub fn trailer_with_biz_status(
        stream_id: i32,
        method: impl Into<Bytes>,
        status: &BizStatus,
    ) -> Self {
        let mut f = Self::trailer(stream_id, method);
        f.header.str_kvs.insert(
            str_key::BIZ_STATUS,
            Bytes::from(status.code.to_string().into_bytes()),
        );
        f.header
            .str_kvs
            .insert(str_key::BIZ_MESSAGE, status.message.clone());
        if let Some(extra) = &status.extra {
            f.header.str_kvs.insert(str_key::BIZ_EXTRA, extra.clone());
        }
        f
    }

    /// A server Trailer whose payload is `exception` as a thrift EXCEPTION message.
    pub fn trailer_with_exception(
        stream_id: i32,
        method: impl Into<Bytes>,
        exception: &ApplicationException,
    ) -> Self {
        let mut f = Self::trailer(stream_id, method);
        f.payload = exception_payload(&f.method_lossy(), stream_id, exception);
        f
    }

    /// An Rst frame, with the exception as payload when given and `ttscp` when `cancel_path` is
    /// non-empty (Kitex leaves the key out rather than sending an empty path).
    pub fn rst(
        stream_id: i32,
        method: impl Into<Bytes>,
        exception: Option<&ApplicationException>,
        cancel_path: Option<&str>,
    ) -> Self {
        let mut f = Self::new(FrameType::Rst, stream_id, method);
        if let Some(path) = cancel_path.filter(|p| !p.is_empty()) {
            f.header.str_kvs.insert(
                str_key::TTSTREAM_CANCEL_PATH,
                Bytes::copy_from_slice(path.as_bytes()),
            );
        }
        if let Some(ex) = exception {
            f.payload = exception_payload(&f.method_lossy(), stream_id, ex);
        }
        f
    }

    /// Reads a TTHeader frame as a stream frame.
    ///
    /// Requires the streaming flag, integer key 27 with a value `"1"` to `"5"`, and integer key
    /// 9; takes the stream id from SEQ ID. The protocol id is not checked, as in Kitex.
    pub fn from_ttheader(frame: ttheader::Frame) -> Result<Self, Error> {
        // With the streaming flag set the TTHeader decoder never splits off an inner length, so
        // `frame.payload` is the whole payload and `inner_framed` carries no information.
        let ttheader::Frame {
            header, payload, ..
        } = frame;
        if !header.is_streaming() {
            return Err(Error::NotStreaming {
                flags: header.flags,
            });
        }
        let kind = match header.int_kvs.get(int_key::FRAME_TYPE) {
            None => return Err(Error::MissingFrameType),
            Some(v) => FrameType::from_wire(v).ok_or_else(|| Error::UnknownFrameType(v.clone()))?,
        };
        let method = header
            .int_kvs
            .get(int_key::TO_METHOD)
            .cloned()
            .ok_or(Error::MissingMethod)?;
        Ok(Self {
            kind,
            stream_id: header.seq_id,
            method,
            header,
            payload,
        })
    }

    /// The TTHeader frame this stream frame encodes to.
    pub fn into_ttheader(self) -> ttheader::Frame {
        let header = match self.wire_header() {
            Cow::Owned(h) => h,
            Cow::Borrowed(_) => self.header,
        };
        ttheader::Frame {
            header,
            inner_framed: false,
            payload: self.payload,
        }
    }

    /// Appends the encoded frame to `dst`: the header as held, with FLAGS bit 0x0002 set,
    /// SEQ ID = `stream_id`, and keys 27 and 9 taken from `kind` and `method`. The protocol id
    /// is written as held (0x10 from every constructor; a decoded frame keeps what its sender
    /// chose, so forwarding does not change it).
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), Error> {
        ttheader::encode(&self.wire_header(), false, &self.payload, dst)?;
        Ok(())
    }

    /// The encoded head (everything but the payload) and the payload `Bytes`, for a vectored
    /// write that never copies the payload.
    pub fn into_chunks(self) -> Result<[Bytes; 2], Error> {
        let t = self.into_ttheader();
        let mut head = BytesMut::with_capacity(64 + t.header.str_kvs.len() * 32);
        ttheader::encode_head(&t.header, false, t.payload.len(), &mut head)?;
        Ok([head.freeze(), t.payload])
    }

    /// Writes the encoded head (everything but the payload) into `dst`: the first
    /// [`head_len`](Self::head_len) bytes of what [`encode`](Self::encode) writes.
    pub fn encode_head<B: bytes::BufMut>(&self, dst: &mut B) -> Result<(), Error> {
        ttheader::encode_head(&self.wire_header(), false, self.payload.len(), dst)?;
        Ok(())
    }

    /// Size of the encoded head in bytes.
    pub fn head_len(&self) -> usize {
        self.encoded_len() - self.payload.len()
    }

    /// The encoded frame as one buffer.
    pub fn to_bytes(&self) -> Result<Bytes, Error> {
        let mut dst = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut dst)?;
        Ok(dst.freeze())
    }

    /// Size of the encoded frame in bytes.
    pub fn encoded_len(&self) -> usize {
        ttheader::PREFIX_LEN + self.wire_header().encoded_section_len() + self.payload.len()
    }

    /// The method as UTF-8, if it is.
    pub fn method_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.method).ok()
    }

    /// The IDL service name (`isn`), carried by the client's Header frame.
    pub fn service(&self) -> Option<&str> {
        self.header.str_kvs.get_str(str_key::IDL_SERVICE_NAME)
    }

    /// Moves the string keys out of the frame, in order (no copy), leaving none.
    pub fn take_str_kvs(&mut self) -> Vec<(Bytes, Bytes)> {
        std::mem::take(&mut self.header.str_kvs).into_vec()
    }

    /// The cancel path (`ttscp`) of an Rst frame.
    pub fn cancel_path(&self) -> Option<&str> {
        self.header.str_kvs.get_str(str_key::TTSTREAM_CANCEL_PATH)
    }

    /// The exception a Trailer or Rst carries.
    ///
    /// `Ok(None)` when the payload is empty, and for the other frame types, whose payloads are
    /// never exceptions. A non-empty Trailer/Rst payload must be a thrift EXCEPTION message.
    pub fn exception(&self) -> Result<Option<ApplicationException>, Error> {
        if !self.kind.carries_exception() || self.payload.is_empty() {
            return Ok(None);
        }
        parse_exception(&self.payload).map(Some)
    }

    /// The business error a Trailer carries in `biz-*` keys.
    ///
    /// `Ok(None)` for other frame types, and when `biz-status` is absent or 0 (Kitex: no
    /// business error).
    pub fn biz_status(&self) -> Result<Option<BizStatus>, Error> {
        if self.kind != FrameType::Trailer {
            return Ok(None);
        }
        let kvs = &self.header.str_kvs;
        let Some(raw) = kvs.get(str_key::BIZ_STATUS) else {
            return Ok(None);
        };
        let code = std::str::from_utf8(raw)
            .ok()
            .and_then(|s| s.parse::<i32>().ok())
            .ok_or_else(|| Error::BadBizStatus(raw.clone()))?;
        if code == 0 {
            return Ok(None);
        }
        Ok(Some(BizStatus {
            code,
            message: kvs.get(str_key::BIZ_MESSAGE).cloned().unwrap_or_default(),
            extra: kvs.get(str_key::BIZ_EXTRA).cloned(),
        }))
    }

    /// The method as text for building an exception envelope, which needs a string; a
    /// non-UTF-8 name cannot round-trip there anyway, so a lossy copy is the best available.
    fn method_lossy(&self) -> Cow<'_, str> {
        String::from_utf8_lossy(&self.method)
    }

    /// The header to put on the wire. Borrowed when it already agrees with the typed fields,
    /// which is every decoded frame that was not modified: encoding then allocates nothing.
    fn wire_header(&self) -> Cow<'_, Header> {
        let h = &self.header;
        let kind = self.kind.wire_value();
        let consistent = h.seq_id == self.stream_id
            && h.is_streaming()
            && h.int_kvs.get(int_key::FRAME_TYPE).map(|v| v.as_ref()) == Some(kind)
            && h.int_kvs.get(int_key::TO_METHOD) == Some(&self.method);
        if consistent {
            return Cow::Borrowed(h);
        }
        let mut h = h.clone();
        h.seq_id = self.stream_id;
        h.flags |= flags::STREAMING;
        // `insert` replaces in place, so keys already present keep their position.
        h.int_kvs.insert(int_key::TO_METHOD, self.method.clone());
        h.int_kvs
            .insert(int_key::FRAME_TYPE, Bytes::from_static(kind));
        Cow::Owned(h)
    }
}

/// Writes the head of a Data frame carrying `payload_len` bytes: the same bytes as the head
/// [`StreamFrame::data`]`(stream_id, method, ..)` encodes to, without building the frame (no
/// allocation). Forwarding a stream message costs one of these.
pub fn encode_data_head<B: bytes::BufMut>(
    stream_id: i32,
    method: &[u8],
    payload_len: usize,
    dst: &mut B,
) -> Result<(), Error> {
    let no_str_kvs = ttheader::StrKvs::new();
    let head = ttheader::HeadRef {
        flags: flags::STREAMING,
        seq_id: stream_id,
        protocol_id: protocol_id::THRIFT_STRUCT,
        str_kvs: &no_str_kvs,
        int_kvs: &[
            (int_key::TO_METHOD, method),
            (int_key::FRAME_TYPE, FrameType::Data.wire_value()),
        ],
    };
    ttheader::encode_head_ref(&head, false, payload_len, dst)?;
    Ok(())
}

impl TryFrom<ttheader::Frame> for StreamFrame {
    type Error = Error;

    fn try_from(frame: ttheader::Frame) -> Result<Self, Error> {
        Self::from_ttheader(frame)
    }
}

/// Incremental TTStream frame decoder over a caller-filled [`BytesMut`] (sans-IO).
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameDecoder {
    inner: ttheader::Decoder,
}

impl FrameDecoder {
    /// A decoder with the given TTHeader limits.
    pub fn new(limits: Limits) -> Self {
        Self {
            inner: ttheader::Decoder::new(limits),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.inner.limits()
    }

    /// Takes one whole frame off the front of `buf`, or returns `Ok(None)` until it is all
    /// there.
    ///
    /// Every error is final for the connection (Kitex closes it on an illegal frame). Errors
    /// visible in the first 8 bytes (bad magic, oversized frame, no streaming flag) leave `buf`
    /// untouched, and are reported before the frame is buffered. Errors in the header section
    /// or in keys 27/9 are found once the frame is whole; for the latter the bad frame has
    /// already been taken off `buf`, so a caller that prefers to skip it can go on.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<StreamFrame>, Error> {
        // Refuse a ping-pong frame on a stream connection before waiting for its body.
        if buf.len() >= 8 && ttheader::is_ttheader(buf) {
            let frame_flags = u16::from_be_bytes([buf[6], buf[7]]);
            if frame_flags & flags::STREAMING == 0 {
                // Size errors still come first, as in the TTHeader decoder. Both checks read
                // only these 8 bytes, so the error does not depend on how input was chunked.
                self.inner.frame_len(buf)?;
                return Err(Error::NotStreaming { flags: frame_flags });
            }
        }
        match self.inner.decode(buf)? {
            None => Ok(None),
            Some(frame) => StreamFrame::from_ttheader(frame).map(Some),
        }
    }
}

/// The payload of a Trailer or Rst that carries `exception`: a thrift EXCEPTION message named
/// after the stream's method, with seq id = stream id (kitex-wire.md 4.2).
pub fn exception_payload(method: &str, stream_id: i32, exception: &ApplicationException) -> Bytes {
    let mut dst = BytesMut::with_capacity(envelope::header_len(method) + exception.encoded_len());
    exception.encode_message(&mut dst, method, stream_id);
    dst.freeze()
}

/// Reads the exception of a Trailer or Rst payload. It must be a whole thrift EXCEPTION message
/// (type 3), as Kitex's decoder requires; the envelope's name and seq id are not checked
/// against the frame, since Kitex does not check them either.
pub fn parse_exception(payload: &[u8]) -> Result<ApplicationException, Error> {
    let hdr = envelope::decode_header(payload).map_err(Error::BadExceptionPayload)?;
    if hdr.msg_type != MessageType::Exception {
        return Err(Error::NotAnException(hdr.msg_type));
    }
    let (_, _, ex) =
        ApplicationException::decode_message(payload).map_err(Error::BadExceptionPayload)?;
    Ok(ex)
}

/// The `ttscp` value to send when cancelling a stream on behalf of `service`: the path received
/// from upstream with `service` appended (`"A"` gives `"A,B"`), or `None` when both are empty,
/// because Kitex leaves the key out rather than sending an empty path (kitex-wire.md 4.3).
pub fn extend_cancel_path(path: Option<&str>, service: &str) -> Option<String> {
    let path = path.unwrap_or("");
    match (path.is_empty(), service.is_empty()) {
        (true, true) => None,
        (true, false) => Some(service.to_owned()),
        (false, true) => Some(path.to_owned()),
        (false, false) => Some(format!("{path},{service}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_thrift::ExceptionKind;

    #[test]
    fn a_data_head_matches_the_data_frame_it_stands_for() {
        for (id, method, len) in [
            (1, &b"EchoBidi"[..], 0usize),
            (-7, b"m", 1024),
            (i32::MAX, b"a-rather-longer-method-name", 70_000),
        ] {
            let frame = StreamFrame::data(id, Bytes::copy_from_slice(method), vec![7u8; len]);
            let [want, _] = frame.into_chunks().unwrap();
            let mut got = BytesMut::new();
            encode_data_head(id, method, len, &mut got).unwrap();
            assert_eq!(got, want, "stream {id}");
        }
    }

    #[test]
    fn frame_type_wire_values_round_trip() {
        for (i, t) in FrameType::ALL.into_iter().enumerate() {
            assert_eq!(t as usize, i + 1);
            assert_eq!(FrameType::from_wire(t.wire_value()), Some(t));
            assert_eq!(t.to_string(), t.as_str());
        }
        for bad in [&b""[..], b"0", b"6", b"03", b"+3", b" 3", b"3 ", b"33"] {
            assert_eq!(FrameType::from_wire(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cancel_path_extends_and_stays_absent_when_empty() {
        assert_eq!(extend_cancel_path(None, ""), None);
        assert_eq!(extend_cancel_path(Some(""), ""), None);
        assert_eq!(extend_cancel_path(None, "A").as_deref(), Some("A"));
        assert_eq!(extend_cancel_path(Some("A"), "B").as_deref(), Some("A,B"));
        assert_eq!(
            extend_cancel_path(Some("A,B"), "C").as_deref(),
            Some("A,B,C")
        );
        assert_eq!(extend_cancel_path(Some("A"), "").as_deref(), Some("A"));
    }

    #[test]
    fn encode_fixes_stale_header_copies_in_place() {
        let mut f = StreamFrame::data(1, "EchoBidi", &b"\x00"[..]);
        f.stream_id = -7;
        f.kind = FrameType::Trailer;
        f.method = Bytes::from_static(b"Other");
        f.header.flags = 0x0001;
        let bytes = f.to_bytes().unwrap();
        assert_eq!(bytes.len(), f.encoded_len());
        let back = FrameDecoder::default()
            .decode(&mut BytesMut::from(&bytes[..]))
            .unwrap()
            .unwrap();
        assert_eq!(back.stream_id, -7);
        assert_eq!(back.kind, FrameType::Trailer);
        assert_eq!(back.method_str(), Some("Other"));
        assert_eq!(back.header.flags, 0x0003, "extra flag bits are kept");
        let keys: Vec<u16> = back.header.int_kvs.iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [int_key::TO_METHOD, int_key::FRAME_TYPE],
            "order kept"
        );
        assert_eq!(back.clone().into_ttheader().header, back.header);
    }

    #[test]
    fn exception_is_only_read_from_trailer_and_rst() {
        let ex = ApplicationException::new(ExceptionKind::INTERNAL_ERROR, "x");
        let payload = exception_payload("M", 3, &ex);
        let data = StreamFrame::data(3, "M", payload.clone());
        assert_eq!(data.exception(), Ok(None));
        let rst = StreamFrame::rst(3, "M", Some(&ex), Some(""));
        assert_eq!(rst.payload, payload);
        assert_eq!(rst.cancel_path(), None, "empty path is not written");
        assert_eq!(rst.exception(), Ok(Some(ex)));
        assert_eq!(StreamFrame::rst(3, "M", None, None).exception(), Ok(None));
    }

    #[test]
    fn biz_status_parsing() {
        let s = BizStatus::new(502, "bad").with_extra(r#"{"k":"v"}"#);
        let f = StreamFrame::trailer_with_biz_status(1, "M", &s);
        assert_eq!(f.biz_status(), Ok(Some(s)));
        let zero = StreamFrame::trailer(1, "M").with_str_kv(str_key::BIZ_STATUS, "0");
        assert_eq!(zero.biz_status(), Ok(None));
        let bad = StreamFrame::trailer(1, "M").with_str_kv(str_key::BIZ_STATUS, "x1");
        assert_eq!(
            bad.biz_status(),
            Err(Error::BadBizStatus(Bytes::from_static(b"x1")))
        );
        let header = StreamFrame::server_header(1, "M").with_str_kv(str_key::BIZ_STATUS, "5");
        assert_eq!(
            header.biz_status(),
            Ok(None),
            "only trailers carry a status"
        );
        assert_eq!(StreamFrame::trailer(1, "M").biz_status(), Ok(None));
    }
}
