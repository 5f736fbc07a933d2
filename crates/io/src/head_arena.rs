//! Frame heads cut from a per-thread arena: a frame's encoded head costs no allocation of its
//! own, and goes out next to its payload in a vectored write.

use bytes::{Bytes, BytesMut};

/// Room carved heads are taken from; a new piece this size is taken when one runs out.
const HEAD_ARENA_CHUNK: usize = 4 * 1024;

std::thread_local! {
    static HEAD_ARENA: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
