//! `PrivateHeap`: the whole heap. Routes each request by size to layer 2
//! (pools) or layer 1 (medium and huge blocks), and implements
//! `GlobalAlloc` and `allocator_api2::alloc::Allocator`.

use crate::chunk::ChunkKind;
use crate::config::SMALL_REQUEST_THRESHOLD;
use crate::lock::SpinLock;
use crate::os::{OsPages, PageSource};
use crate::pool::SmallCore;
use crate::raw::RawHeap;
use crate::size_class::{block_size, class_of};
use crate::stats::Stats;
use allocator_api2::alloc::{AllocError, Allocator};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{NonNull, null_mut};
use parking_lot::lock_api::{Mutex, RawMutex};

/// A private heap managed in layers, as CPython's memory manager.
///
/// Use it as the global allocator:
///
/// ```
/// #[global_allocator]
/// static HEAP: pymalloc::PrivateHeap = pymalloc::PrivateHeap::new();
///
/// let v: Vec<u64> = (0..1000).collect();
/// assert_eq!(v.iter().sum::<u64>(), 499_500);
/// assert!(HEAP.stats().bytes_in_use >= 8000);
/// ```
///
/// or as the allocator of some collections, which all give their memory back
/// when the heap is dropped:
///
/// ```
/// use allocator_api2::vec::Vec;
/// let heap = pymalloc::PrivateHeap::new();
/// let mut v = Vec::new_in(&heap);
/// v.extend_from_slice(b"hello");
/// assert_eq!(heap.stats().bytes_requested, v.capacity());
/// ```
///
/// `S` supplies OS pages ([`OsPages`] by default); `R` is the lock type. The
/// default [`SpinLock`] never allocates, so the heap can be the global
/// allocator; a heap that never is may use `parking_lot::RawMutex`.
pub struct PrivateHeap<S: PageSource = OsPages, R: RawMutex = SpinLock> {
    /// Layer 1.
    raw: RawHeap<S, R>,
    /// Layer 2, under its own lock so small and medium requests do not
    /// contend. Lock order: `small` before `raw`.
    small: Mutex<R, SmallCore>,
}

impl PrivateHeap {
    /// An empty heap on the OS's pages. `const`: usable in a `static`, maps
    /// nothing until the first allocation, needs no initialisation call.
    pub const fn new() -> Self {
        Self::with_source(OsPages)
    }

    /// An empty heap that never maps more than `bytes` from the OS at once.
    /// Past the bound, allocation fails cleanly (null, `AllocError`, a
    /// failed `try_reserve`) and a failed realloc leaves its block valid.
    ///
    /// ```
    /// use allocator_api2::vec::Vec;
    /// let heap = pymalloc::PrivateHeap::with_limit(8 << 20);
    /// let mut v: Vec<u8, _> = Vec::new_in(&heap);
    /// assert!(v.try_reserve(1 << 20).is_ok());
    /// assert!(v.try_reserve(64 << 20).is_err());
    /// heap.set_limit(128 << 20);
    /// assert!(v.try_reserve(64 << 20).is_ok());
    /// ```
    pub const fn with_limit(bytes: usize) -> Self {
        Self::with_source_and_limit(OsPages, bytes)
    }
}

impl Default for PrivateHeap {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: PageSource, R: RawMutex> core::fmt::Debug for PrivateHeap<S, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("PrivateHeap")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// A `NonNull` dangling pointer aligned to `align`, for zero-sized blocks.
#[inline]
fn dangling(align: usize) -> NonNull<u8> {
    // SAFETY: alignments are non-zero.
    unsafe { NonNull::new_unchecked(core::ptr::without_provenance_mut(align)) }
}

impl<S: PageSource, R: RawMutex> PrivateHeap<S, R> {
    /// An empty heap taking its pages from `source`.
    pub const fn with_source(source: S) -> Self {
        Self::with_source_and_limit(source, usize::MAX)
    }

