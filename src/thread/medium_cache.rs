//! [`MediumCache`]: medium blocks a thread freed, kept for its own reuse.
//!
//! Medium blocks (above the small threshold, up to
//! `config::MEDIUM_CACHE_MAX`) are served by layer 1's TLSF allocator under
//! a lock. A thread that frees one keeps it here instead, in one of 104 bins
//! (`MEDIUM_CACHE_BIN_STEPS` per doubling of size), and its next request of
//! that bin pops it with no lock and no atomic read-modify-write. A request
//! is rounded up to its bin's bound when it goes to layer 1, which fits it
//! exactly, so every block of a bin holds just the bin's bound and serves
//! every request of it ([ref:bin-bound]). At most `MEDIUM_CACHE_BYTES` are
//! kept per thread and heap (or one block, whatever its size); a bounded
//! heap keeps none (its limit must see every free block). `trim()` and
//! thread exit give the blocks back.

use crate::config::MEDIUM_CACHE_BYTES;
pub(crate) use crate::raw::medium::medium_bin;
use crate::raw::medium::{MARK_OFFSET, MEDIUM_BINS, bin_bound};
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::AtomicUsize;
use core::sync::atomic::Ordering::Relaxed;

/// Frees the cache could not take between two collections of idle bins
/// (see [`MediumCache::overflowed`]).
const GC_INTERVAL: u32 = 32;

/// One thread's cache of freed medium blocks, for one heap: one LIFO list
/// per bin, linked through the blocks' first word; the second word holds
/// the block's usable size, the third the free mark.
///
/// Invariants: only the owning thread (or a holder of the heap's lock,
/// while the thread heap is an orphan) touches the bins and writes the
/// counters; `stats()` reads the counters from any thread. Every cached
/// block is a live medium block of the heap with exactly `bin_bound(bin)`
/// usable bytes; `bytes` and `blocks` sum what the bins hold.
///
/// A full cache does not keep what it holds forever: every `GC_INTERVAL`
/// frees it had to refuse, the bins no allocation took from since the
/// last such collection are emptied (jemalloc's tcache collects idle bins
/// likewise), so a thread whose sizes change caches its new ones.
pub(crate) struct MediumCache {
    bins: [*mut u8; MEDIUM_BINS],
    /// Whether each bin served an allocation since the last collection.
    used: [bool; MEDIUM_BINS],
    /// Frees refused since the last collection.
    refused: u32,
    /// Requested bytes freed into the cache minus those allocated from it
    /// (wrapping), plus the thread's direct medium and huge requests (see
    /// `ThreadHeap::add_medium_requested`).
    requested: AtomicUsize,
    /// Usable bytes held.
    bytes: AtomicUsize,
    /// Blocks held.
    blocks: AtomicUsize,
}

/// The word of a cached block that holds the free mark, after the cache's
/// link and the block's size ([ref:free-mark]); layer 1 marks the blocks
/// it frees in the same word.
const MARK_WORD: usize = MARK_OFFSET / size_of::<usize>();

/// What a cache holds, for `stats()`: (requested delta, usable bytes,
/// blocks).
pub(crate) type CacheCounters = (usize, usize, usize);

/// Usable bytes of the smallest block a bin takes.
const MIN_CACHED: usize = bin_bound(0);
const _: () = assert!(MIN_CACHED > (MARK_WORD + 1) * size_of::<usize>());

/// The bin a freed block of `usable` bytes joins: the one whose bound it
/// holds exactly. Every cached block holds its bin's bound exactly, so the
/// fast path, which counts a block by its request's bin, counts what the
/// block holds ([ref:bin-bound]); a block that holds more (one allocated
/// over-aligned) is not cached.
#[inline]
fn bin_of_usable(usable: usize) -> Option<usize> {
    match medium_bin(usable) {
        Some((bin, bound)) if bound == usable => Some(bin),
        _ => None,
    }
}

/// Adds `delta` (wrapping) to a counter only its owner writes: a load and
/// a store, no read-modify-write.
#[inline(always)]
pub(crate) fn add_owned(counter: &AtomicUsize, delta: usize) {
    counter.store(counter.load(Relaxed).wrapping_add(delta), Relaxed);
}

impl MediumCache {
    pub(crate) const fn new() -> Self {
        Self {
            bins: [null_mut(); MEDIUM_BINS],
            used: [false; MEDIUM_BINS],
            refused: 0,
            requested: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            blocks: AtomicUsize::new(0),
        }
    }

