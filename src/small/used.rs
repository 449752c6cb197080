//! [`UsedPools`]: one owner's table of used pools, the table the allocation
//! fast path reads.

use crate::config::NB_SMALL_SIZE_CLASSES;
use crate::small::pool::{Pool, PoolChain, PoolOwner};
use crate::small::size_class::SizeClass;
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::Ordering::Relaxed;

/// One owner's used pools: `heads[class]` is the head of the doubly linked
/// list of that class's used pools (CPython's `usedpools`). The heap's
/// shared lists and every thread heap have one.
///
/// Invariants: every pool on `heads[class]` is of `class`, owned by this
/// table's owner, and not marked full (it may have every block allocated
/// until an allocation finds it so and marks it); at most one of them is
/// empty (the class's cached empty pool), and if so it is the only pool of
/// the list.
pub(crate) struct UsedPools {
    heads: [*mut Pool; NB_SMALL_SIZE_CLASSES],
}

/// What freeing a block did to its pool.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Freed {
    /// The pool stays with its owner.
    Kept,
    /// The pool became empty and left the owner's table: the caller gives
    /// it back to its arena (`SmallHeap::release_pool`).
    Emptied,
}

impl UsedPools {
    pub(crate) const fn new() -> Self {
        Self {
            heads: [null_mut(); NB_SMALL_SIZE_CLASSES],
        }
    }

    /// Allocates a block of `class` from the first used pool; `None` if the
    /// owner has no used pool of `class` with a block left.
    ///
    /// # Safety
    ///
    /// The caller is the owner of this table (holds the small-object lock
    /// for the shared one; is the owning thread for a thread heap's).
    #[inline]
    pub(crate) unsafe fn alloc_block(&mut self, class: SizeClass) -> Option<NonNull<u8>> {
        // SAFETY: caller's contract.
        unsafe { self.pop_block(class).or_else(|| self.carve_block(class)) }
    }

    /// The allocation fast path: a pop from the free list of the head pool
    /// of `class`; `None` if there is no pool or its free list is empty
    /// (then [`Self::carve_block`]).
    ///
    /// # Safety
    ///
    /// As `alloc_block`.
    #[inline(always)]
    pub(crate) unsafe fn pop_block(&mut self, class: SizeClass) -> Option<NonNull<u8>> {
        debug_assert!(class < NB_SMALL_SIZE_CLASSES);
        // SAFETY: size classes are below `NB_SMALL_SIZE_CLASSES`.
        let pool = unsafe { *self.heads.get_unchecked(class) };
        if pool.is_null() {
            return None;
        }
        // SAFETY: a pool on the table is a used pool the caller owns.
        unsafe { Pool::pop(pool) }
    }

