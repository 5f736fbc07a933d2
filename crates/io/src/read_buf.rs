//! Read buffers: how much room a read gets, and a per-thread stock of buffers for connections
//! that come back from idle (an idle connection holds none).

use bytes::BytesMut;

/// Read size of a multiplexed connection (TTStream, TTHeader mux): one read takes in as many
/// frames as have arrived, up to this much.
pub const STREAM_READ_CHUNK: usize = 32 * 1024;

/// Makes sure the next read into `buf` can take a useful amount: at least a quarter of `chunk`.
///
/// A reader that splits frames off the front of its buffer leaves less and less spare room
/// behind them, and a read into a full `BytesMut` gets only a 64-byte reservation: without
/// this, a busy connection is read in tiny pieces, one syscall per few hundred bytes.
#[inline]
pub fn reserve_read(buf: &mut BytesMut, chunk: usize) {
    if buf.capacity() - buf.len() < chunk / 4 {
        buf.reserve(chunk);
    }
}

/// Read buffers a thread keeps for connections that come back from idle.
const SPARE_READ_BUFS: usize = 16;

/// Largest read buffer kept for reuse; a buffer grown for one large message is freed instead.
const SPARE_READ_BUF_MAX: usize = 16 * 1024;

std::thread_local! {
    static SPARE_READ: std::cell::RefCell<Vec<Spare>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A read buffer with room for at least `chunk` bytes: one given back on this thread (see
/// [`give_back_read_buf`]) whose memory is free again, or a new one.
///
/// Connections that sit idle between requests hold no buffer (a few KiB each matters at tens of
/// thousands of them); taking one from here when bytes arrive, instead of allocating it, keeps
/// that from costing an allocation per request.
#[inline]
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
#[inline]
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
#[inline]
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
#[inline]
fn keep_spare(spare: Spare) {
    SPARE_READ.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() >= SPARE_READ_BUFS {
            s.remove(0);
        }
        s.push(spare);
    });
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
