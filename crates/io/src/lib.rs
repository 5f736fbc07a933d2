//! Async I/O helpers shared by the server and the clients.
#![forbid(unsafe_code)]

use std::io::IoSlice;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

mod tasks;
pub use tasks::TaskGroup;

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

/// Read buffers a thread keeps for connections that come back from idle.
const SPARE_READ_BUFS: usize = 16;

/// Largest read buffer kept for reuse; a buffer grown for one large message is freed instead.
const SPARE_READ_BUF_MAX: usize = 16 * 1024;

/// Room carved heads are taken from; a new piece this size is taken when one runs out.
const HEAD_ARENA_CHUNK: usize = 4 * 1024;

std::thread_local! {
    static SPARE_READ: std::cell::RefCell<Vec<Spare>> = const { std::cell::RefCell::new(Vec::new()) };
    static HEAD_ARENA: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// A read buffer with room for at least `chunk` bytes: one given back on this thread (see
/// [`give_back_read_buf`]) whose memory is free again, or a new one.
///
/// Connections that sit idle between requests hold no buffer (a few KiB each matters at tens of
/// thousands of them); taking one from here when bytes arrive, instead of allocating it, keeps
/// that from costing an allocation per request.
pub fn take_read_buf(chunk: usize) -> BytesMut {
    let reused = SPARE_READ.with(|s| {
        let mut s = s.borrow_mut();
        // Newest first: a buffer given back by a reader whose messages are gone is reusable at
        // once; one whose last message is still being forwarded becomes so a little later.
        let mut i = s.len();
        while i > 0 {
            i -= 1;
            let spare = &mut s[i];
            // Reclaiming more than the room left succeeds only when nothing split off the
            // buffer is still in use, and then shows its whole allocation.
            if !spare.free && !spare.buf.try_reclaim(spare.buf.capacity() + 1) {
                continue;
            }
            let b = s.remove(i).buf;
            if (chunk..=SPARE_READ_BUF_MAX).contains(&b.capacity()) {
                return Some(b);
            }
        }
        None
    });
    reused.unwrap_or_else(|| BytesMut::with_capacity(chunk))
}

/// Gives an emptied read buffer back for reuse by [`take_read_buf`] on this thread, if nothing
/// split off it is still in use and it is not larger than a few read chunks; otherwise it is
/// freed (when its last message is).
pub fn give_back_read_buf(mut buf: BytesMut) {
    let free = buf.is_empty() && buf.try_reclaim(buf.capacity() + 1);
    if free && buf.capacity() <= SPARE_READ_BUF_MAX {
        keep_spare(Spare { buf, free: true });
    }
}

/// Gives back an emptied read buffer whose messages may still be in use (a reply being
/// forwarded): it is reused once they are gone. `largest_message` is the largest message read
/// into it; a buffer that held a larger one than a read chunk may have grown for it and is not
/// kept, so what the spares hold stays bounded even while their messages live on.
pub fn give_back_read_buf_in_use(buf: BytesMut, largest_message: usize) {
    if buf.is_empty() && largest_message <= SPARE_READ_BUF_MAX / 2 {
        keep_spare(Spare { buf, free: false });
    }
}

/// A read buffer kept for reuse.
struct Spare {
    buf: BytesMut,
    /// Known to be this handle's alone, and reclaimed whole.
    free: bool,
}

/// A thread keeps a few dozen spares at most; the oldest is freed to make room.
fn keep_spare(spare: Spare) {
    SPARE_READ.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() >= SPARE_READ_BUFS {
            s.remove(0);
        }
        s.push(spare);
    });
}

