//! The provided buffer ring: a worker's pool of receive buffers that the kernel picks
//! from when a multishot receive completes.
//!
//! Two anonymous mappings: the ring of entries (`io_uring_buf`, 16 bytes each,
//! page-aligned, shared with the kernel) and the buffers themselves (`count * size`
//! bytes). Both are raw memory, never behind a Rust reference the kernel could write
//! under. A buffer belongs to the kernel from the moment its entry is published until a
//! completion names its id; the engine reads it during that one event and the driver
//! hands it straight back with [`BufRing::recycle`]. The mappings are freed only after
//! the ring that used them is gone with every completion reaped (the driver's `Drop`).
//! Recycled entries become visible to the kernel at the next [`BufRing::publish`], a
//! single release store of the tail, done once per loop turn before submitting.

use std::io;
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::types::BufRingEntry;

use crate::sys::syscall::syscall;

/// A provided buffer ring and its buffers.
pub(crate) struct BufRing {
    entries: NonNull<BufRingEntry>,
    ring_bytes: usize,
    bufs: NonNull<u8>,
    bufs_bytes: usize,
    count: u16,
    size: u32,
    tail: u16,
    bgid: u16,
}

impl BufRing {
    /// Allocates a ring of `count` buffers (a power of two, at most 32768) of `size` bytes
    /// each, with every buffer already in the ring. Not yet known to any io_uring.
    pub fn new(count: u16, size: u32, bgid: u16) -> io::Result<BufRing> {
        if !count.is_power_of_two() || count > 1 << 15 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "buffer count must be a power of two up to 32768",
            ));
        }
        let ring_bytes = count as usize * size_of::<BufRingEntry>();
        let bufs_bytes = count as usize * size as usize;
        let entries = map(ring_bytes)?.cast::<BufRingEntry>();
        let bufs = match map(bufs_bytes) {
            Ok(bufs) => bufs,
            Err(e) => {
                // SAFETY: `entries` was mapped just above with `ring_bytes`, and is
                // unmapped once, here, before anything used it.
                unsafe { unmap(entries.cast(), ring_bytes) };
                return Err(e);
            }
        };
        let mut ring = BufRing {
            entries,
            ring_bytes,
            bufs,
            bufs_bytes,
            count,
            size,
            tail: 0,
            bgid,
        };
        for bid in 0..count {
            // SAFETY: a new ring: no kernel knows it, and each id is put in once.
            unsafe { ring.recycle(bid) };
        }
        ring.publish();
        Ok(ring)
    }

    /// The buffer group id the ring is registered under.
    pub fn bgid(&self) -> u16 {
        self.bgid
    }

    /// The address of the entry array, for `register_buf_ring_with_flags`.
    pub fn ring_addr(&self) -> u64 {
        self.entries.as_ptr() as u64
    }

    /// How many entries the ring holds.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// The first `len` bytes of buffer `bid`, as the kernel filled them (clamped to the
    /// buffer size).
    ///
    /// # Safety
    ///
    /// `bid` must name a buffer the kernel handed out (a reaped completion named it) and
    /// that has not been recycled since, and the slice must be dropped before `bid` is
    /// recycled: only then is the kernel done writing it and kept from writing it again
    /// while the slice lives (it writes a buffer only after it is published anew).
    pub unsafe fn get(&self, bid: u16, len: usize) -> &[u8] {
        let bid = (bid & (self.count - 1)) as usize;
        let len = len.min(self.size as usize);
        // SAFETY: `bid` < count and `len` <= size, so the range lies inside the buffer
        // mapping; per the caller's promise nothing writes to it while the slice lives.
        unsafe { std::slice::from_raw_parts(self.bufs.as_ptr().add(bid * self.size as usize), len) }
    }

    /// Puts buffer `bid` back at the ring's tail. The kernel sees it after `publish`.
    ///
    /// # Safety
    ///
    /// `bid` must be a buffer the kernel handed out (a reaped completion named it) and
    /// that is not in the ring already, with no slice of it alive: a buffer in the ring
    /// twice could be filled for two completions at once, one of them while it is read.
    pub unsafe fn recycle(&mut self, bid: u16) {
        let bid = bid & (self.count - 1);
        let slot = (self.tail & (self.count - 1)) as usize;
        let addr = self.bufs.as_ptr() as u64 + u64::from(bid) * u64::from(self.size);
        // SAFETY: `slot` < count, so the entry lies inside the mapping. The kernel only
        // reads entries between its head and the published tail, and this slot is past the
        // published tail, so no one else accesses it now. The fields are written one by
        // one because entry 0 also holds the ring's tail.
        unsafe {
            let entry = &mut *self.entries.as_ptr().add(slot);
            entry.set_addr(addr);
            entry.set_len(self.size);
            entry.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    /// Makes every recycled buffer visible to the kernel (one release store).
    pub fn publish(&mut self) {
        // SAFETY: the mapping starts with entry 0, whose last two bytes are the ring's
        // tail; it is 2-byte aligned inside a page-aligned mapping, and the kernel reads it
        // with acquire semantics, which the release store pairs with.
        unsafe {
            let tail = BufRingEntry::tail(self.entries.as_ptr()) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // The driver drops this only after its io_uring is gone with no operation in
        // flight (or never registered it), so the kernel no longer reads the entries or
        // writes the buffers.
        // SAFETY: both mappings were made by `map` with these lengths in `new`, and are
        // unmapped once, here.
        unsafe {
            unmap(self.entries.cast(), self.ring_bytes);
            unmap(self.bufs, self.bufs_bytes);
        }
    }
}

/// An anonymous, private, read-write mapping of `len` bytes (page-aligned, zeroed).
fn map(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping with no address hint touches no existing
    // memory; the result is checked before use.
    let addr = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(addr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))
}

/// Unmaps `len` bytes at `addr`.
///
/// # Safety
///
/// `addr` and `len` must be a mapping made by [`map`], unmapped once, with nothing (the
/// kernel included) using it any more.
unsafe fn unmap(addr: NonNull<u8>, len: usize) {
    // SAFETY: the caller's promise: our own mapping, unused from now on.
    if let Err(e) = unsafe { syscall!(munmap(addr.as_ptr().cast(), len)) } {
        log::warn!("munmap of a buffer ring: {e}");
    }
}

/// A buffer ring no kernel knows (never registered), for the criterion benches: the
/// user-space half of consuming and recycling a buffer.
#[cfg(feature = "sim")]
pub(crate) struct UnregisteredBufRing(BufRing);

#[cfg(feature = "sim")]
impl UnregisteredBufRing {
    /// A ring of `count` (a power of two) buffers of `size` bytes.
    pub fn new(count: u16, size: u32) -> io::Result<UnregisteredBufRing> {
        BufRing::new(count, size, 0).map(UnregisteredBufRing)
    }

    /// Reads buffer `bid` as a completion of `len` bytes would, and puts it back.
    pub fn consume_and_recycle(&mut self, bid: u16, len: usize) -> u8 {
        // SAFETY: the ring was never registered, so no kernel writes its buffers; the
        // slice is dropped before the buffer is recycled.
        let first = unsafe { self.0.get(bid, len) }
            .first()
            .copied()
            .unwrap_or(0);
        // SAFETY: no kernel knows this ring; the bench hands each id out and back in
        // turn, like a completion would, and the slice above is gone.
        unsafe { self.0.recycle(bid) };
        first
    }

    /// Publishes the tail.
    pub fn publish(&mut self) {
        self.0.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_disjoint_and_recycled_in_ring_order() {
        let mut ring = BufRing::new(8, 128, 0).unwrap();
        // SAFETY: the ring is registered with no kernel: nothing writes its buffers.
        let (b0, b1, b7) = unsafe { (ring.get(0, 128), ring.get(1, 128), ring.get(7, 500)) };
        assert_eq!(b1.as_ptr() as usize - b0.as_ptr() as usize, 128);
        assert_eq!(b7.len(), 128, "reads are clamped to the buffer size");
        // SAFETY: no kernel knows the ring; the test only checks the tail.
        unsafe { ring.recycle(3) };
        ring.publish();
        // SAFETY: test-only read of the published tail through the same address.
        let tail = unsafe { *BufRingEntry::tail(ring.entries.as_ptr()) };
        assert_eq!(tail, 9);
    }

    #[test]
    fn rejects_counts_that_are_not_powers_of_two() {
        assert!(BufRing::new(6, 128, 0).is_err());
    }
}
