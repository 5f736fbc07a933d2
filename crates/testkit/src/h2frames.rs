//! A minimal HTTP/2 frame splitter for tests: enough to pull DATA and HEADERS payloads out of the
//! captures and the spec vectors. It is deliberately separate from any production HTTP/2 code, so
//! that the tests do not check the library against itself. Shared by the tests of
//! `sluice-grpc` (captures, spec vectors) and `sluice-http2` (raw HTTP/2 peers).

/// The client connection preface (RFC 9113 3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Frame type DATA.
pub const TYPE_DATA: u8 = 0x0;
/// Frame type HEADERS.
pub const TYPE_HEADERS: u8 = 0x1;
/// Flag END_STREAM (DATA, HEADERS).
pub const FLAG_END_STREAM: u8 = 0x1;
/// Flag PADDED (DATA, HEADERS).
pub const FLAG_PADDED: u8 = 0x8;
/// Flag PRIORITY (HEADERS).
pub const FLAG_PRIORITY: u8 = 0x20;

/// One HTTP/2 frame: the 9-byte header fields and the raw payload.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Offset of the frame header in the byte stream it came from.
    pub offset: usize,
    /// Frame type.
    pub ty: u8,
    /// Flags.
    pub flags: u8,
    /// Stream id (reserved bit cleared).
    pub stream: u32,
    /// The whole payload, padding included.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// The payload without padding (and, for HEADERS, without the priority fields): the DATA
    /// bytes or the header block fragment.
    pub fn body(&self) -> &'a [u8] {
        let mut p = self.payload;
        let mut pad = 0;
        if self.flags & FLAG_PADDED != 0 && matches!(self.ty, TYPE_DATA | TYPE_HEADERS) {
            pad = usize::from(p[0]);
            p = &p[1..];
        }
        if self.ty == TYPE_HEADERS && self.flags & FLAG_PRIORITY != 0 {
            p = &p[5..];
        }
        &p[..p.len() - pad]
    }

    /// The END_STREAM flag is set.
    pub fn end_stream(&self) -> bool {
        self.flags & FLAG_END_STREAM != 0
    }
}

/// Splits a whole connection direction into frames, skipping the client preface first when
/// `client` is set. Panics unless the bytes are exactly a sequence of whole frames.
pub fn split_frames(bytes: &[u8], client: bool) -> Vec<Frame<'_>> {
    let mut pos = 0;
    if client {
        assert!(
            bytes.starts_with(PREFACE),
            "client bytes start with the preface"
        );
        pos = PREFACE.len();
    }
    let mut out = Vec::new();
    while pos < bytes.len() {
        let head = &bytes[pos..pos + 9];
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let payload = &bytes[pos + 9..pos + 9 + len];
        out.push(Frame {
            offset: pos,
            ty: head[3],
            flags: head[4],
            stream,
            payload,
        });
        pos += 9 + len;
    }
    assert_eq!(
        pos,
        bytes.len(),
        "frames end exactly at the end of the bytes"
    );
    out
}
