//! The C-style, size-less interface of layer 1 alone: `malloc`, `calloc`,
//! `resize`, `free` on a [`RawHeap`] (the raw domain of the PyMem
//! interface).

use crate::config::ALIGNMENT;
use crate::os::PageSource;
use crate::raw::RawHeap;
use core::ptr::NonNull;
use parking_lot::lock_api::RawMutex;

impl<S: PageSource, R: RawMutex> RawHeap<S, R> {
    /// As [`PrivateHeap::malloc`](crate::PrivateHeap::malloc), from layer 1 alone (every size from the
    /// medium allocator or a mapping; no pools).
    ///
    /// ```
    /// let raw = pymalloc::RawHeap::new();
    /// let p = raw.malloc(10);
    /// // SAFETY: a live block of `raw`, resized then freed once.
    /// unsafe {
    ///     let q = raw.resize(p, 100_000);
    ///     assert!(!q.is_null());
    ///     raw.free(q);
    /// }
    /// assert_eq!(raw.stats().bytes_in_use, 0);
    /// ```
    pub fn malloc(&self, n: usize) -> *mut u8 {
        self.malloc_with(n, false)
    }

    /// As [`PrivateHeap::calloc`](crate::PrivateHeap::calloc), from layer 1 alone.
    pub fn calloc(&self, nelem: usize, elsize: usize) -> *mut u8 {
        match nelem.checked_mul(elsize) {
            Some(n) => self.malloc_with(n, true),
            None => core::ptr::null_mut(),
        }
    }

    fn malloc_with(&self, n: usize, zeroed: bool) -> *mut u8 {
        if n > isize::MAX as usize {
            return core::ptr::null_mut();
        }
        let size = n.max(1);
        let Some(block) = self.alloc_block(size, ALIGNMENT) else {
            return core::ptr::null_mut();
        };
        crate::valgrind::malloclike(block.ptr.as_ptr(), size, block.zeroed);
        if zeroed && !block.zeroed {
            // SAFETY: the block holds at least `size` bytes.
            unsafe { block.ptr.as_ptr().write_bytes(0, size) };
        }
        // SAFETY: a live block of ours, requested with `size`.
        let usable = unsafe { self.usable_size(block.ptr) };
        self.add_requested(usable - size);
        block.ptr.as_ptr()
    }

    /// As [`PrivateHeap::resize`](crate::PrivateHeap::resize), from layer 1 alone.
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
        let (header, old) = self.find_own_block(old, "RawHeap::resize");
        // SAFETY: a live size-less block of ours, counted with its usable
        // size (caller).
        unsafe {
            let old_size = Self::block_usable_size(header, old);
            let in_place = crate::valgrind::resize_in_place(old.as_ptr(), old_size, size, || {
                self.resize_in_place(header, old, old_size, size, size)
            });
            if let Some(usable) = in_place {
                self.add_requested(usable - size);
                return old.as_ptr();
            }
            if let Some((moved, usable)) = self.realloc_huge(header, old, old_size, size, ALIGNMENT)
            {
                self.add_requested(usable - size);
                return moved.as_ptr();
            }
            // Memcheck cannot follow a block that moves onto itself.
            if size > old_size
                && !cfg!(feature = "valgrind")
                && let Some((moved, usable)) = self.grow_backward(header, old, old_size, size, size)
            {
                self.add_requested(usable - size);
                return moved.as_ptr();
            }
            let new = self.malloc(size);
            if !new.is_null() {
                self.count_copy(header, old_size.min(size));
                core::ptr::copy_nonoverlapping(old.as_ptr(), new, old_size.min(size));
                crate::valgrind::freelike(old.as_ptr());
                self.free_block(header, old, old_size);
            }
            new
        }
    }

    /// As [`PrivateHeap::free`](crate::PrivateHeap::free), for blocks of this layer's `malloc`.
    ///
    /// # Safety
    ///
    /// `p` is null or a live block of this heap from `malloc`, `calloc` or
    /// `resize`, not used afterwards.
    pub unsafe fn free(&self, p: *mut u8) {
        if let Some(p) = NonNull::new(p) {
            let (header, p) = self.find_own_block(p, "RawHeap::free");
            crate::valgrind::freelike(p.as_ptr());
            // SAFETY: a live size-less block, counted with its usable size.
            unsafe {
                let size = Self::block_usable_size(header, p);
                self.free_block(header, p, size);
            }
        }
    }
}