/// A frame as `[head, payload]` for a vectored write: the head encoded by `encode` into the
/// thread's head arena ([`carve_head`]), the payload as it is (no copy). A frame that cannot be
/// encoded is dropped with a warning naming `what`.
pub fn frame_chunks<E: std::fmt::Display>(
    what: &str,
    size_hint: usize,
    payload: Bytes,
    encode: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Option<[Bytes; 2]> {
    match carve_head(size_hint, encode) {
        Ok(head) => Some([head, payload]),
        Err(e) => {
            tracing::warn!(error = %e, "{what} not encodable; dropped");
            None
        }
    }
}

/// Encodes a small piece, such as a frame head, with `encode` and returns it as `Bytes` cut from
/// a per-thread arena, so that a frame head costs no allocation of its own.
///
/// Arena pieces are freed when every head cut from them has been dropped (written), so what
/// this holds is bounded by the heads still queued. On error, nothing is kept.
pub fn carve_head<E>(
    size_hint: usize,
    encode: impl FnOnce(&mut BytesMut) -> Result<(), E>,
) -> Result<Bytes, E> {
    if size_hint > HEAD_ARENA_CHUNK / 2 {
        // A large head (many header keys) gets room of its own: the arena stays in small
        // pieces, and none is kept alive by one large head.
        let mut own = BytesMut::with_capacity(size_hint);
        encode(&mut own)?;
        return Ok(own.freeze());
    }
    HEAD_ARENA.with(|a| {
        let mut a = a.borrow_mut();
        if a.capacity() - a.len() < size_hint {
            a.reserve(HEAD_ARENA_CHUNK);
        }
        match encode(&mut a) {
            Ok(()) => Ok(a.split().freeze()),
            Err(e) => {
                a.clear();
                Err(e)
            }
        }
    })
}

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

/// The write queue of a connection that many streams write to (TTStream): producers append
/// encoded frames without waiting, one writer task sends whatever has queued up in one
/// vectored write.
///
/// Room is bounded in bytes: [`QueueTx::poll_ready`] is pending while `limit` bytes or more are
/// queued or being written, and producers (connection readers forwarding frames, stream
/// handlers) wait on it before pushing, so a peer that does not read stops them instead of
/// growing the queue. The writer ends, after writing what is queued, once every producer is
/// gone; a failed write fails every later push.
pub fn out_queue(limit: usize) -> (QueueTx, QueueWriter) {
    let q = Arc::new(OutQueue {
        state: Mutex::new(OutState {
            bufs: Vec::new(),
            queued: 0,
            writer: None,
            waiters: Vec::new(),
            producers: 1,
            failed: false,
        }),
        limit,
    });
    (QueueTx(q.clone()), QueueWriter(q))
}

/// Default byte limit of an [`out_queue`].
pub const OUT_QUEUE_LIMIT: usize = 1024 * 1024;

struct OutQueue {
    state: Mutex<OutState>,
    limit: usize,
}

struct OutState {
    bufs: Vec<Bytes>,
    /// Bytes queued or in the write under way.
    queued: usize,
    writer: Option<Waker>,
    waiters: Vec<Waker>,
    producers: usize,
    failed: bool,
}

impl OutQueue {
    fn lock(&self) -> MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The connection's write side is gone (a write failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueClosed;

/// A producer of an [`out_queue`]; clones are producers too.
pub struct QueueTx(Arc<OutQueue>);

impl std::fmt::Debug for QueueTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueTx")
    }
}

impl Clone for QueueTx {
    fn clone(&self) -> Self {
        self.0.lock().producers += 1;
        Self(self.0.clone())
    }
}

impl Drop for QueueTx {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.producers -= 1;
        if st.producers == 0 {
            let w = st.writer.take();
            drop(st);
            if let Some(w) = w {
                w.wake();
            }
        }
    }
}

impl QueueTx {
    /// Appends `bufs` (one or more frames) now, whatever is queued already.
    pub fn push(&self, bufs: impl IntoIterator<Item = Bytes>) -> Result<(), QueueClosed> {
        let mut st = self.0.lock();
        if st.failed {
            return Err(QueueClosed);
        }
        for b in bufs {
            st.queued += b.len();
            st.bufs.push(b);
        }
        let w = st.writer.take();
        drop(st);
        if let Some(w) = w {
            w.wake();
        }
        Ok(())
    }

    /// Ready while fewer than the limit's bytes are queued, or once the queue failed.
    pub fn poll_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut st = self.0.lock();
        if st.failed || st.queued < self.0.limit {
            Poll::Ready(())
        } else {
            // A task that polls again while it waits is not added twice.
            if !st.waiters.iter().any(|w| w.will_wake(cx.waker())) {
                st.waiters.push(cx.waker().clone());
            }
            Poll::Pending
        }
    }

    /// True once a write failed.
    pub fn is_closed(&self) -> bool {
        self.0.lock().failed
    }
}

