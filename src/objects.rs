//! Layer 3: object-specific allocators on a [`PrivateHeap`].
//!
//! The source article's top layer: "several object-specific allocators
//! operate on the same heap and implement distinct memory management
//! policies adapted to the peculiarities of every object type". CPython
//! keeps free lists for floats, tuples, lists and dicts; an
//! [`ObjectPool<T>`] is that for one Rust type: its memory comes from a
//! heap (counted in the heap's statistics and limit), and it applies its
//! own reuse policy on top.
//!
//! # Policies ([`ObjectPolicy`])
//!
//! * **Bounded LIFO free list** (always): freed objects are kept, up to
//!   `max_free`, and handed out last-in first-out, so a new object lands
//!   in memory that is still in cache. Past `max_free`, a freed object goes
//!   back to the heap at once: a burst of frees does not pin memory, as
//!   CPython caps each type's free list.
//! * **Zeroize** (`zeroize: true`), for types holding secrets (keys,
//!   tokens): a freed object's bytes are overwritten with zeros (volatile
//!   writes, which the optimiser may not drop) before it is kept or given
//!   back, so no secret outlives its object in the heap; a reused object
//!   reads all zeros.
//! * **Slabs** (`slab: Some(n)`), for tree and list nodes allocated and
//!   freed in bulk: objects are carved from slabs of `n`, packed at
//!   `size_of::<T>()` (no size-class rounding: a 24-byte node takes 24
//!   bytes, not the pool's 32), one heap call per `n` objects. Freed objects
//!   go to the free list (unbounded: a slab's memory cannot be returned
//!   piecemeal); the slabs go back to the heap when the pool is dropped, or
//!   at [`ObjectPool::trim`] once no object is live.
//!
//! A pool is used from one thread (`!Sync`): its free list is a plain
//! linked list, with no atomics. Use one pool per thread, or the heap
//! itself, across threads.
//!
//! ```
//! use allocator_api2::boxed::Box;
//! use pymalloc::{ObjectPolicy, ObjectPool, PrivateHeap};
//!
//! let heap = PrivateHeap::new();
//! let pool = ObjectPool::<[u64; 3]>::with_policy(&heap, ObjectPolicy { slab: Some(64), ..Default::default() });
//! // The pool serves `[u64; 3]` only: a `[i32; 3]` would go to the heap.
//! let a = Box::new_in([1u64, 2, 3], &pool);
//! let b = Box::new_in([4u64, 5, 6], &pool);
//! assert_eq!(a[2] + b[0], 7);
//! assert_eq!(pool.stats().live, 2);
//! ```

use crate::heap::PrivateHeap;
use crate::lock::SpinLock;
use crate::os::{OsPages, PageSource};
use allocator_api2::alloc::{AllocError, Allocator};
use core::alloc::Layout;
use core::cell::Cell;
use core::marker::PhantomData;
use core::ptr::{NonNull, null_mut};
use parking_lot::lock_api::RawMutex;

/// How an [`ObjectPool`] reuses memory (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectPolicy {
    /// Most freed objects kept for reuse (ignored with slabs, whose free
    /// objects are all kept). CPython keeps 80 floats or 80 lists.
    pub max_free: usize,
    /// Overwrite every freed object with zeros.
    pub zeroize: bool,
    /// Carve objects from slabs of this many, packed densely.
    pub slab: Option<usize>,
}

impl Default for ObjectPolicy {
    fn default() -> Self {
        Self {
            max_free: 80,
            zeroize: false,
            slab: None,
        }
    }
}

/// Counters of an [`ObjectPool`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ObjectStats {
    /// Objects allocated and not yet freed.
    pub live: usize,
    /// Freed objects kept for reuse.
    pub free: usize,
    /// Allocations served from the free list.
    pub reused: usize,
    /// Objects taken from the heap (or carved from a slab).
    pub fresh: usize,
    /// Freed objects given back to the heap because the free list was full.
    pub released: usize,
    /// Slabs held.
    pub slabs: usize,
}

/// A typed allocator for `T` on a [`PrivateHeap`], with its own reuse
/// policy. Implements [`Allocator`] (for `&ObjectPool`): layouts of `T` are
/// served by the pool, any other layout by the heap directly, so a
/// collection may use it for mixed layouts too. (So `Box::new_in(x, &pool)`
/// takes the pool's path only if `x`'s type has `T`'s layout: mind integer
/// literals' default type; [`ObjectPool::alloc`] takes a `T` and cannot
/// miss.) [`ObjectStats::fresh`] and [`ObjectStats::reused`] show which
/// path was taken.
///
/// Its memory handling lives in an untyped core, and the pool's type
/// mentions `T` only through `PhantomData<fn() -> T>`, so `T` may borrow
/// the pool itself (a tree node whose children are boxes in the same pool).
pub struct ObjectPool<'h, T, S: PageSource = OsPages, R: RawMutex = SpinLock> {
    core: ObjectCore<'h, S, R>,
    _marker: PhantomData<fn() -> T>,
}