    /// Whether a block of `usable` bytes fits a bin (holds exactly a bin's
    /// bound), so that [`Self::push`] takes it unless the cache is full.
    #[inline]
    pub(crate) fn takes(usable: usize) -> bool {
        bin_of_usable(usable).is_some()
    }

    /// A cached block for a request of `size` bytes in `bin`.
    ///
    /// # Safety
    ///
    /// The caller owns `this` (see the invariants); `bin` is
    /// `medium_bin(size)`'s. Accessed in place: `stats()` may read the
    /// counters meanwhile.
    #[inline]
    pub(crate) unsafe fn pop(this: *mut Self, bin: usize, size: usize) -> Option<NonNull<u8>> {
        // SAFETY: caller's contract; cached blocks are live medium blocks
        // holding (next, usable) in their first two words.
        unsafe {
            let head = *(*this).bins.get_unchecked(bin);
            let block = NonNull::new(head)?;
            crate::valgrind::defined(head, 2 * size_of::<usize>());
            let usable = head.cast::<usize>().add(1).read();
            *(*this).bins.get_unchecked_mut(bin) = head.cast::<*mut u8>().read();
            *(*this).used.get_unchecked_mut(bin) = true;
            crate::harden::clear_mark(head.cast::<usize>().add(MARK_WORD));
            add_owned(&(*this).requested, size);
            add_owned(&(*this).bytes, usable.wrapping_neg());
            add_owned(&(*this).blocks, usize::MAX);
            Some(block)
        }
    }

    /// Whether medium block `ptr` (`usable` bytes), being freed, holds its
    /// heap's free `mark`, as cached blocks do: for a block whose header
    /// says used, it is in some thread's cache already (a double free).
    /// Checked on the medium frees that read the header (the blocks layer
    /// 1 holds free carry the mark too, but their headers say so first);
    /// the sized free's fast path checks the mark alone.
    ///
    /// # Safety
    ///
    /// `ptr` is a medium block with `usable` usable bytes that the caller
    /// is freeing.
    #[inline]
    pub(crate) unsafe fn is_cached(ptr: NonNull<u8>, usable: usize, mark: usize) -> bool {
        // A block too small for every bin is never cached (and holds
        // more than the mark's word: `MIN_CACHED` is over 512).
        // SAFETY: caller's contract; the word is inside the block.
        usable >= MIN_CACHED
            && unsafe {
                crate::harden::is_marked(ptr.as_ptr().cast::<usize>().add(MARK_WORD), mark)
            }
    }

    /// Keeps freed medium block `ptr` (`usable` bytes, requested with
    /// `size`), marked with its heap's free `mark`, in the bin whose bound
    /// it holds exactly; `false` if it fits no bin or the cache is full,
    /// and then the caller frees it.
    ///
    /// # Safety
    ///
    /// The caller owns `this`; `ptr` is a live medium block of the cache's
    /// heap with `usable` usable bytes, not used afterwards if `true` is
    /// returned.
    #[inline]
    pub(crate) unsafe fn push(
        this: *mut Self,
        ptr: NonNull<u8>,
        usable: usize,
        size: usize,
        mark: usize,
    ) -> bool {
        let Some(bin) = bin_of_usable(usable) else {
            return false;
        };
        // SAFETY: caller's contract; `bin`'s bound is `usable`.
        unsafe { Self::push_in(this, bin, ptr, usable, size, mark) }
    }

    /// [`Self::push`] into the bin of the request size `size`, the fast
    /// path's, which does not read the block's header: the block holds
    /// exactly the bin's bound ([ref:bin-bound]).
    ///
    /// # Safety
    ///
    /// As for [`Self::push`], with `ptr` a medium block of the default
    /// alignment requested (or last resized) with `size` bytes, a size of
    /// a bin.
    #[cfg(not(any(miri, feature = "hardened")))]
    #[inline(always)]
    pub(crate) unsafe fn push_sized(
        this: *mut Self,
        ptr: NonNull<u8>,
        size: usize,
        mark: usize,
    ) -> bool {
        let Some((bin, bound)) = medium_bin(size) else {
            return false;
        };
        // SAFETY: caller's contract; the block holds `bound` bytes.
        unsafe { Self::push_in(this, bin, ptr, bound, size, mark) }
    }