/// The writing end of an [`out_queue`].
pub struct QueueWriter(Arc<OutQueue>);

impl std::fmt::Debug for QueueWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueWriter")
    }
}

impl QueueWriter {
    /// Writes until every producer is gone and the queue is empty (then shuts the write side
    /// down), or a write fails.
    pub async fn run<W: AsyncWrite + Unpin>(self, mut w: W) -> std::io::Result<()> {
        let q = self.0;
        let mut batch: Vec<Bytes> = Vec::new();
        loop {
            std::future::poll_fn(|cx| {
                let mut st = q.lock();
                if !st.bufs.is_empty() || st.producers == 0 {
                    Poll::Ready(())
                } else {
                    st.writer = Some(cx.waker().clone());
                    Poll::Pending
                }
            })
            .await;
            // Tasks woken by the same read are about to queue their frames: let them, so the
            // frames leave in one write instead of one write each.
            tokio::task::yield_now().await;
            {
                let mut st = q.lock();
                if st.bufs.is_empty() {
                    if st.producers == 0 {
                        break;
                    }
                    continue;
                }
                std::mem::swap(&mut st.bufs, &mut batch);
            }
            let bytes: usize = batch.iter().map(Bytes::len).sum();
            let result = write_all_vectored(&mut w, &mut batch).await;
            let mut st = q.lock();
            st.queued -= bytes;
            if result.is_err() {
                st.failed = true;
                st.bufs.clear();
                st.queued = 0;
            }
            let waiters = std::mem::take(&mut st.waiters);
            drop(st);
            for waker in waiters {
                waker.wake();
            }
            result?;
        }
        w.shutdown().await
    }
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

    #[test]
    fn a_read_buffer_given_back_is_reused_once_its_messages_are_gone() {
        // Given back while its message is still being forwarded: reused once it is gone.
        let mut buf = take_read_buf(8192);
        buf.extend_from_slice(&[1u8; 1000]);
        let base = buf.as_ptr();
        let message = buf.split_to(1000).freeze();
        give_back_read_buf_in_use(buf, 1000);
        let other = take_read_buf(8192);
        assert_ne!(other.as_ptr(), base, "handed out while its message lives");
        assert!(other.capacity() >= 8192);
        drop(message);
        let again = take_read_buf(8192);
        assert_eq!(again.as_ptr(), base, "not reused once free");
        assert!(again.capacity() >= 8192 && again.is_empty());

        // Given back with nothing in use: reused at once.
        give_back_read_buf(again);
        assert_eq!(take_read_buf(8192).as_ptr(), base);
    }

    fn spares() -> usize {
        SPARE_READ.with(|s| s.borrow().len())
    }

    #[test]
    fn large_or_busy_read_buffers_are_not_kept() {
        assert_eq!(spares(), 0);
        // Still in use, given back as if it were not: not kept.
        let mut buf = take_read_buf(8192);
        buf.extend_from_slice(&[1u8; 100]);
        let message = buf.split_to(100).freeze();
        give_back_read_buf(buf);
        assert_eq!(spares(), 0);
        // In use after a large message (the buffer may have grown for it): not kept.
        let mut big = take_read_buf(8192);
        big.extend_from_slice(&[2u8; 100]);
        let big_msg = big.split_to(100).freeze();
        give_back_read_buf_in_use(big, 1 << 20);
        assert_eq!(spares(), 0);
        // Bytes still in it: not kept.
        let mut full = take_read_buf(8192);
        full.extend_from_slice(b"unread");
        give_back_read_buf(full);
        give_back_read_buf(BytesMut::with_capacity(1 << 20));
        assert_eq!(spares(), 0);
        drop((message, big_msg));

        // A kept buffer that turns out, once reclaimed, to have grown past the limit is freed
        // instead of handed out.
        let mut grown = BytesMut::with_capacity(1 << 20);
        grown.extend_from_slice(&vec![3u8; (1 << 20) - 100]);
        let grown_msg = grown.split_to((1 << 20) - 100).freeze();
        give_back_read_buf_in_use(grown, 100);
        assert_eq!(spares(), 1);
        drop(grown_msg);
        assert!(take_read_buf(8192).capacity() <= SPARE_READ_BUF_MAX);
        assert_eq!(spares(), 0);

        // At most SPARE_READ_BUFS are kept.
        for _ in 0..SPARE_READ_BUFS + 5 {
            give_back_read_buf_in_use(BytesMut::with_capacity(8192), 0);
        }
        assert_eq!(spares(), SPARE_READ_BUFS);
    }

