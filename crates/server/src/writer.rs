//! The write half of a connection, owned by one task.
//!
//! Replies are queued as lists of `Bytes` (an encoded head plus the payload `Bytes` it carries)
//! and written with vectored writes, several replies per syscall when they queue up, so a
//! payload is never copied into a reply buffer.

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// One reply's buffers, in order.
pub(crate) type Chunks = Vec<Bytes>;

use sluice_io::{write_all_vectored, MAX_IOV};

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
        write_all_vectored(&mut w, &mut pending).await?;
    }
    w.shutdown().await
}