    /// Keeps `ptr` in `bin` if the cache has room.
    ///
    /// # Safety
    ///
    /// As for [`Self::push`], with `bin_bound(bin) == usable`.
    #[inline(always)]
    unsafe fn push_in(
        this: *mut Self,
        bin: usize,
        ptr: NonNull<u8>,
        usable: usize,
        size: usize,
        mark: usize,
    ) -> bool {
        // SAFETY: as for `pop`; the block is ours to write.
        unsafe {
            let cached = (*this).bytes.load(Relaxed);
            if cached + usable > MEDIUM_CACHE_BYTES && cached != 0 {
                return false;
            }
            let p = ptr.as_ptr();
            crate::harden::put_mark(p.cast::<usize>().add(MARK_WORD), mark);
            crate::valgrind::defined(p, 2 * size_of::<usize>());
            p.cast::<*mut u8>().write(*(*this).bins.get_unchecked(bin));
            p.cast::<usize>().add(1).write(usable);
            crate::valgrind::noaccess(p, 2 * size_of::<usize>());
            *(*this).bins.get_unchecked_mut(bin) = p;
            add_owned(&(*this).requested, size.wrapping_neg());
            (*this).bytes.store(cached + usable, Relaxed);
            add_owned(&(*this).blocks, 1);
        }
        true
    }

    /// Counts a free the cache refused; `true` once every `GC_INTERVAL`,
    /// when the caller should [`Self::collect_idle`] and try again.
    ///
    /// # Safety
    ///
    /// The caller owns `this`.
    #[inline]
    pub(crate) unsafe fn overflowed(this: *mut Self) -> bool {
        // SAFETY: caller's contract.
        unsafe {
            (*this).refused += 1;
            if (*this).refused < GC_INTERVAL {
                return false;
            }
            (*this).refused = 0;
        }
        true
    }

    /// Empties the bins that served no allocation since the last
    /// collection, passing each block to `free` (as [`Self::drain`] does);
    /// returns how many blocks went.
    ///
    /// # Safety
    ///
    /// The caller owns `this`.
    #[cold]
    pub(crate) unsafe fn collect_idle(this: *mut Self, mut free: impl FnMut(NonNull<u8>)) -> usize {
        // SAFETY: caller's contract.
        unsafe {
            let used = core::mem::replace(&mut (*this).used, [false; MEDIUM_BINS]);
            (0..MEDIUM_BINS)
                .filter(|&bin| !used[bin])
                .map(|bin| Self::empty_bin(this, bin, &mut free))
                .sum()
        }
    }

    /// Passes every block of `bin` to `free`, uncounted; returns how many.
    ///
    /// # Safety
    ///
    /// The caller owns `this`; `bin < MEDIUM_BINS`.
    unsafe fn empty_bin(this: *mut Self, bin: usize, free: &mut impl FnMut(NonNull<u8>)) -> usize {
        let mut freed = 0;
        // SAFETY: as for `pop`.
        unsafe {
            let mut p = core::mem::replace(&mut (*this).bins[bin], null_mut());
            while let Some(block) = NonNull::new(p) {
                crate::valgrind::defined(p, 2 * size_of::<usize>());
                crate::harden::clear_mark(p.cast::<usize>().add(MARK_WORD));
                let usable = p.cast::<usize>().add(1).read();
                p = p.cast::<*mut u8>().read();
                add_owned(&(*this).bytes, usable.wrapping_neg());
                add_owned(&(*this).blocks, usize::MAX);
                free(block);
                freed += 1;
            }
        }
        freed
    }

    /// Empties the cache, passing each block to `free` (which gives it back
    /// to layer 1 as requested with 0 bytes: the requested bytes left the
    /// counters when it was cached).
    ///
    /// # Safety
    ///
    /// The caller owns `this`.
    pub(crate) unsafe fn drain(this: *mut Self, mut free: impl FnMut(NonNull<u8>)) {
        for bin in 0..MEDIUM_BINS {
            // SAFETY: caller's contract.
            unsafe { Self::empty_bin(this, bin, &mut free) };
        }
    }

    /// Forgets every block (the heap is being dropped with its chunks).
    ///
    /// # Safety
    ///
    /// The caller owns `this`.
    pub(crate) unsafe fn forget(this: *mut Self) {
        // SAFETY: caller's contract.
        unsafe { (*this).bins = [null_mut(); MEDIUM_BINS] };
    }

    /// Adds `delta` (wrapping) to the requested-bytes counter.
    ///
    /// # Safety
    ///
    /// The caller owns `this`.
    pub(crate) unsafe fn add_requested(this: *mut Self, delta: usize) {
        // SAFETY: caller's contract; only the owner writes the counter.
        unsafe { add_owned(&(*this).requested, delta) }
    }

