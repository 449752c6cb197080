//! [`UsedPools`]: one owner's table of used pools, the table the allocation
//! fast path reads.

use crate::config::NB_SMALL_SIZE_CLASSES;
use crate::small::pool::{Pool, PoolChain, PoolOwner, SmallBlock};
use crate::small::size_class::SizeClass;
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::Ordering::Relaxed;

/// One owner's used pools: `heads[class]` is the head of the doubly linked
/// list of that class's used pools (CPython's `usedpools`). The heap's
/// shared lists and every thread heap have one.
///
/// Invariants: every pool on `heads[class]` is of `class`, owned by this
/// table's owner, and not full; at most one of them is empty (the class's
/// cached empty pool), and if so it is the only pool of the list.
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
    /// owner has no used pool of `class`. A pool that becomes full leaves
    /// the table (used -> full).
    ///
    /// # Safety
    ///
    /// The caller is the owner of this table (holds the small-object lock
    /// for the shared one; is the owning thread for a thread heap's).
    #[inline(always)]
    pub(crate) unsafe fn alloc_block(&mut self, class: SizeClass) -> Option<SmallBlock> {
        debug_assert!(class < NB_SMALL_SIZE_CLASSES);
        // SAFETY: size classes are below `NB_SMALL_SIZE_CLASSES`.
        let pool = unsafe { *self.heads.get_unchecked(class) };
        if pool.is_null() {
            return None;
        }
        // SAFETY: a pool on the table is a used pool of `class` that the
        // caller owns (invariant).
        let (block, full) = unsafe { Pool::take_block(pool, class) };
        if full {
            // SAFETY: `pool` heads `heads[class]`.
            unsafe { self.unlink(pool, class) };
        }
        Some(block)
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
            let class = Pool::class(pool);
            debug_assert!(class < NB_SMALL_SIZE_CLASSES);
            let (was_full, empty) = Pool::put_block(pool, ptr);
            if was_full {
                self.link(pool, class);
            }
            if empty && !(*self.heads.get_unchecked(class) == pool && (*pool).next.is_null()) {
                self.unlink(pool, class);
                return Freed::Emptied;
            }
        }
        Freed::Kept
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
                    assert!(count < pool.capacity, "full pool {p:p} on usedpools");
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