    #[test]
    fn heads_are_cut_one_after_another_from_one_arena_piece() {
        let a = carve_head::<()>(16, |b| {
            b.extend_from_slice(b"first");
            Ok(())
        })
        .unwrap();
        // A failed encoding leaves nothing behind for the next head.
        assert!(carve_head(16, |b| {
            b.extend_from_slice(b"junk");
            Err(())
        })
        .is_err());
        let b = carve_head::<()>(16, |b| {
            b.extend_from_slice(b"second");
            Ok(())
        })
        .unwrap();
        assert_eq!((&a[..], &b[..]), (&b"first"[..], &b"second"[..]));
        // Adjacent in memory: the second head took no allocation of its own.
        assert_eq!(b.as_ptr(), a.as_ptr().wrapping_add(a.len()));
        // A large head gets room of its own and leaves the arena as it was.
        let big = carve_head::<()>(10_000, |b| {
            b.extend_from_slice(&[9u8; 10_000]);
            Ok(())
        })
        .unwrap();
        assert_eq!(big.len(), 10_000);
        let c = carve_head::<()>(16, |b| {
            b.extend_from_slice(b"third");
            Ok(())
        })
        .unwrap();
        assert_eq!(c.as_ptr(), b.as_ptr().wrapping_add(b.len()));
        assert_eq!((&a[..], &c[..]), (&b"first"[..], &b"third"[..]));
    }

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

    #[tokio::test]
    async fn queued_frames_from_many_producers_leave_in_order_and_the_writer_ends_with_them() {
        use tokio::io::AsyncReadExt;
        let (a, mut b) = tokio::io::duplex(1 << 20);
        let (tx, writer) = out_queue(1024);
        let writer = tokio::spawn(writer.run(a));
        let tx2 = tx.clone();
        tx.push([Bytes::from_static(b"one "), Bytes::from_static(b"two ")])
            .unwrap();
        tx2.push([Bytes::from_static(b"three")]).unwrap();
        drop(tx);
        drop(tx2);
        // Every producer is gone: the writer writes what is queued, then shuts down.
        writer.await.unwrap().unwrap();
        let mut got = String::new();
        b.read_to_string(&mut got).await.unwrap();
        assert_eq!(got, "one two three");
    }

    #[tokio::test]
    async fn a_queue_over_its_limit_holds_producers_until_the_writer_drains_it() {
        use tokio::io::AsyncReadExt;
        // The peer reads nothing yet and its pipe holds 16 bytes.
        let (a, mut b) = tokio::io::duplex(16);
        let (tx, writer) = out_queue(100);
        tokio::spawn(writer.run(a));
        tx.push([Bytes::from(vec![1u8; 150])]).unwrap();
        let ready = std::future::poll_fn(|cx| tx.poll_ready(cx));
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), ready)
                .await
                .is_err(),
            "150 queued bytes are over the 100-byte limit"
        );
        let mut got = vec![0u8; 150];
        b.read_exact(&mut got).await.unwrap();
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            std::future::poll_fn(|cx| tx.poll_ready(cx)),
        )
        .await
        .expect("room once the bytes are written");
    }

    #[tokio::test]
    async fn a_failed_write_fails_later_pushes() {
        let (a, b) = tokio::io::duplex(16);
        drop(b);
        let (tx, writer) = out_queue(1024);
        let writer = tokio::spawn(writer.run(a));
        tx.push([Bytes::from_static(b"lost")]).unwrap();
        assert!(writer.await.unwrap().is_err());
        assert!(tx.is_closed());
        assert_eq!(tx.push([Bytes::from_static(b"x")]), Err(QueueClosed));
    }
}