    /// An empty heap taking its pages from `source`, bounded to `limit`
    /// bytes mapped at once.
    pub const fn with_source_and_limit(source: S, limit: usize) -> Self {
        Self {
            raw: RawHeap::with_source_and_limit(source, limit),
            small: Mutex::const_new(R::INIT, SmallCore::new()),
        }
    }

    /// The most bytes this heap may map from the OS (`usize::MAX`: no
    /// bound).
    pub fn limit(&self) -> usize {
        self.raw.limit()
    }

    /// Changes the bound at run time. Lowering it below what is mapped now
    /// unmaps nothing by itself; new mappings fail until usage drops.
    pub fn set_limit(&self, bytes: usize) {
        self.raw.set_limit(bytes);
    }

    /// Gives back to the OS everything the heap holds but does not use: the
    /// pages of every empty pool (without waiting for the purge delay), the
    /// spare arena, cached empty pools, the spare medium chunk and the whole
    /// pages inside free medium blocks. Live blocks are untouched.
    ///
    /// ```
    /// let heap = pymalloc::PrivateHeap::new();
    /// use allocator_api2::boxed::Box;
    /// let v: Vec<Box<[u8; 64], &pymalloc::PrivateHeap>> =
    ///     (0..100_000).map(|_| Box::new_in([0; 64], &heap)).collect();
    /// drop(v);
    /// heap.trim();
    /// assert!(heap.stats().bytes_mapped <= 1 << 20);
    /// ```
    pub fn trim(&self) {
        let mut small = self.small.lock();
        small.trim(&self.raw);
        self.raw.trim();
    }

    /// The heap's layer 1, which the raw domain uses directly.
    pub fn raw(&self) -> &RawHeap<S, R> {
        &self.raw
    }

    /// A snapshot of the heap's counters. Takes both locks briefly; does not
    /// allocate.
    pub fn stats(&self) -> Stats {
        let small = self.small.lock().snapshot(&self.raw);
        let raw = self.raw.stats();
        Stats {
            bytes_requested: small.bytes_requested + raw.bytes_requested,
            bytes_in_use: small.bytes_in_use + raw.bytes_in_use,
            bytes_mapped: raw.bytes_mapped,
            small,
            raw,
        }
    }

    /// Checks every invariant of both layers (see [`RawHeap::validate`] and
    /// the pool and arena lists); panics with a description on the first
    /// violation. O(pools + medium blocks); for tests, not for the global
    /// allocator's hot paths.
    pub fn validate(&self) {
        let small = self.small.lock();
        small.validate();
        self.raw.validate();
    }

    /// Usable bytes of a live block: at least the size it was allocated or
    /// last resized with. Found from the address alone, in O(1).
    ///
    /// # Safety
    ///
    /// `ptr` is a live block allocated by this heap (not a zero-sized
    /// allocation's dangling pointer). A pointer no pymalloc heap owns is
    /// reported and aborts the process.
    pub unsafe fn usable_size(&self, ptr: NonNull<u8>) -> usize {
        let (header, ptr) = self.raw.find_own_block(ptr, "PrivateHeap::usable_size");
        // SAFETY: `header` is the live chunk holding `ptr` (map invariant),
        // and `ptr` is a live block in it (caller).
        unsafe {
            match (*header.as_ptr()).kind {
                ChunkKind::Arena => block_size(SmallCore::class_of_block(
                    header.as_ptr().cast(),
                    ptr.as_ptr(),
                )),
                _ => RawHeap::<S, R>::block_usable_size(header, ptr),
            }
        }
    }

    /// Allocates `size` bytes at `align`; also tells whether the block is
    /// known to read zero.
    #[inline]
    fn alloc_inner(&self, size: usize, align: usize) -> Option<(NonNull<u8>, bool)> {
        match self.try_alloc(size, align) {
            Some(found) => Some(found),
            None => self.alloc_after_trim(size, align),
        }
    }

    #[inline]
    fn try_alloc(&self, size: usize, align: usize) -> Option<(NonNull<u8>, bool)> {
        if let Some(class) = class_of(size, align) {
            let mut small = self.small.lock();
            let block = small.alloc(&self.raw, class, size)?;
            return Some((block.ptr, block.zeroed));
        }
        self.raw.alloc_block(size, align).map(|b| (b.ptr, b.zeroed))
    }

