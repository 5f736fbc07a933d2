//! The write half of a connection, owned by one task.
//!
//! Replies are queued as lists of `Bytes` (an encoded head plus the payload `Bytes` it carries)
//! and written with vectored writes, several replies per syscall when they queue up, so a
//! payload is never copied into a reply buffer.

use bytes::Bytes;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// One reply's buffers, in order.
pub(crate) type Chunks = Vec<Bytes>;

pub(crate) async fn run(w: OwnedWriteHalf, rx: mpsc::Receiver<Chunks>) -> std::io::Result<()> {
    sluice_io::write_queued(w, rx).await
}
