//! Buffers for bulk data handed to quinn, recycled once quinn lets go of them.
//!
//! quinn keeps received stream data as views into the datagram buffers it was given, and data to send
//! as the `Bytes` written, until the peer acknowledges it. A fresh buffer for each was fresh memory
//! each time: the allocator returned the freed pages to the kernel and took them back, and `perf`
//! counted a page fault for every 4 KiB moved (1 GiB QUIC upload on loopback: ~130,000–240,000 faults
//! at the receiver, ~44,000–85,000 at the sender; the receiver's CPU fell by about a third without
//! them, BENCHMARKS.md). A pool hands out slices of larger slabs and reuses a slab when nothing points
//! into it any more, which in a steady transfer is every slab but the newest few.

use bytes::BytesMut;
use std::collections::VecDeque;

/// Slabs of at least `slab` bytes, at most `max` of them kept. When the oldest is still held past that
/// (a slow reader, data out of order, data not yet acknowledged), the pool lets it go (it is freed with
/// the last buffer cut from it) and starts a new one, so what the pool itself keeps is bounded by
/// `slab * max`.
#[derive(Debug)]
pub struct SlabPool {
    slabs: VecDeque<BytesMut>,
    slab: usize,
    max: usize,
    /// Slabs allocated so far (a warm pool in a steady transfer stops allocating).
    pub allocated: u64,
}

impl SlabPool {
    #[must_use]
    pub fn new(slab: usize, max: usize) -> Self {
        Self { slabs: VecDeque::new(), slab: slab.max(1), max: max.max(1), allocated: 0 }
    }

    /// `data` copied into pooled memory, as a buffer of its own.
    pub fn copy(&mut self, data: &[u8]) -> BytesMut {
        // Every buffer is split off at once, so the newest slab's capacity is the room left in it.
        let room = self.slabs.back().is_some_and(|b| b.capacity() >= data.len());
        if !room {
            let want = data.len().max(self.slab);
            let full = self.slabs.len() >= self.max;
            if self.slabs.front_mut().is_some_and(|b| b.try_reclaim(want)) {
                self.slabs.rotate_left(1);
            } else {
                if full {
                    self.slabs.pop_front();
                }
                self.allocated += 1;
                self.slabs.push_back(BytesMut::with_capacity(want));
            }
        }
        let slab = self.slabs.back_mut().expect("invariant: a slab with room was just ensured");
        slab.extend_from_slice(data);
        slab.split()
    }

    /// Slabs the pool holds (in use or free).
    #[must_use]
    pub fn len(&self) -> usize {
        self.slabs.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.slabs.is_empty()
    }

    /// Forget every slab: free ones are freed now, the others with their last buffer.
    pub fn clear(&mut self) {
        self.slabs.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::SlabPool;

    #[test]
    fn slab_pool_reuses_a_slab_once_nothing_points_into_it() {
        let mut pool = SlabPool::new(128 * 1024, 16);
        let batch = vec![7u8; 50_000];
        // Held buffers: the first slab takes two, then new slabs come.
        let held: Vec<_> = (0..6).map(|_| pool.copy(&batch).freeze()).collect();
        assert!(held.iter().all(|b| b.len() == 50_000 && b.iter().all(|&x| x == 7)));
        assert_eq!(pool.allocated, 3);
        drop(held);
        // All let go: the three slabs serve a steady stream of buffers, each dropped soon after.
        for i in 0..1000u32 {
            let b = pool.copy(&i.to_le_bytes().repeat(10_000)).freeze();
            assert_eq!(&b[..4], &i.to_le_bytes());
        }
        assert_eq!(pool.allocated, 3);
        // A reader nine buffers behind (~360 KB held): a couple more slabs, then no more allocations.
        let mut recent = std::collections::VecDeque::new();
        let mut warm = 0;
        for i in 0..1000u32 {
            recent.push_back(pool.copy(&i.to_le_bytes().repeat(10_000)).freeze());
            if recent.len() > 9 {
                let old = recent.pop_front().expect("nine held");
                assert_eq!(&old[..4], &(i - 9).to_le_bytes());
            }
            if i == 100 {
                warm = pool.allocated;
            }
        }
        assert!(warm <= 5, "{warm}");
        assert_eq!(pool.allocated, warm);
    }

    #[test]
    fn slab_pool_keeps_at_most_its_bound_while_its_slabs_are_held() {
        let mut pool = SlabPool::new(128 * 1024, 16);
        let held: Vec<_> = (0..100).map(|_| pool.copy(&[1u8; 100_000]).freeze()).collect();
        assert_eq!(pool.allocated, 100);
        assert_eq!(pool.len(), 16);
        assert!(held.iter().all(|b| b.len() == 100_000 && b[99_999] == 1));
        // A buffer larger than a slab gets a slab of its size.
        let big = pool.copy(&vec![2u8; 3 * 128 * 1024]);
        assert_eq!(big.len(), 3 * 128 * 1024);
        pool.clear();
        assert!(pool.is_empty());
        assert!(held.iter().all(|b| b[0] == 1));
    }
}