    /// A bounded heap at its limit may still hold spares (an empty arena, an
    /// empty medium chunk) that the other layer could use: give them back
    /// and try once more.
    #[cold]
    #[inline(never)]
    fn alloc_after_trim(&self, size: usize, align: usize) -> Option<(NonNull<u8>, bool)> {
        if self.limit() == usize::MAX {
            return None;
        }
        self.trim();
        self.try_alloc(size, align)
    }

    /// Frees a live block that was requested with `size` bytes.
    ///
    /// # Safety
    ///
    /// `ptr` is a live, non-zero-sized block of this heap, requested (or last
    /// resized) with `size` bytes, and is not used afterwards.
    #[inline]
    unsafe fn free_inner(&self, ptr: NonNull<u8>, size: usize) {
        let (header, ptr) = self.raw.find_own_block(ptr, "PrivateHeap::dealloc");
        // SAFETY: `header` is the chunk holding `ptr`, and `ptr` is a live
        // block of this heap (caller).
        unsafe {
            if (*header.as_ptr()).kind == ChunkKind::Arena {
                let mut small = self.small.lock();
                small.free(&self.raw, header.as_ptr().cast(), ptr, size);
            } else {
                self.raw.free_block(header, ptr, size);
            }
        }
    }

    /// Moves or resizes a live block from `old_size` bytes to `new_size`
    /// bytes at `new_align`, keeping the first `min(old, new)` bytes. Stays
    /// in place when the block already fits without much waste. On failure
    /// the old block is untouched.
    ///
    /// # Safety
    ///
    /// `ptr` is a live, non-zero-sized block of this heap requested with
    /// `old_size` bytes; `new_size` is non-zero, `new_align` a power of two.
    /// On success the old pointer must not be used again.
    unsafe fn realloc_inner(
        &self,
        ptr: NonNull<u8>,
        old_size: usize,
        new_size: usize,
        new_align: usize,
    ) -> Option<NonNull<u8>> {
        let (header, ptr) = self.raw.find_own_block(ptr, "PrivateHeap::realloc");
        if ptr.as_ptr().addr() & (new_align - 1) == 0 {
            // SAFETY: `header` is the chunk of live block `ptr` (caller).
            if unsafe { self.resize_in_place(header, ptr, old_size, new_size) } {
                return Some(ptr);
            }
        }
        let (new, _) = self.alloc_inner(new_size, new_align)?;
        // SAFETY: both blocks are live, distinct, and hold at least
        // `min(old_size, new_size)` bytes; the old one is freed once.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr.as_ptr(), new.as_ptr(), old_size.min(new_size));
            self.free_inner(ptr, old_size);
        }
        Some(new)
    }

    /// Keeps block `ptr` where it is for `new_size` bytes if that wastes
    /// little: a small block that holds the new size and is not shrunk by a
    /// quarter or more (CPython's rule), a medium block that can grow into a
    /// free neighbour or shrink (but stays over the small threshold), a huge
    /// block that still holds it and is at most half empty.
    ///
    /// # Safety
    ///
    /// `header` is the chunk (from the arena map) of live block `ptr`, which
    /// was requested with `old_size` bytes.
    unsafe fn resize_in_place(
        &self,
        header: NonNull<crate::chunk::ChunkHeader>,
        ptr: NonNull<u8>,
        old_size: usize,
        new_size: usize,
    ) -> bool {
        // SAFETY: `header` is the live chunk of live block `ptr` (caller).
        unsafe {
            if (*header.as_ptr()).kind == ChunkKind::Arena {
                let size = block_size(SmallCore::class_of_block(
                    header.as_ptr().cast(),
                    ptr.as_ptr(),
                ));
                if new_size > size || (new_size < old_size && 4 * new_size <= 3 * size) {
                    return false;
                }
                let mut small = self.small.lock();
                small.resized_in_place(header.as_ptr().cast(), ptr.as_ptr(), old_size, new_size);
                return true;
            }
            new_size > SMALL_REQUEST_THRESHOLD
                && self
                    .raw
                    .resize_in_place(header, ptr, old_size, new_size)
                    .is_some()
        }
    }
}

