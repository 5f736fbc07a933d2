//! Async I/O helpers shared by the server and the clients.
#![forbid(unsafe_code)]

use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// An I/O object whose first reads return `prefix`: the bytes a sniffer already read are handed
/// back to the protocol driver that takes the connection over (e.g. the HTTP/2 preface).
#[derive(Debug)]
pub struct PrefixedIo<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> PrefixedIo<T> {
    /// Wraps `inner`, replaying `prefix` first.
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Self { prefix, inner }
    }

    /// The wrapped I/O object (any unread prefix is lost).
    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for PrefixedIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for PrefixedIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Read size of a multiplexed connection (TTStream, TTHeader mux): one read takes in as many
/// frames as have arrived, up to this much.
pub const STREAM_READ_CHUNK: usize = 32 * 1024;

/// Makes sure the next read into `buf` can take a useful amount: at least a quarter of `chunk`.
///
/// A reader that splits frames off the front of its buffer leaves less and less spare room
/// behind them, and a read into a full `BytesMut` gets only a 64-byte reservation: without
/// this, a busy connection is read in tiny pieces, one syscall per few hundred bytes.
pub fn reserve_read(buf: &mut BytesMut, chunk: usize) {
    if buf.capacity() - buf.len() < chunk / 4 {
        buf.reserve(chunk);
    }
}

/// Most buffers handed to one vectored write.
pub const MAX_IOV: usize = 64;

/// Owns a connection's write half: writes every list of buffers queued on `rx`, batching what
/// has queued up into one vectored write, until the channel closes (then shuts the write side
/// down) or a write fails.
pub async fn write_queued<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: tokio::sync::mpsc::Receiver<Vec<Bytes>>,
) -> std::io::Result<()> {
    let mut pending: Vec<Bytes> = Vec::with_capacity(MAX_IOV);
    while let Some(first) = rx.recv().await {
        pending.extend(first);
        // Let the tasks that are ready to run now (a reader that just took in many frames
        // wakes one per stream) queue their frames first: they then leave in one write
        // instead of one write each.
        tokio::task::yield_now().await;
        while pending.len() < MAX_IOV {
            match rx.try_recv() {
                Ok(more) => pending.extend(more),
                Err(_) => break,
            }
        }
        write_all_vectored(&mut w, &mut pending).await?;
    }
    w.shutdown().await
}

/// Writes every buffer in `bufs`, in order, with vectored writes, leaving `bufs` empty.
///
/// Frames are queued as an encoded head plus the payload `Bytes` they carry; writing them this
/// way sends several frames per syscall without copying any payload into a frame buffer.
pub async fn write_all_vectored<W: AsyncWrite + Unpin>(
    w: &mut W,
    bufs: &mut Vec<Bytes>,
) -> std::io::Result<()> {
    let mut first = 0;
    while first < bufs.len() {
        if bufs[first].is_empty() {
            first += 1;
            continue;
        }
        let n = {
            let slices: Vec<IoSlice<'_>> = bufs[first..]
                .iter()
                .take(MAX_IOV)
                .map(|b| IoSlice::new(b))
                .collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let b = &mut bufs[first];
            if left >= b.len() {
                left -= b.len();
                first += 1;
            } else {
                b.advance(left);
                left = 0;
            }
        }
    }
    bufs.clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefix_is_read_first_then_the_stream() {
        let (a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut b, b" world")
            .await
            .unwrap();
        drop(b);
        let mut p = PrefixedIo::new(Bytes::from_static(b"hello"), a);
        let mut got = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut p, &mut got)
            .await
            .unwrap();
        assert_eq!(got, "hello world");
    }

    #[tokio::test]
    async fn writes_everything_in_order_through_short_writes() {
        // A duplex pipe with a 7-byte buffer forces many partial vectored writes.
        let (mut a, mut b) = tokio::io::duplex(7);
        let mut bufs: Vec<Bytes> = (0..50u8)
            .map(|i| Bytes::from(vec![i; (i as usize % 5) + 1]))
            .collect();
        let expected: Vec<u8> = bufs.iter().flat_map(|b| b.to_vec()).collect();
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got)
                .await
                .unwrap();
            got
        });
        write_all_vectored(&mut a, &mut bufs).await.unwrap();
        drop(a);
        assert!(bufs.is_empty());
        assert_eq!(reader.await.unwrap(), expected);
    }

    #[tokio::test]
    async fn a_reader_that_splits_frames_off_still_reads_in_large_pieces() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut a, mut b) = tokio::io::duplex(64 * 1024);
        a.write_all(&[7u8; 20_000]).await.unwrap();
        // A buffer whose spare room was used up by frames split off its front.
        let mut buf = BytesMut::with_capacity(512);
        buf.resize(512, 0);
        let _frames = buf.split_to(500);
        reserve_read(&mut buf, STREAM_READ_CHUNK);
        assert!(buf.capacity() - buf.len() >= STREAM_READ_CHUNK / 4);
        let n = b.read_buf(&mut buf).await.unwrap();
        assert!(n >= STREAM_READ_CHUNK / 4, "one read took only {n} bytes");
        // Enough room already: nothing is reallocated.
        let cap = buf.capacity();
        reserve_read(&mut buf, 64);
        assert_eq!(buf.capacity(), cap);
    }
}
