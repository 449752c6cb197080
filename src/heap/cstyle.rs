//! The C-style, size-less interface of [`PrivateHeap`]: `malloc`, `calloc`,
//! `resize` (C's `realloc`, renamed so as not to shadow
//! `GlobalAlloc::realloc`), `free` and `usable_size`, as C code and
//! CPython's `PyMem_*` functions expect them. Blocks are aligned to [`ALIGNMENT`] (16 bytes:
//! any fundamental type); `free` and `resize` take no size, since the arena
//! map finds every block's size from its address.
//!
//! Statistics count a size-less block as requesting its whole usable size
//! (a `malloc(10)` counts 16 bytes requested), so that `free`, which knows
//! only the usable size, takes back exactly what `malloc` counted.

use crate::config::ALIGNMENT;
use crate::heap::PrivateHeap;
use crate::os::PageSource;
use crate::raw::chunk::{ChunkHeader, ChunkKind};
use crate::small::arena::Arena;
use crate::small::pool::Pool;
use crate::small::size_class::{block_size, class_of};
use crate::thread::ThreadHeap;
use crate::thread::medium_cache::{MediumCache, medium_bin};
use crate::trace::hook as trace;
use core::alloc::Layout;
use core::ptr::NonNull;
use parking_lot::lock_api::RawMutex;

impl<S: PageSource, R: RawMutex> PrivateHeap<S, R> {
    /// `n` uninitialised bytes aligned to 16, or null if memory is
    /// exhausted or `n > isize::MAX`. `n == 0` gives a distinct, non-null
    /// pointer (as for one byte), which `free` accepts.
    ///
    /// ```
    /// let heap = pymalloc::PrivateHeap::new();
    /// let p = heap.malloc(100);
    /// assert!(!p.is_null() && p as usize % 16 == 0);
    /// // SAFETY: `p` is a live block of `heap`, freed once.
    /// unsafe { heap.free(p) };
    /// ```
    #[inline]
    pub fn malloc(&self, n: usize) -> *mut u8 {
        let p = self.malloc_with(n, false);
        trace::allocated(p, n);
        p
    }

    /// `nelem * elsize` zeroed bytes aligned to 16, or null if the product
    /// overflows, exceeds `isize::MAX`, or memory is exhausted.
    ///
    /// ```
    /// let heap = pymalloc::PrivateHeap::new();
    /// let p = heap.calloc(10, 8);
    /// // SAFETY: `p` holds 80 zeroed bytes.
    /// unsafe {
    ///     assert!(std::slice::from_raw_parts(p, 80).iter().all(|&b| b == 0));
    ///     heap.free(p);
    /// }
    /// assert!(heap.calloc(usize::MAX, 2).is_null());
    /// ```
    pub fn calloc(&self, nelem: usize, elsize: usize) -> *mut u8 {
        match nelem.checked_mul(elsize) {
            Some(n) => {
                let p = self.malloc_with(n, true);
                trace::allocated(p, n);
                p
            }
            None => core::ptr::null_mut(),
        }
    }

    /// `n` uninitialised bytes aligned to `align` (a power of two; smaller
    /// than 16 means 16), or null. Freed with [`free`](Self::free).
    ///
    /// ```
    /// let heap = pymalloc::PrivateHeap::new();
    /// let p = heap.malloc_aligned(4096, 100);
    /// assert_eq!(p as usize % 4096, 0);
    /// // SAFETY: a live block of `heap`, freed once.
    /// unsafe { heap.free(p) };
    /// ```
    pub fn malloc_aligned(&self, align: usize, n: usize) -> *mut u8 {
        if !align.is_power_of_two() {
            return core::ptr::null_mut();
        }
        let p = self.malloc_in(n, align.max(ALIGNMENT), false);
        trace::allocated(p, n);
        p
    }

    #[inline(always)]
    fn malloc_with(&self, n: usize, zeroed: bool) -> *mut u8 {
        self.malloc_in(n, ALIGNMENT, zeroed)
    }

    /// The C-style allocation: a small request, for its whole block, takes
    /// the inline fast path of `alloc`; the rest is out of line.
    #[inline(always)]
    fn malloc_in(&self, n: usize, align: usize, zeroed: bool) -> *mut u8 {
        // A small request asks for its whole block, so it needs no
        // correction of the requested bytes afterwards.
        if let Some(class) = class_of(n.max(1), align) {
            let size = block_size(class);
            let Some(p) = self.alloc_fast(size, align) else {
                return core::ptr::null_mut();
            };
            if zeroed {
                // SAFETY: the block holds `size` bytes.
                unsafe { p.as_ptr().write_bytes(0, size) };
            }
            return p.as_ptr();
        }
        self.malloc_large(n, align, zeroed)
    }