    /// The counters, read from any thread.
    ///
    /// # Safety
    ///
    /// `this` is live.
    pub(crate) unsafe fn counters(this: *const Self) -> CacheCounters {
        // SAFETY: caller's contract; the counters are atomic.
        unsafe {
            (
                (*this).requested.load(Relaxed),
                (*this).bytes.load(Relaxed),
                (*this).blocks.load(Relaxed),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{MEDIUM_CACHE_BIN_STEPS, MEDIUM_CACHE_MAX, SMALL_REQUEST_THRESHOLD};

    #[test]
    fn medium_bins_serve_their_requests() {
        let mut last = (0, 0);
        // Every size natively; under Miri, every 251st and the bins' bounds.
        let step = if cfg!(miri) { 251 } else { 1 };
        let mut sizes: Vec<usize> = (SMALL_REQUEST_THRESHOLD + 1..=MEDIUM_CACHE_MAX)
            .step_by(step)
            .chain((0..MEDIUM_BINS).map(bin_bound))
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        for size in sizes {
            let (bin, bound) = medium_bin(size).unwrap();
            assert!(bin < MEDIUM_BINS);
            assert!(
                bound >= size && bound - size <= size / MEDIUM_CACHE_BIN_STEPS as usize,
                "{size}"
            );
            assert_eq!(bound, bin_bound(bin));
            assert!(bin == last.0 || bin == last.0 + 1, "bins are contiguous");
            assert!(
                bin == 0 || size > bin_bound(bin - 1),
                "{size} fits a smaller bin"
            );
            if bin == last.0 + 1 {
                assert!(last.1 < size);
            }
            last = (bin, bound);
            // A block allocated for the bin goes back to it; any other
            // size is not cached.
            assert_eq!(bin_of_usable(bound), Some(bin));
            assert_eq!(bin_of_usable(bound + 16), None);
            assert_eq!(bin_of_usable(bound - 16), None);
        }
        assert_eq!(last.0, MEDIUM_BINS - 1);
        assert_eq!(medium_bin(SMALL_REQUEST_THRESHOLD), None);
        assert_eq!(medium_bin(MEDIUM_CACHE_MAX + 1), None);
        assert_eq!(bin_of_usable(bin_bound(0) - 1), None);
        assert_eq!(bin_of_usable(usize::MAX / 2), None);
    }

    #[test]
    fn cache_is_lifo_per_bin_and_bounded() {
        let mut cache = MediumCache::new();
        let this = &raw mut cache;
        let size = 1000;
        let (bin, bound) = medium_bin(size).unwrap();
        let mut blocks: Vec<Vec<u128>> = (0..3).map(|_| vec![0; bound.div_ceil(16)]).collect();
        let ptrs: Vec<NonNull<u8>> = blocks
            .iter_mut()
            .map(|b| NonNull::new(b.as_mut_ptr().cast::<u8>()).unwrap())
            .collect();
        // SAFETY: the "blocks" are ours and live for the test.
        unsafe {
            for &p in &ptrs {
                assert!(MediumCache::push(this, p, bound, size, 1));
            }
            assert_eq!(
                MediumCache::counters(this),
                (size.wrapping_neg().wrapping_mul(3), 3 * bound, 3)
            );
            assert_eq!(MediumCache::pop(this, bin, size), Some(ptrs[2]));
            assert_eq!(MediumCache::pop(this, bin + 1, size + 200), None);
            // Too big for what is left of the budget (a bin's bound).
            assert!(!MediumCache::push(
                this,
                ptrs[2],
                MEDIUM_CACHE_BYTES,
                size,
                1
            ));
            let mut drained = Vec::new();
            MediumCache::drain(this, |b| drained.push(b));
            assert_eq!(drained, [ptrs[1], ptrs[0]]);
            let (_, bytes, n) = MediumCache::counters(this);
            assert_eq!((bytes, n), (0, 0));
            // Collection: a bin that served an allocation since the last
            // one keeps its blocks; an idle bin is emptied.
            assert!(MediumCache::push(this, ptrs[0], bound, size, 1));
            assert_eq!(MediumCache::collect_idle(this, |_| {}), 0, "bin was used");
            let mut collected = Vec::new();
            assert_eq!(MediumCache::collect_idle(this, |b| collected.push(b)), 1);
            assert_eq!(collected, [ptrs[0]]);
            assert_eq!(MediumCache::counters(this).1, 0);
            assert!((0..GC_INTERVAL - 1).all(|_| !MediumCache::overflowed(this)));
            assert!(MediumCache::overflowed(this));
            // An empty cache takes one block past the budget, and no more.
            assert!(MediumCache::push(this, ptrs[0], MEDIUM_CACHE_MAX, size, 1));
            assert!(!MediumCache::push(this, ptrs[1], bound, size, 1));
            MediumCache::drain(this, |_| {});
        }
    }
}