/// The untyped part of an [`ObjectPool`]: slots of `slot` bytes at `align`.
///
/// Invariants: every block on `free` is a slot of this pool holding no
/// value, linked through its first word; in slab mode every slot lies in a
/// slab on `slabs`, and `bump..bump_end` is the never-used tail of the
/// newest slab; in heap mode `free` holds at most `policy.max_free` slots.
struct ObjectCore<'h, S: PageSource, R: RawMutex> {
    heap: &'h PrivateHeap<S, R>,
    policy: ObjectPolicy,
    slot: usize,
    align: usize,
    free: Cell<*mut u8>,
    bump: Cell<*mut u8>,
    bump_end: Cell<usize>,
    /// Slab mode: every slab, linked through the slab's first slot.
    slabs: Cell<*mut u8>,
    stats: Cell<ObjectStats>,
}

impl<'h, T, S: PageSource, R: RawMutex> ObjectPool<'h, T, S, R> {
    /// A pool for `T` on `heap`, with the default policy (a LIFO free list
    /// of up to 80 objects).
    pub fn new(heap: &'h PrivateHeap<S, R>) -> Self {
        Self::with_policy(heap, ObjectPolicy::default())
    }

    /// A pool for `T` on `heap` with `policy`.
    ///
    /// # Panics
    ///
    /// If `policy.slab` is `Some(0)`.
    pub fn with_policy(heap: &'h PrivateHeap<S, R>, policy: ObjectPolicy) -> Self {
        assert!(policy.slab != Some(0), "a slab holds at least one object");
        // A slot holds a `T` or a free-list link, at the alignment of both.
        let align = align_of::<T>().max(align_of::<usize>());
        let slot = size_of::<T>().max(size_of::<usize>()).div_ceil(align) * align;
        Self {
            core: ObjectCore {
                heap,
                policy,
                slot,
                align,
                free: Cell::new(null_mut()),
                bump: Cell::new(null_mut()),
                bump_end: Cell::new(0),
                slabs: Cell::new(null_mut()),
                stats: Cell::new(ObjectStats::default()),
            },
            _marker: PhantomData,
        }
    }

    /// The pool's policy.
    pub fn policy(&self) -> ObjectPolicy {
        self.core.policy
    }

    /// The pool's counters.
    pub fn stats(&self) -> ObjectStats {
        self.core.stats.get()
    }

    /// Memory for one `T` (uninitialised): the most recently freed object,
    /// else a new one. Err only when the heap is exhausted.
    pub fn alloc_slot(&self) -> Result<NonNull<T>, AllocError> {
        if size_of::<T>() == 0 {
            return Ok(NonNull::dangling());
        }
        self.core.alloc().map(NonNull::cast)
    }

    /// Returns the memory of one `T` (already dropped) to the pool.
    ///
    /// # Safety
    ///
    /// `p` came from `alloc_slot` of this pool, holds no live value, and is
    /// not used afterwards.
    pub unsafe fn free_slot(&self, p: NonNull<T>) {
        if size_of::<T>() != 0 {
            // SAFETY: caller's contract.
            unsafe { self.core.free(p.cast()) }
        }
    }

    /// Gives every kept free object back to the heap (heap-backed mode), or
    /// every slab if no object is live (slab mode). Returns the bytes given
    /// back.
    pub fn trim(&self) -> usize {
        self.core.trim()
    }

    /// Moves `value` into the pool: an owning handle that drops the value
    /// and returns its memory to the pool.
    ///
    /// ```
    /// let heap = pymalloc::PrivateHeap::new();
    /// let pool = pymalloc::ObjectPool::new(&heap);
    /// let mut h = pool.alloc(String::from("abc")).unwrap();
    /// h.push('d');
    /// assert_eq!(*h, "abcd");
    /// assert_eq!(h.into_inner(), "abcd");
    /// assert_eq!(pool.stats().free, 1);
    /// ```
    pub fn alloc(&self, value: T) -> Result<Obj<'_, 'h, T, S, R>, AllocError> {
        let p = self.alloc_slot()?;
        // SAFETY: fresh memory for one T.
        unsafe { p.as_ptr().write(value) };
        Ok(Obj { ptr: p, pool: self })
    }

    /// Whether `layout` is the one this pool serves.
    fn serves(layout: Layout) -> bool {
        layout.size() == size_of::<T>() && layout.align() == align_of::<T>() && size_of::<T>() != 0
    }
}