    /// A request larger than small. Out of line: inlined, its medium
    /// path would cost the small one registers.
    #[inline(never)]
    fn malloc_large(&self, n: usize, align: usize, zeroed: bool) -> *mut u8 {
        // A medium request asks for its bin's bound, as a small one for
        // its block: the thread's medium cache serves it at once, and the
        // block (which holds exactly the bound, [ref:bin-bound]) frees
        // through the sized fast path too, counted as what it holds. (Not
        // where medium blocks may be mapped alone, holding more: a bounded
        // heap's, [`RawHeap::sized_frees`](crate::raw::RawHeap).)
        if align <= ALIGNMENT
            && !zeroed
            && self.raw().sized_frees()
            && let Some((bin, bound)) = medium_bin(n)
        {
            let Some(p) = self.alloc_medium_fast(bin, bound) else {
                return core::ptr::null_mut();
            };
            // SAFETY: a medium block just allocated, with its chunk's
            // provenance.
            debug_assert_eq!(unsafe { crate::raw::medium::usable_size(p) }, bound);
            return p.as_ptr();
        }
        if n > isize::MAX as usize {
            return core::ptr::null_mut();
        }
        let size = n.max(1);
        if Layout::from_size_align(size, align).is_err() {
            return core::ptr::null_mut();
        }
        let Some((p, fresh)) = self.alloc_sized(size, align) else {
            return core::ptr::null_mut();
        };
        if zeroed && !fresh {
            // SAFETY: the block holds at least `size` bytes.
            unsafe { p.as_ptr().write_bytes(0, size) };
        }
        // SAFETY: `p` is a live block of this heap requested with `size`.
        unsafe { self.count_whole_block(p, size) };
        p.as_ptr()
    }

    /// Resizes block `p` to `n` bytes, keeping its first `min(old, n)`
    /// bytes, in place when it can. `p` null: `malloc(n)`. `n == 0`:
    /// resized to a minimal block, not freed; the result is non-null. On
    /// failure returns null and `p` stays valid and unchanged.
    ///
    /// ```
    /// let heap = pymalloc::PrivateHeap::new();
    /// let p = heap.malloc(4);
    /// // SAFETY: `p` and each result are live blocks of `heap`.
    /// unsafe {
    ///     p.write_bytes(7, 4);
    ///     let q = heap.resize(p, 10_000);
    ///     assert_eq!(*q.add(3), 7);
    ///     let r = heap.resize(q, 0);
    ///     assert!(!r.is_null());
    ///     heap.free(r);
    /// }
    /// ```
    ///
    /// # Safety
    ///
    /// `p` is null or a live block of this heap from `malloc`, `calloc` or
    /// `resize`; after a non-null result, `p` must not be used again.
    pub unsafe fn resize(&self, p: *mut u8, n: usize) -> *mut u8 {
        let Some(old) = NonNull::new(p) else {
            return self.malloc(n);
        };
        if n > isize::MAX as usize {
            return core::ptr::null_mut();
        }
        let size = n.max(1);
        trace::realloc(p, n, || {
            // SAFETY: a live size-less block, counted as requesting its
            // whole usable size (caller).
            unsafe {
                let old_size = self.usable_size(old);
                match self.realloc_sized(old, old_size, size, ALIGNMENT) {
                    Some(new) => {
                        self.count_whole_block(new, size);
                        new.as_ptr()
                    }
                    None => core::ptr::null_mut(),
                }
            }
        })
    }

    /// Frees a block from `malloc`, `calloc` or `resize`; null is a no-op.
    /// A pointer no pymalloc heap gave out is reported and aborts.
    ///
    /// # Safety
    ///
    /// `p` is null or a live block of this heap from `malloc`, `calloc` or
    /// `resize`, not used afterwards.
    #[inline]
    pub unsafe fn free(&self, p: *mut u8) {
        if let Some(p) = NonNull::new(p) {
            trace::freeing(p.as_ptr());
            let (header, p) = self.raw().find_own_block(p, "PrivateHeap::free");
            // SAFETY: a live size-less block in chunk `header`, counted with
            // its usable size. A small block's chunk is its arena.
            unsafe {
                if (*header.as_ptr()).kind == ChunkKind::Arena {
                    let pool = Arena::pool_of(header.as_ptr().cast(), p.as_ptr());
                    self.free_small(pool, p, block_size(Pool::class(pool)));
                } else {
                    self.free_larger_sizeless(header, p);
                }
            }
        }
    }