    /// The head pool of `class` has an empty free list (or there is none):
    /// carve more of its never-used blocks, or mark it full, take it off
    /// the table and try the next; `None` if no pool of `class` has a block
    /// left.
    ///
    /// # Safety
    ///
    /// As `alloc_block`.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn carve_block(&mut self, class: SizeClass) -> Option<NonNull<u8>> {
        loop {
            let pool = self.heads[class];
            if pool.is_null() {
                return None;
            }
            // SAFETY: a pool on the table is a used pool of `class` that the
            // caller owns (invariant).
            unsafe {
                if let Some(block) = Pool::pop(pool) {
                    return Some(block);
                }
                if Pool::carve(pool, class) {
                    return Pool::pop(pool);
                }
                Pool::mark_full(pool);
                self.unlink(pool, class);
            }
        }
    }

    /// Returns block `ptr` to its pool `pool` (full -> used, or used ->
    /// empty). The class's only pool stays on the table when it empties:
    /// an alloc/free pair would otherwise move it to its arena and back
    /// every time.
    ///
    /// # Safety
    ///
    /// The caller owns this table and `pool` is one of its pools (used or
    /// full); `ptr` is a live block of `pool`, not used afterwards.
    #[inline(always)]
    pub(crate) unsafe fn free_block(&mut self, pool: *mut Pool, ptr: NonNull<u8>) -> Freed {
        // SAFETY: caller's contract.
        unsafe {
            if self.put_block(pool, ptr) {
                Freed::Kept
            } else {
                self.free_block_slow(pool)
            }
        }
    }

    /// The inline part of [`Self::free_block`]: puts `ptr` back into
    /// `pool`; `true` if the pool stays where it is, else the caller follows
    /// with [`Self::free_block_slow`]. Split so that a caller's fast path
    /// ends in one out-of-line call with nothing live after it, and saves
    /// no registers for it.
    ///
    /// # Safety
    ///
    /// As for [`Self::free_block`].
    #[inline(always)]
    pub(crate) unsafe fn put_block(&mut self, pool: *mut Pool, ptr: NonNull<u8>) -> bool {
        // SAFETY: caller's contract.
        unsafe {
            // Inline, the case of a class with one pool whose last block
            // comes back: it stays cached (an alloc/free pair must not
            // cost a call).
            !Pool::put(pool, ptr)
                || (Pool::in_use_raw(pool) == 0
                    && *self.heads.get_unchecked(Pool::class(pool)) == pool
                    && (*pool).next.is_null())
        }
    }

    /// `pool` was full (back on the table) or became empty (off the table
    /// unless it is its class's only pool).
    ///
    /// # Safety
    ///
    /// The caller owns this table and `pool`, one of its pools, whose
    /// block was just put back.
    #[cold]
    #[inline(never)]
    pub(crate) unsafe fn free_block_slow(&mut self, pool: *mut Pool) -> Freed {
        // SAFETY: caller's contract.
        unsafe {
            let class = Pool::class(pool);
            debug_assert!(class < NB_SMALL_SIZE_CLASSES);
            if Pool::unmark_full(pool) {
                // A pool holds at least two blocks, so it is not empty.
                // Behind the head: at the head, its one free block would
                // be taken by the next allocation and the one after would
                // find it full again (random frees into nearly full pools
                // would flip them on every other allocation).
                self.link_second(pool, class);
                return Freed::Kept;
            }
            if self.heads[class] == pool && (*pool).next.is_null() {
                return Freed::Kept;
            }
            self.unlink(pool, class);
        }
        Freed::Emptied
    }

    /// Puts used pool `pool`, on no list, at the head of its class's list.
    ///
    /// # Safety
    ///
    /// The caller owns this table and `pool`, a used pool of `class` on no
    /// list.
    pub(crate) unsafe fn link(&mut self, pool: *mut Pool, class: SizeClass) {
        debug_assert!(class < NB_SMALL_SIZE_CLASSES);
        // SAFETY: size classes are below `NB_SMALL_SIZE_CLASSES`.
        let head = unsafe { *self.heads.get_unchecked(class) };
        // SAFETY: `pool` and `head` (if non-null) are live pools of this
        // owner.
        unsafe {
            (*pool).prev = null_mut();
            (*pool).next = head;
            if !head.is_null() {
                (*head).prev = pool;
            }
            *self.heads.get_unchecked_mut(class) = pool;
        }
    }

    /// Puts used pool `pool`, on no list, second on its class's list (first
    /// if the list is empty).
    ///
    /// # Safety
    ///
    /// As for [`Self::link`].
    unsafe fn link_second(&mut self, pool: *mut Pool, class: SizeClass) {
        let head = self.heads[class];
        if head.is_null() {
            // SAFETY: caller's contract.
            return unsafe { self.link(pool, class) };
        }
        // SAFETY: `pool` and `head` (and its successor, if any) are live
        // pools of this owner.
        unsafe {
            let next = (*head).next;
            (*pool).prev = head;
            (*pool).next = next;
            if !next.is_null() {
                (*next).prev = pool;
            }
            (*head).next = pool;
        }
    }

    /// # Safety
    ///
    /// `pool` is on `heads[class]`, owned by the caller.
    unsafe fn unlink(&mut self, pool: *mut Pool, class: SizeClass) {
        // SAFETY: `pool` is on the list; its neighbours are too.
        unsafe {
            let (next, prev) = ((*pool).next, (*pool).prev);
            if !next.is_null() {
                (*next).prev = prev;
            }
            if prev.is_null() {
                *self.heads.get_unchecked_mut(class) = next;
            } else {
                (*prev).next = next;
            }
        }
    }

    /// Takes every class's cached empty pool off the table onto `chain`.
    ///
    /// # Safety
    ///
    /// The caller owns this table.
    pub(crate) unsafe fn take_empty(&mut self, chain: &mut PoolChain) {
        for class in 0..NB_SMALL_SIZE_CLASSES {
            let pool = self.heads[class];
            // SAFETY: pools on the table are live and ours.
            if !pool.is_null() && unsafe { Pool::in_use(pool) } == 0 {
                // SAFETY: `pool` heads `heads[class]`; once off it, it is an
                // empty pool on no list.
                unsafe {
                    self.unlink(pool, class);
                    chain.push(pool);
                }
            }
        }
    }

    /// Forgets every pool (their arenas are being unmapped).
    pub(crate) fn clear(&mut self) {
        self.heads = [null_mut(); NB_SMALL_SIZE_CLASSES];
    }

    /// Checks the table of owner `owner` and each of its pools; panics on a
    /// violation.
    ///
    /// # Safety
    ///
    /// Nothing modifies the table or its pools meanwhile.
    pub(crate) unsafe fn validate(&self, owner: *mut PoolOwner) {
        for (class, &head) in self.heads.iter().enumerate() {
            let mut p = head;
            let mut prev = null_mut();
            let mut empties = 0;
            // SAFETY: pools on the table are live (caller: quiescent).
            unsafe {
                while !p.is_null() {
                    let pool = &*p;
                    assert_eq!(
                        pool.class as usize, class,
                        "pool {p:p} on another class's list"
                    );
                    assert_eq!(
                        pool.prev, prev,
                        "used list of class {class} broken at {p:p}"
                    );
                    assert_eq!(
                        pool.owner.load(Relaxed),
                        owner,
                        "pool {p:p} on a foreign list"
                    );
                    let count = pool.ref_count.load(Relaxed);
                    assert!(count & Pool::FULL == 0, "full pool {p:p} on usedpools");
                    if count == 0 {
                        empties += 1;
                        assert!(empties <= 1, "two empty pools on usedpools[{class}]");
                    }
                    Pool::validate(p);
                    prev = p;
                    p = pool.next;
                }
            }
        }
    }
}
