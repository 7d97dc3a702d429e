//! Output buffers: a per-worker free list, so steady traffic allocates nothing and an
//! idle connection holds no buffer.
//!
//! A connection takes a buffer when its handler first writes and gives it back once the
//! kernel has sent every byte. Buffers that grew past [`BufPool::MAX_KEEP`] are freed
//! instead of kept, so one large reply does not pin memory for the life of the worker.

/// A worker's free list of output buffers. Single-threaded; no locks.
#[derive(Debug)]
pub(crate) struct BufPool {
    free: Vec<Vec<u8>>,
    initial: usize,
    limit: usize,
}

impl BufPool {
    /// Buffers larger than this are freed rather than pooled.
    pub const MAX_KEEP: usize = 256 * 1024;

    /// A pool handing out buffers of `initial` bytes of capacity, keeping at most `limit`
    /// free buffers.
    pub fn new(initial: usize, limit: usize) -> BufPool {
        BufPool {
            free: Vec::new(),
            initial: initial.max(64),
            limit,
        }
    }

    /// An empty buffer with capacity.
    pub fn take(&mut self) -> Vec<u8> {
        self.free
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.initial))
    }

    /// Returns a buffer to the pool (or frees it, when large or when the pool is full).
    pub fn put(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > Self::MAX_KEEP || self.free.len() >= self.limit {
            return;
        }
        buf.clear();
        self.free.push(buf);
    }

    /// How many buffers wait in the pool.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_buffers_and_drops_large_ones() {
        let mut pool = BufPool::new(1024, 2);
        let mut a = pool.take();
        a.extend_from_slice(b"hello");
        let ptr = a.as_ptr();
        pool.put(a);
        let b = pool.take();
        assert!(b.is_empty());
        assert_eq!(b.as_ptr(), ptr, "the pooled buffer is handed out again");
        pool.put(Vec::with_capacity(BufPool::MAX_KEEP + 1));
        assert_eq!(pool.len(), 0, "an oversized buffer is not kept");
        pool.put(Vec::new());
        assert_eq!(pool.len(), 0, "a buffer without capacity is not kept");
    }

    #[test]
    fn keeps_at_most_limit() {
        let mut pool = BufPool::new(64, 2);
        for _ in 0..5 {
            pool.put(Vec::with_capacity(64));
        }
        assert_eq!(pool.len(), 2);
    }
}