    /// [`Self::free`] of a medium or huge block. A medium block that holds
    /// exactly a bin's bound (every block of an unaligned request does,
    /// [ref:bin-bound]) is freed as a sized free of that size, through the
    /// medium fast path (which, but under Miri and `hardened`, does not
    /// look the map up again). A block of an aligned request may hold any
    /// size, even a small one: freed through its chunk, never counted as
    /// a bin's. Out of line: the small path keeps its registers.
    ///
    /// # Safety
    ///
    /// As for `free`, with `header` the (medium or huge) chunk of `p`, and
    /// `p` carrying its provenance.
    #[inline(never)]
    unsafe fn free_larger_sizeless(&self, header: NonNull<ChunkHeader>, p: NonNull<u8>) {
        // SAFETY: caller's contract; a medium block's usable size is what
        // it was counted with. Its header is checked (a free one is a
        // double free, reported) before the fast path, which sees only the
        // free mark.
        unsafe {
            if (*header.as_ptr()).kind == ChunkKind::Medium {
                let usable = crate::raw::medium::freed_usable_size(p, header.as_ptr().cast());
                if MediumCache::takes(usable) {
                    return self.free_larger(p, usable, ALIGNMENT);
                }
            }
            self.free_in_chunk(header, p, Self::block_usable(header, p));
        }
    }

    /// Counts live block `p`, just allocated or resized for `size` bytes,
    /// as requesting its whole usable size.
    ///
    /// # Safety
    ///
    /// `p` is a live block of this heap requested with `size` bytes.
    unsafe fn count_whole_block(&self, p: NonNull<u8>, size: usize) {
        let (header, p) = self.raw().find_own_block(p, "PrivateHeap::malloc");
        // SAFETY: `p` is live in chunk `header` (caller).
        let extra = unsafe { Self::block_usable(header, p) } - size;
        if extra == 0 {
            return;
        }
        // SAFETY: the chunk header is live while its block is.
        if unsafe { (*header.as_ptr()).kind } == ChunkKind::Arena {
            self.account(extra);
        } else {
            self.count_extra_medium(extra);
        }
    }

    /// Counts `extra` more bytes requested in medium or huge blocks: a
    /// size-less block counts its whole usable size.
    #[cold]
    #[inline(never)]
    fn count_extra_medium(&self, extra: usize) {
        let th = self.thread_heap();
        if th.is_null() {
            self.raw().add_requested(extra);
        } else {
            // SAFETY: the calling thread owns `th`.
            unsafe { ThreadHeap::add_medium_requested(th, extra) };
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::PrivateHeap;

    /// Size-less medium blocks take the thread's medium cache both ways
    /// (a freed block serves the next request of its bin), and count
    /// exactly what they hold.
    #[test]
    fn medium_blocks_round_trip_through_the_thread_cache() {
        let heap = PrivateHeap::new();
        for n in [513, 1000, 4096, 5000, 65_536] {
            let p = heap.malloc(n);
            assert!(!p.is_null());
            // SAFETY: `p` is a live block of `heap` of at least `n` bytes,
            // freed once; so is `q`.
            unsafe {
                let usable = heap.usable_size(core::ptr::NonNull::new(p).unwrap());
                assert!(usable >= n);
                p.write_bytes(0xa5, usable);
                assert_eq!(heap.stats().bytes_requested, usable, "a whole block counts");
                heap.free(p);
                assert!(heap.stats().raw.bytes_cached >= usable, "cached, {n} bytes");
                let q = heap.malloc(n);
                assert_eq!(q, p, "the cached block serves its bin again");
                heap.free(q);
            }
        }
        // An aligned request of a small size is a medium block with a
        // small usable size: freed through the map.
        let a = heap.malloc_aligned(4096, 100);
        // SAFETY: a live block of `heap`, freed once.
        unsafe { heap.free(a) };
        assert_eq!(heap.stats().bytes_requested, 0);
        // Nor does a medium block of an aligned request that holds no
        // bin's bound go to a bin (its next request would overrun it).
        for n in [1100, 5000] {
            let a = heap.malloc_aligned(64, n);
            // SAFETY: a live block of `heap`, freed once.
            unsafe {
                let usable = heap.usable_size(core::ptr::NonNull::new(a).unwrap());
                assert!((n..n + 32).contains(&usable), "no bin's bound: {usable}");
                let cached = heap.stats().raw.bytes_cached;
                heap.free(a);
                assert_eq!(heap.stats().raw.bytes_cached, cached, "{n}: not cached");
            }
        }
        heap.trim();
        assert_eq!(heap.stats().bytes_in_use, 0);
        heap.validate();
    }
}
