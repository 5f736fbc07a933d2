//! Pieces the server driver and the client share: the DATA payload type handed to h2, sending
//! it within the peer's flow-control window, reading messages with backpressure, and moving
//! headers between `http::HeaderMap` and [`Metadata`].

use std::future::poll_fn;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};
use h2::{RecvStream, SendStream};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use sluice_stream::{Event, Metadata, Reset};

use crate::headers::GRPC_ENCODING;
use crate::message::{encode_prefix, MessageDecoder, MessageError, PREFIX_LEN};
use crate::status::{Code, Status};

/// The payload of DATA frames: a gRPC message prefix followed by the message bytes.
///
/// Keeping the 5 prefix bytes inline and the message as the `Bytes` the user handed over sends
/// a message without copying it into a frame buffer, and without a separate tiny DATA frame for
/// the prefix (tiny frames count against h2's per-connection small-frame budget on the peer).
#[derive(Debug)]
pub(crate) struct Payload {
    prefix: [u8; PREFIX_LEN],
    /// Unsent part of `prefix`: `prefix[start..end]`.
    start: usize,
    end: usize,
    body: Bytes,
}

impl Payload {
    /// One message with its prefix.
    pub(crate) fn message(body: Bytes, compressed: bool) -> Result<Payload, MessageError> {
        Ok(Payload {
            prefix: encode_prefix(body.len(), compressed)?,
            start: 0,
            end: PREFIX_LEN,
            body,
        })
    }

    /// No bytes: only ever sent as the single END_STREAM frame of a half-close.
    pub(crate) fn empty() -> Payload {
        Payload {
            prefix: [0; PREFIX_LEN],
            start: 0,
            end: 0,
            body: Bytes::new(),
        }
    }

    /// Takes the first `n` bytes off the front (`n <= remaining`).
    fn split_to(&mut self, n: usize) -> Payload {
        let from_prefix = n.min(self.end - self.start);
        let head = Payload {
            prefix: self.prefix,
            start: self.start,
            end: self.start + from_prefix,
            body: self.body.split_to(n - from_prefix),
        };
        self.start += from_prefix;
        head
    }
}

impl Buf for Payload {
    fn remaining(&self) -> usize {
        (self.end - self.start) + self.body.len()
    }

    fn chunk(&self) -> &[u8] {
        if self.start < self.end {
            &self.prefix[self.start..self.end]
        } else {
            &self.body
        }
    }

    fn advance(&mut self, mut cnt: usize) {
        let from_prefix = cnt.min(self.end - self.start);
        self.start += from_prefix;
        cnt -= from_prefix;
        self.body.advance(cnt);
    }

    fn chunks_vectored<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        if self.start < self.end && n < dst.len() {
            dst[n] = IoSlice::new(&self.prefix[self.start..self.end]);
            n += 1;
        }
        if !self.body.is_empty() && n < dst.len() {
            dst[n] = IoSlice::new(&self.body);
            n += 1;
        }
        n
    }
}

/// Why a payload could not be sent.
#[derive(Debug)]
pub(crate) enum SendError {
    /// The stream can no longer send (reset by the peer, or already ended).
    Closed,
    /// h2 refused the frame or the connection failed.
    H2(h2::Error),
}

/// Sends `payload` as DATA, never more than the peer's window allows at a time, so a slow peer
/// holds this task up instead of letting h2 buffer without bound. The END_STREAM flag, if
/// asked for, goes on the last frame.
pub(crate) async fn send_payload(
    stream: &mut SendStream<Payload>,
    mut payload: Payload,
    end_of_stream: bool,
) -> Result<(), SendError> {
    if !payload.has_remaining() {
        // An empty frame is only ever the lone END_STREAM of a half-close; a peer on h2 >= 0.4.16
        // counts empty non-final DATA frames and closes the connection after 100 of them.
        debug_assert!(
            end_of_stream,
            "empty DATA frames are sent only with END_STREAM"
        );
        return stream.send_data(payload, true).map_err(SendError::H2);
    }
    while payload.has_remaining() {
        stream.reserve_capacity(payload.remaining());
        let mut capacity = stream.capacity();
        if capacity == 0 {
            capacity = match poll_fn(|cx| stream.poll_capacity(cx)).await {
                Some(Ok(n)) => n,
                Some(Err(e)) => return Err(SendError::H2(e)),
                None => return Err(SendError::Closed),
            };
        }
        let piece = payload.split_to(capacity.min(payload.remaining()));
        let last = !payload.has_remaining();
        stream
            .send_data(piece, end_of_stream && last)
            .map_err(SendError::H2)?;
    }
    Ok(())
}