// SAFETY: GlobalAlloc contract: blocks come from distinct live regions of the
// heap and are aligned as asked (class and TLSF alignment rules, checked by
// the tests); `dealloc`/`realloc` accept exactly the pointers `alloc`
// returned; no method unwinds (failure is null) or re-enters the global
// allocator (the locks never allocate).
unsafe impl<S: PageSource + Sync, R: RawMutex + Sync> GlobalAlloc for PrivateHeap<S, R> {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.alloc_inner(layout.size(), layout.align())
            .map_or(null_mut(), |(p, _)| p.as_ptr())
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.alloc_inner(layout.size(), layout.align()) {
            Some((p, zeroed)) => {
                if !zeroed {
                    // SAFETY: the block holds at least `layout.size()` bytes.
                    unsafe { p.as_ptr().write_bytes(0, layout.size()) };
                }
                p.as_ptr()
            }
            None => null_mut(),
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` is a live block of this heap allocated with `layout`
        // (GlobalAlloc::dealloc contract), hence non-null.
        unsafe { self.free_inner(NonNull::new_unchecked(ptr), layout.size()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is a live block allocated with `layout`, `new_size`
        // is non-zero and valid with `layout.align()` (GlobalAlloc::realloc
        // contract).
        unsafe {
            self.realloc_inner(
                NonNull::new_unchecked(ptr),
                layout.size(),
                new_size,
                layout.align(),
            )
        }
        .map_or(null_mut(), NonNull::as_ptr)
    }
}

// SAFETY: Allocator contract: returned blocks stay valid until deallocated
// or the heap is dropped (the `&PrivateHeap` borrow outlives every block);
// copies of `&PrivateHeap` are the same allocator; zero-sized blocks are
// dangling, aligned pointers that are never passed to the heap; grow/shrink
// keep contents and leave the old block valid on failure.
unsafe impl<S: PageSource + Sync, R: RawMutex + Sync> Allocator for &PrivateHeap<S, R> {
    #[inline]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(NonNull::slice_from_raw_parts(dangling(layout.align()), 0));
        }
        let (p, _) = self
            .alloc_inner(layout.size(), layout.align())
            .ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    #[inline]
    fn allocate_zeroed(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(NonNull::slice_from_raw_parts(dangling(layout.align()), 0));
        }
        // SAFETY: the size is non-zero.
        let p = unsafe { GlobalAlloc::alloc_zeroed(*self, layout) };
        let p = NonNull::new(p).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }

    #[inline]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: a non-zero-sized block of this heap (Allocator contract).
            unsafe { self.free_inner(ptr, layout.size()) }
        }
    }

    unsafe fn grow(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.size() == 0 {
            return self.allocate(new);
        }
        // SAFETY: `ptr` is a live block allocated with `old` (contract).
        let p = unsafe { self.realloc_inner(ptr, old.size(), new.size(), new.align()) }
            .ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, new.size()))
    }

    unsafe fn grow_zeroed(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if old.size() == 0 {
            return self.allocate_zeroed(new);
        }
        // SAFETY: as for `grow`.
        let p = unsafe { self.grow(ptr, old, new) }?;
        // SAFETY: the block holds `new.size() >= old.size()` bytes.
        unsafe {
            p.cast::<u8>()
                .as_ptr()
                .add(old.size())
                .write_bytes(0, new.size() - old.size())
        };
        Ok(p)
    }

    unsafe fn shrink(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        if new.size() == 0 {
            // SAFETY: `ptr` was allocated with `old` (contract).
            unsafe { self.deallocate(ptr, old) };
            return Ok(NonNull::slice_from_raw_parts(dangling(new.align()), 0));
        }
        // SAFETY: `ptr` is a live, non-zero-sized block with `old` (contract,
        // and `old.size() >= new.size() > 0`).
        let p = unsafe { self.realloc_inner(ptr, old.size(), new.size(), new.align()) }
            .ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, new.size()))
    }
}
