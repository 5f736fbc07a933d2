//! Vectored writes of lists of buffers (encoded heads next to the payloads they frame), and the
//! writer task that owns a connection's write half and sends what its channel queued.

use std::io::IoSlice;
use std::pin::Pin;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

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
        // The slices are built inside each poll, on the stack: no list is allocated per write,
        // and none is kept in the caller's future while the write waits.
        let n = std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            let mut k = 0;
            for b in bufs[first..].iter().take(MAX_IOV) {
                slices[k] = IoSlice::new(b);
                k += 1;
            }
            Pin::new(&mut *w).poll_write_vectored(cx, &slices[..k])
        })
        .await?;
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
}