/// How reading a stream's messages ended.
#[derive(Debug)]
pub(crate) enum ReadEnd {
    /// The peer ended its side (END_STREAM). For a client, its trailers are still to be read.
    Eof,
    /// The stream or the connection failed; the user has been told with [`Event::Reset`].
    Reset,
    /// The messages could not be decoded; the user has not been told yet.
    Bad(Status),
    /// The user dropped its receiving half.
    UserGone,
}

/// Reads DATA, decodes messages and hands them to `to_user` one by one.
///
/// The window is given back to the peer (`release_capacity`) only once the messages of a DATA
/// frame have been handed over: while the user is slow, the send below waits, h2 stops opening
/// the window, and the peer has to stop sending. What this stream can pin is therefore one
/// window, one partial message and the channel.
///
/// When `drain_if_gone` is set, messages keep being read and dropped after the user stopped
/// listening, so the peer is not blocked on a window nobody will open.
pub(crate) async fn read_messages(
    body: &mut RecvStream,
    to_user: &sluice_stream::PipeTx,
    decoder: &MessageDecoder,
    compression_allowed: bool,
    drain_if_gone: bool,
) -> ReadEnd {
    let mut buf = BytesMut::new();
    let mut user_gone = false;
    loop {
        let chunk = match body.data().await {
            Some(Ok(chunk)) => chunk,
            Some(Err(e)) => {
                if !user_gone {
                    let _ = to_user.send(Event::Reset(reset_from(&e))).await;
                }
                return ReadEnd::Reset;
            }
            None => {
                if let Err(e) = decoder.finish(&buf) {
                    return ReadEnd::Bad(Status::new(Code::INTERNAL, e.to_string()));
                }
                return if user_gone {
                    ReadEnd::UserGone
                } else {
                    ReadEnd::Eof
                };
            }
        };
        let len = chunk.len();
        let mut chunk = chunk;
        loop {
            // Whole messages come straight out of the DATA frame's bytes (no copy); only a
            // message split across frames is gathered in `buf`.
            let next = if buf.is_empty() {
                match decoder.decode_bytes(&mut chunk) {
                    Ok(None) if !chunk.is_empty() => {
                        buf.extend_from_slice(&chunk);
                        chunk.clear();
                        decoder.decode(&mut buf)
                    }
                    other => other,
                }
            } else {
                if !chunk.is_empty() {
                    buf.extend_from_slice(&chunk);
                    chunk.clear();
                }
                decoder.decode(&mut buf)
            };
            match next {
                Ok(Some(m)) => {
                    if m.compressed && !compression_allowed {
                        return ReadEnd::Bad(Status::new(
                            Code::INTERNAL,
                            "compressed flag set on a message but grpc-encoding is missing or identity",
                        ));
                    }
                    if !user_gone && to_user.send(Event::Message(m.data)).await.is_err() {
                        user_gone = true;
                        if !drain_if_gone {
                            return ReadEnd::UserGone;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let code = match e {
                        MessageError::TooLarge { .. } => Code::RESOURCE_EXHAUSTED,
                        _ => Code::INTERNAL,
                    };
                    return ReadEnd::Bad(Status::new(code, e.to_string()));
                }
            }
        }
        // An error here means the stream is already gone; the next `data()` reports it.
        let _ = body.flow_control().release_capacity(len);
    }
}

/// A [`Reset`] event for an h2 stream or connection error.
pub(crate) fn reset_from(e: &h2::Error) -> Reset {
    Reset {
        // The HTTP/2 error code when there is one (RST_STREAM or GOAWAY); 0 for I/O errors, as
        // the stream API reports a closed connection.
        code: e.reason().map_or(0, u32::from),
        message: e.to_string(),
        cancel_path: None,
    }
}

/// Whether messages in the direction these headers describe may carry the compressed flag:
/// `grpc-encoding` names a compressor other than `identity`.
///
/// The stream API carries message bytes without the flag, so the drivers derive it from the
/// headers: gRPC implementations that compress (grpc-go, Kitex) compress every message of a
/// stream whose `grpc-encoding` is set.
pub(crate) fn compressed_by_headers<'a>(mut encoding: impl Iterator<Item = &'a [u8]>) -> bool {
    encoding.any(|v| !v.is_empty() && !v.eq_ignore_ascii_case(b"identity"))
}

/// [`compressed_by_headers`] for an `http::HeaderMap`.
pub(crate) fn compressed_in_map(map: &HeaderMap) -> bool {
    compressed_by_headers(map.get_all(GRPC_ENCODING).iter().map(|v| v.as_bytes()))
}

/// [`compressed_by_headers`] for [`Metadata`].
pub(crate) fn compressed_in_metadata(md: &Metadata) -> bool {
    compressed_by_headers(
        md.iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(GRPC_ENCODING.as_bytes()))
            .map(|(_, v)| v),
    )
}