impl<S: PageSource, R: RawMutex> ObjectCore<'_, S, R> {
    fn update(&self, f: impl FnOnce(&mut ObjectStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    fn alloc(&self) -> Result<NonNull<u8>, AllocError> {
        let head = self.free.get();
        if let Some(p) = NonNull::new(head) {
            // SAFETY: free-list members are slots of this pool whose first
            // word links the next one.
            self.free.set(unsafe { head.cast::<*mut u8>().read() });
            if self.policy.zeroize {
                // SAFETY: as above; the link is cleared, so the whole
                // object reads zero.
                unsafe { head.cast::<*mut u8>().write(null_mut()) };
            }
            self.update(|s| {
                s.free -= 1;
                s.reused += 1;
                s.live += 1;
            });
            return Ok(p);
        }
        let p = match self.policy.slab {
            Some(n) => self.carve(n)?,
            None => {
                self.heap
                    .alloc_sized(self.slot, self.align)
                    .ok_or(AllocError)?
                    .0
            }
        };
        self.update(|s| {
            s.fresh += 1;
            s.live += 1;
        });
        Ok(p)
    }

    /// A slot from the current slab, or from a new slab of `n` slots.
    fn carve(&self, n: usize) -> Result<NonNull<u8>, AllocError> {
        let p = self.bump.get();
        if !p.is_null() && p.addr() + self.slot <= self.bump_end.get() {
            self.bump.set(p.wrapping_add(self.slot));
            // SAFETY: inside a live slab.
            return Ok(unsafe { NonNull::new_unchecked(p) });
        }
        let bytes = self.slab_bytes(n).ok_or(AllocError)?;
        let (slab, _) = self.heap.alloc_sized(bytes, self.align).ok_or(AllocError)?;
        let slab = slab.as_ptr();
        // SAFETY: a fresh block of `bytes` bytes; its first slot links the
        // slabs.
        unsafe { slab.cast::<*mut u8>().write(self.slabs.get()) };
        self.slabs.set(slab);
        let first = slab.wrapping_add(self.slot);
        self.bump.set(first.wrapping_add(self.slot));
        self.bump_end.set(slab.addr() + bytes);
        self.update(|s| s.slabs += 1);
        // SAFETY: inside the new slab.
        Ok(unsafe { NonNull::new_unchecked(first) })
    }

    /// Bytes of a slab of `n` objects: one extra slot at the front links
    /// the slabs.
    fn slab_bytes(&self, n: usize) -> Option<usize> {
        n.checked_add(1)?.checked_mul(self.slot)
    }

    /// # Safety
    ///
    /// `p` is a slot from `alloc`, holding no value, not used afterwards.
    unsafe fn free(&self, p: NonNull<u8>) {
        let p = p.as_ptr();
        if self.policy.zeroize {
            for i in 0..self.slot {
                // SAFETY: the slot is ours (caller); volatile, so the wipe
                // of memory nobody reads again is not optimised away.
                unsafe { p.add(i).write_volatile(0) };
            }
        }
        if self.policy.slab.is_none() && self.stats.get().free >= self.policy.max_free {
            // SAFETY: a heap block of `slot` bytes from `alloc_sized`.
            unsafe { self.heap.free_sized(NonNull::new_unchecked(p), self.slot) };
            self.update(|s| {
                s.live -= 1;
                s.released += 1;
            });
            return;
        }
        // SAFETY: the slot holds at least a word.
        unsafe { p.cast::<*mut u8>().write(self.free.get()) };
        self.free.set(p);
        self.update(|s| {
            s.live -= 1;
            s.free += 1;
        });
    }

    fn trim(&self) -> usize {
        match self.policy.slab {
            None => {
                let mut given = 0;
                let mut p = self.free.replace(null_mut());
                while let Some(block) = NonNull::new(p) {
                    // SAFETY: free-list members are heap blocks of `slot`
                    // bytes, linked through their first word.
                    unsafe {
                        p = p.cast::<*mut u8>().read();
                        self.heap.free_sized(block, self.slot);
                    }
                    given += self.slot;
                }
                self.update(|s| s.free = 0);
                given
            }
            Some(n) if self.stats.get().live == 0 => self.release_slabs(n),
            Some(_) => 0,
        }
    }

    /// Frees every slab; no object may be live in them.
    fn release_slabs(&self, n: usize) -> usize {
        let bytes = self.slab_bytes(n).unwrap_or(0);
        let mut given = 0;
        let mut slab = self.slabs.replace(null_mut());
        while let Some(block) = NonNull::new(slab) {
            // SAFETY: slabs are heap blocks of `bytes` bytes, linked through
            // their first slot, with no live object (caller).
            unsafe {
                slab = slab.cast::<*mut u8>().read();
                self.heap.free_sized(block, bytes);
            }
            given += bytes;
        }
        self.free.set(null_mut());
        self.bump.set(null_mut());
        self.bump_end.set(0);
        self.update(|s| {
            s.free = 0;
            s.slabs = 0;
        });
        given
    }
}

impl<S: PageSource, R: RawMutex> Drop for ObjectCore<'_, S, R> {
    fn drop(&mut self) {
        // Live objects borrow the pool, so none is live here (a leaked one
        // stays in memory that is given back below, unused): free objects
        // go back to the heap, slabs with them.
        match self.policy.slab {
            Some(n) => {
                self.release_slabs(n);
            }
            None => {
                self.trim();
            }
        }
    }
}

