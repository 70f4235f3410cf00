//! Spare upstream read buffers, kept per thread between requests.
//!
//! Each fast-path exchange reads the upstream's answer into a buffer of [`SIZE`] bytes.
//! glibc serves blocks that large from its bins, not its per-thread cache (blocks up to
//! 1,032 bytes), so each allocation and free takes its slow path, a few hundred
//! instructions per request. A request takes a buffer from its thread's
//! spares and gives it back when the answer has been relayed. A thread keeps at most
//! [`KEPT`] spares (`KEPT` × `SIZE` bytes), so memory stays bounded after a burst, and an
//! idle connection holds none.

use std::cell::RefCell;

use bytes::BytesMut;

/// The capacity of a response buffer: room for the head and the first body bytes.
pub const SIZE: usize = 8 * 1024;
/// Spares kept per thread.
const KEPT: usize = 64;

thread_local! {
    static SPARES: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least [`SIZE`] bytes: a spare if the thread has one.
pub fn take() -> BytesMut {
    SPARES
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(SIZE))
}

/// Keeps `buf` for a later request, if it still owns [`SIZE`] bytes of its own (not shared
/// with a `Bytes` split off it) and the thread has fewer than [`KEPT`] spares.
pub fn give(mut buf: BytesMut) {
    buf.clear();
    if !buf.try_reclaim(SIZE) {
        return;
    }
    SPARES.with(|s| {
        let mut s = s.borrow_mut();
        if s.len() < KEPT {
            s.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spares are per thread, and a test thread may have run another test before.
    fn spares() -> usize {
        SPARES.with(|s| s.borrow().len())
    }

    fn drain() {
        SPARES.with(|s| s.borrow_mut().clear());
    }

    #[test]
    fn a_given_buffer_comes_back_empty_with_its_room() {
        drain();
        let mut b = take();
        assert!(b.capacity() >= SIZE);
        b.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\nbody");
        let at = b.as_ptr();
        give(b);
        let again = take();
        assert!(again.is_empty());
        assert!(again.capacity() >= SIZE);
        assert_eq!(
            again.as_ptr(),
            at,
            "the spare was reused, not a new allocation"
        );
    }

    #[test]
    fn a_buffer_shared_with_a_split_off_part_is_not_kept() {
        drain();
        let mut b = take();
        b.extend_from_slice(b"head and body");
        let head = b.split_to(4).freeze();
        give(b);
        assert_eq!(spares(), 0, "a buffer still shared with `head` is not kept");
        assert_eq!(&head[..], b"head");
        // Once the split-off part is gone, the buffer is whole again and is kept.
        let mut b = take();
        b.extend_from_slice(b"head and body");
        drop(b.split_to(4).freeze());
        give(b);
        assert_eq!(spares(), 1);
    }

    #[test]
    fn a_thread_keeps_at_most_kept_spares() {
        drain();
        let bufs: Vec<BytesMut> = (0..KEPT + 10).map(|_| take()).collect();
        for b in bufs {
            give(b);
        }
        assert_eq!(spares(), KEPT);
    }
}