/// Headers HTTP/2 forbids (RFC 9113 8.2.2); h2 refuses to send a header map holding one.
pub(crate) fn is_connection_specific(name: &[u8]) -> bool {
    [
        &b"connection"[..],
        b"keep-alive",
        b"proxy-connection",
        b"transfer-encoding",
        b"upgrade",
        b"te",
    ]
    .iter()
    .any(|n| name.eq_ignore_ascii_case(n))
}

/// Appends `md` to `map` in order, leaving out the names `skip` rejects and pairs that are not
/// valid HTTP/2 fields (which h2 could not send; they are logged and dropped). Values are
/// passed as they are, `-bin` base64 text included.
pub(crate) fn append_metadata(map: &mut HeaderMap, md: &Metadata, skip: impl Fn(&[u8]) -> bool) {
    for (k, v) in &md.0 {
        if k.first() == Some(&b':') || is_connection_specific(k) || skip(k) {
            continue;
        }
        let name = match HeaderName::from_bytes(k) {
            Ok(n) => n,
            Err(_) => {
                tracing::warn!(name = ?k, "dropping metadata with an invalid HTTP/2 header name");
                continue;
            }
        };
        let value = match HeaderValue::from_maybe_shared(v.clone()) {
            Ok(v) => v,
            Err(_) => {
                tracing::warn!(%name, "dropping metadata with an invalid HTTP/2 header value");
                continue;
            }
        };
        map.append(name, value);
    }
}

/// The pairs of `map` as [`Metadata`], in order, leaving out the names `skip` rejects.
pub(crate) fn metadata_from_map(map: &HeaderMap, skip: impl Fn(&str) -> bool) -> Metadata {
    let mut md = Metadata::new();
    for (name, value) in map {
        if skip(name.as_str()) {
            continue;
        }
        md.push(
            Bytes::copy_from_slice(name.as_str().as_bytes()),
            Bytes::copy_from_slice(value.as_bytes()),
        );
    }
    md
}

/// A header value from text that is known to be valid (status codes, percent-encoded
/// messages, formatted timeouts).
pub(crate) fn text_value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(mut p: Payload) -> Vec<u8> {
        let mut out = Vec::new();
        while p.has_remaining() {
            let c = p.chunk().to_vec();
            p.advance(c.len());
            out.extend_from_slice(&c);
        }
        out
    }

    #[test]
    fn payload_is_prefix_then_body() {
        let p = Payload::message(Bytes::from_static(b"hello"), false).unwrap();
        assert_eq!(p.remaining(), 10);
        assert_eq!(collect(p), b"\0\0\0\0\x05hello");
        assert_eq!(Payload::empty().remaining(), 0);
    }

    #[test]
    fn payload_splits_anywhere() {
        let whole = b"\x01\0\0\0\x05hello".to_vec();
        for a in 0..=whole.len() {
            let mut p = Payload::message(Bytes::from_static(b"hello"), true).unwrap();
            let head = p.split_to(a);
            assert_eq!(head.remaining(), a);
            let mut got = collect(head);
            got.extend(collect(p));
            assert_eq!(got, whole, "split at {a}");
        }
    }

    #[test]
    fn payload_vectored_chunks() {
        let mut p = Payload::message(Bytes::from_static(b"abc"), false).unwrap();
        p.advance(2);
        let mut slices = [IoSlice::new(&[]); 4];
        let n = p.chunks_vectored(&mut slices);
        assert_eq!(n, 2);
        assert_eq!(&*slices[0], &[0, 0, 3]);
        assert_eq!(&*slices[1], b"abc");
    }

    #[test]
    fn compression_follows_grpc_encoding() {
        let mut md = Metadata::new();
        assert!(!compressed_in_metadata(&md));
        md.push("grpc-encoding", "identity");
        assert!(!compressed_in_metadata(&md));
        md.push("Grpc-Encoding", "gzip");
        assert!(compressed_in_metadata(&md));
    }

    #[test]
    fn metadata_round_trip_skips_forbidden_names() {
        let mut md = Metadata::new();
        md.push("x-user", "a");
        md.push("connection", "close");
        md.push("trace-bin", "AAEC");
        md.push("bad name", "x");
        md.push("x-bad-value", "a\nb");
        md.push("x-user", "b");
        let mut map = HeaderMap::new();
        append_metadata(&mut map, &md, |_| false);
        let back = metadata_from_map(&map, |_| false);
        let pairs: Vec<(&[u8], &[u8])> = back.iter().collect();
        assert_eq!(
            pairs,
            vec![
                (&b"x-user"[..], &b"a"[..]),
                (b"x-user", b"b"),
                (b"trace-bin", b"AAEC")
            ]
        );
    }
}
