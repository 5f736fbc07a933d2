//! A connection whose bytes are counted into its listener's totals.

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes read and written on a listener's connections, on a cache line of their own (every
/// connection of the listener adds to them).
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct IoBytes {
    /// Bytes read from callers (TLS records included, on TLS listeners).
    pub read: AtomicU64,
    /// Bytes written to callers.
    pub written: AtomicU64,
}

/// `T` with every read and write counted in an [`IoBytes`]: one relaxed addition per read or
/// write call, beside a system call that costs far more.
#[derive(Debug)]
pub(crate) struct Counted<T> {
    pub(crate) inner: T,
    pub(crate) bytes: Arc<IoBytes>,
}

impl<T> Counted<T> {
    pub(crate) fn new(inner: T, bytes: Arc<IoBytes>) -> Self {
        Self { inner, bytes }
    }
}

pub(crate) fn add(counter: &AtomicU64, r: &Poll<std::io::Result<usize>>) {
    if let Poll::Ready(Ok(n)) = r {
        counter.fetch_add(*n as u64, Ordering::Relaxed);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = buf.filled().len() - before;
            self.bytes.read.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        add(&self.bytes.written, &r);
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        add(&self.bytes.written, &r);
        r
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
