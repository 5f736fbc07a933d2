//! Async I/O helpers shared by the server and the clients.
#![forbid(unsafe_code)]

use std::io::IoSlice;

use bytes::{Buf, Bytes};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Most buffers handed to one vectored write.
pub const MAX_IOV: usize = 64;

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
