//! The write half of a connection, owned by one task.
//!
//! Replies are queued as lists of `Bytes` (an encoded head plus the payload `Bytes` it carries)
//! and written with vectored writes, several replies per syscall when they queue up, so a
//! payload is never copied into a reply buffer.

use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// One reply's buffers, in order.
pub(crate) type Chunks = Vec<Bytes>;

/// Most buffers handed to one `writev`.
const MAX_IOV: usize = 64;

pub(crate) async fn run(
    mut w: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Chunks>,
) -> std::io::Result<()> {
    let mut pending: Vec<Bytes> = Vec::with_capacity(MAX_IOV);
    while let Some(first) = rx.recv().await {
        pending.extend(first);
        while pending.len() < MAX_IOV {
            match rx.try_recv() {
                Ok(more) => pending.extend(more),
                Err(_) => break,
            }
        }
        write_all(&mut w, &mut pending).await?;
    }
    w.shutdown().await
}

/// Writes every buffer in `bufs`, in order, leaving `bufs` empty.
pub(crate) async fn write_all<W: tokio::io::AsyncWrite + Unpin>(
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