impl<T, S: PageSource, R: RawMutex> core::fmt::Debug for ObjectPool<'_, T, S, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ObjectPool")
            .field("type", &core::any::type_name::<T>())
            .field("policy", &self.core.policy)
            .field("stats", &self.core.stats.get())
            .finish()
    }
}

/// An owning handle to a `T` in an [`ObjectPool`]: dereferences to the
/// value; dropping it drops the value and returns the memory to the pool.
pub struct Obj<'p, 'h, T, S: PageSource = OsPages, R: RawMutex = SpinLock> {
    ptr: NonNull<T>,
    pool: &'p ObjectPool<'h, T, S, R>,
}

impl<T, S: PageSource, R: RawMutex> Obj<'_, '_, T, S, R> {
    /// Moves the value out and returns the memory to the pool.
    pub fn into_inner(self) -> T {
        let this = core::mem::ManuallyDrop::new(self);
        // SAFETY: the handle owns a live value, moved out once; the slot is
        // then returned, and the handle is not dropped.
        unsafe {
            let value = this.ptr.as_ptr().read();
            this.pool.free_slot(this.ptr);
            value
        }
    }
}

impl<T, S: PageSource, R: RawMutex> core::ops::Deref for Obj<'_, '_, T, S, R> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the handle owns a live value.
        unsafe { self.ptr.as_ref() }
    }
}

impl<T, S: PageSource, R: RawMutex> core::ops::DerefMut for Obj<'_, '_, T, S, R> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the handle owns a live value, uniquely.
        unsafe { self.ptr.as_mut() }
    }
}

impl<T, S: PageSource, R: RawMutex> Drop for Obj<'_, '_, T, S, R> {
    fn drop(&mut self) {
        // SAFETY: the handle owns a live value: dropped, then its slot
        // returned once.
        unsafe {
            self.ptr.as_ptr().drop_in_place();
            self.pool.free_slot(self.ptr);
        }
    }
}

impl<T: core::fmt::Debug, S: PageSource, R: RawMutex> core::fmt::Debug for Obj<'_, '_, T, S, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        (**self).fmt(f)
    }
}

// SAFETY: Allocator contract: blocks for `T`'s layout come from the pool
// and go back to it, any other layout is served and freed by the heap
// (decided by the layout alone, so `deallocate` routes each block to where
// it came from); blocks stay valid while the pool lives (the `&` borrow);
// grow/shrink are the trait's (allocate, copy, deallocate), which moves a
// block between the pool and the heap when its layout changes class.
unsafe impl<T, S: PageSource + Sync, R: RawMutex + Sync> Allocator for &ObjectPool<'_, T, S, R> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if ObjectPool::<T, S, R>::serves(layout) {
            let p = self.alloc_slot()?;
            return Ok(NonNull::slice_from_raw_parts(p.cast(), layout.size()));
        }
        self.core.heap.allocate(layout)
    }

    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if ObjectPool::<T, S, R>::serves(layout) {
            // SAFETY: a slot of this pool (same layout test at allocation).
            unsafe { self.free_slot(ptr.cast()) };
        } else {
            // SAFETY: a block of the heap with `layout` (contract).
            unsafe { self.core.heap.deallocate(ptr, layout) };
        }
    }
}

impl<S: PageSource, R: RawMutex> PrivateHeap<S, R> {
    /// An [`ObjectPool`] for `T` on this heap, with the default policy.
    ///
    /// ```
    /// use allocator_api2::boxed::Box;
    /// let heap = pymalloc::PrivateHeap::new();
    /// let floats = heap.objects::<f64>();
    /// let x = Box::new_in(1.5, &floats);
    /// assert_eq!(*x * 2.0, 3.0);
    /// ```
    pub fn objects<T>(&self) -> ObjectPool<'_, T, S, R> {
        ObjectPool::new(self)
    }
}
