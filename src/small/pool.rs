//! [`Pool`]: one `POOL_SIZE` run of an arena serving blocks of one size
//! class, and its state machine.
//!
//! # States and transitions
//!
//! ```text
//!                  SmallHeap::take_pool            UsedPools::alloc_block
//!   (empty) ---------------------------> (used) ---------------------------> (full)
//!      ^          empty -> used           |  ^       used -> full (last block)  |
//!      |                                  |  |                                  |
//!      +----------------------------------+  +----------------------------------+
//!        UsedPools::free_block -> Freed::Emptied,   UsedPools::free_block
//!        then SmallHeap::release_pool               full -> used
//!        used -> empty
//! ```
//!
//! [`Pool::state`] tells which state a pool is in from its block count:
//!
//! * *used*: some blocks allocated, some free; on its owner's used-pool
//!   table ([`UsedPools`](super::used::UsedPools)), which the allocation fast
//!   path reads. A pool whose last block is freed while it is the only pool
//!   of its class stays on the table (empty but cached), so an alloc/free
//!   pair does not cycle the pool through its arena.
//! * *full*: every block allocated; on no list (a free moves it back).
//! * *empty*: no block allocated; on its arena's free pools (or never
//!   carved); may be re-initialised for any class.

use crate::config::NB_SMALL_SIZE_CLASSES;
use crate::protocol::RemoteList;
use crate::small::size_class::{SizeClass, block_size, blocks_per_pool};
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicPtr, AtomicU32};

/// Layer 2: one pool, `POOL_SIZE` (16 KiB) bytes of an [`Arena`] that serve
/// blocks of one size class. The `Pool` value is the pool's header; it
/// lives in its arena's first pool, apart from the blocks it describes
/// ([ref:arena-layout]).
///
/// A pool owns its free list (freed blocks linked through their first
/// word), a bump index over never-used blocks, and its count of allocated
/// blocks. Its state (empty, used or full, [`PoolState`]) follows from that
/// count; the transitions are described in this module's source
/// (`src/small/pool.rs`).
///
/// Pools are never created by users: a heap's pools are shown, copied
/// under the heap's lock, by [`PrivateHeap::arenas`](crate::PrivateHeap::arenas)
/// as [`PoolInfo`](crate::PoolInfo) values.
///
/// Invariants:
/// * with `count = ref_count & !FULL`: `0 <= count <= capacity`, and
///   `count + len(free list) + (capacity - bump) == capacity` (blocks
///   freed by other threads and not yet collected by the owner count as
///   allocated); blocks `..bump` were carved (handed out or linked on the
///   free list), blocks `bump..` never touched;
/// * the `FULL` bit of `ref_count` is set iff the pool left its owner's
///   used list because it had no free block left (used -> full); so a
///   pool on a used list has it clear;
/// * a pool with a live block has one owner for as long as it has one:
///   `owner` is a thread heap's identity or null for the heap's shared,
///   locked lists; only the owner touches `freeblock`, `bump`, `ref_count`,
///   `next` and `prev`;
/// * `class` and `capacity` change only under the heap's small-object lock,
///   while the pool is empty and owned by no one;
/// * `emptied_at` is `Some` iff the pool is on the purge queue;
/// * `remote` holds only blocks of this pool, each counted as allocated;
///   its queued bit is set iff the pool is on its owner's inbox of pools
///   or the thread that set it is about to push it there; so an empty pool
///   has an empty, unqueued `remote`.
///
/// Each header is 128 bytes, on cache lines of its own, so neighbouring
/// pools of different owners do not share a line (and a block's header
/// index scales by a shift).
///
/// [`Arena`]: crate::Arena
#[repr(C, align(128))]
pub struct Pool {
    /// Head of the list of freed blocks, linked through their first word.
    pub(super) freeblock: *mut u8,
    /// Neighbours on the owner's used list, or the next pool on the arena's
    /// free pools or on a [`PoolChain`].
    pub(super) next: *mut Pool,
    pub(super) prev: *mut Pool,
    /// First byte of the pool's blocks.
    pub(super) base: *mut u8,
    /// Allocated blocks, plus the `FULL` bit. Written by the owner only (a
    /// load and a store, no read-modify-write); atomic so that `stats()`
    /// may read it from any thread.
    pub(super) ref_count: AtomicU32,
    pub(super) capacity: u32,
    /// Index of the first never-used block.
    pub(super) bump: u32,
    pub(super) class: u8,
    /// The owner (see the invariants). Set under the small-object lock when
    /// the pool leaves or rejoins its arena; read by any thread freeing one
    /// of its blocks.
    pub(super) owner: AtomicPtr<PoolOwner>,
    /// Neighbours on the heap's purge queue of empty, not yet purged pools.
    pub(super) purge_next: *mut Pool,
    /// Pads the fields above (six pointers and 16 bytes) to a cache line
    /// on 32-bit targets too.
    _line: [u8; 48 - 6 * size_of::<usize>()],
    // Second cache line: written by other threads' frees.
    /// Blocks freed by threads other than the owner, not yet collected;
    /// its queued bit is set while the pool is on its owner's inbox of
    /// pools (or about to be pushed there).
    pub(crate) remote: RemoteList<u8>,
    /// Link on the owner's inbox of pools, written by the thread that
    /// queues the pool.
    pub(crate) pending_next: *mut Pool,
    pub(super) purge_prev: *mut Pool,
    /// When the pool became empty, iff it is on the purge queue.
    pub(super) emptied_at: Option<std::time::Instant>,
}

/// The identity of a pool's owner: an opaque address. Layer 2 only compares
/// it; the thread layer makes it from a thread heap's address and turns it
/// back into one, so layer 2 needs no knowledge of thread heaps.
#[repr(C)]
pub(crate) struct PoolOwner {
    _opaque: [u8; 0],
}

/// The state of a pool, from its count of allocated blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolState {
    /// No block allocated: on its arena's free pools (or never carved), or
    /// the one empty pool an owner keeps cached for its class.
    Empty,
    /// Some blocks allocated, some free: on its owner's used-pool table.
    Used,
    /// Every block allocated: on no list until a block is freed.
    Full,
}

// The owner's fast-path fields and the fields other threads write are on
// different cache lines.
#[cfg(not(loom))]
const _: () =
    assert!(core::mem::offset_of!(Pool, remote) >= 64 && core::mem::offset_of!(Pool, owner) < 64);
#[cfg(not(loom))]
const _: () = assert!(size_of::<Pool>() == 128);

/// Bytes carved at once from a pool's never-used tail onto its free list:
/// one page, so a fresh pool's pages are touched only as blocks are needed.
const CARVE_BYTES: usize = 4096;

impl Pool {
    /// Bytes per pool.
    pub const SIZE: usize = crate::config::POOL_SIZE;

    /// The bit of `ref_count` that marks a full pool off its owner's list.
    /// As the top bit, it makes the count negative as an `i32`, so `put`
    /// tells "became empty or was full" with one signed comparison.
    pub(super) const FULL: u32 = 1 << 31;

    /// empty -> used: makes `this` a pool of `class` with every block free,
    /// owned by `owner` (null: the shared lists), blocks starting at `base`.
    ///
    /// # Safety
    ///
    /// `this` is the header of an empty pool of a live arena whose blocks
    /// start at `base`, taken off its arena (or off its owner's spares)
    /// under the small-object lock.
    pub(super) unsafe fn init(
        this: *mut Pool,
        base: *mut u8,
        class: SizeClass,
        owner: *mut PoolOwner,
    ) {
        debug_assert!(class < NB_SMALL_SIZE_CLASSES);
        // SAFETY: caller's contract: the header is ours to overwrite.
        unsafe {
            this.write(Pool {
                freeblock: null_mut(),
                next: null_mut(),
                prev: null_mut(),
                base,
                ref_count: AtomicU32::new(0),
                capacity: blocks_per_pool(class) as u32,
                bump: 0,
                class: class as u8,
                owner: AtomicPtr::new(owner),
                purge_next: null_mut(),
                _line: [0; 48 - 6 * size_of::<usize>()],
                remote: RemoteList::new(),
                pending_next: null_mut(),
                purge_prev: null_mut(),
                emptied_at: None,
            })
        }
    }

    /// Pops the head of `this`'s free list and counts it; `None` if the
    /// list is empty (then [`Self::carve`] may refill it). The allocation
    /// fast path: two loads, two stores.
    ///
    /// # Safety
    ///
    /// The caller owns `this`, a used pool. Fields are accessed in place
    /// (no `&mut` to the header): `stats()` may read `ref_count`
    /// concurrently.
    #[inline(always)]
    pub(super) unsafe fn pop(this: *mut Pool) -> Option<NonNull<u8>> {
        // SAFETY: caller's contract; a free block's first word links the
        // next one and its second holds the free mark (invariant).
        unsafe {
            let block = NonNull::new((*this).freeblock)?;
            let b = block.as_ptr();
            crate::valgrind::defined(b, size_of::<usize>());
            let next = crate::harden::decode(b.cast::<*mut u8>().read(), b);
            #[cfg(feature = "hardened")]
            Self::check_link(this, b, next);
            (*this).freeblock = next;
            crate::harden::clear_mark(b.cast::<usize>().add(1));
            let count = (*this).ref_count.load(Relaxed);
            (*this).ref_count.store(count + 1, Relaxed);
            Some(block)
        }
    }

    /// `hardened`: free block `block` of `this` links to `next`, which must
    /// be null or a block address of the same pool; anything else means
    /// the freed block was written (a use after free, an overflow from the
    /// block before): reported, never followed.
    #[cfg(feature = "hardened")]
    #[inline(always)]
    pub(crate) fn check_link(this: *mut Pool, block: *mut u8, next: *mut u8) {
        if !next.is_null()
            && ((next.addr() ^ block.addr()) >= Self::SIZE
                || !next.addr().is_multiple_of(crate::config::ALIGNMENT))
        {
            Self::corrupted(
                this,
                block,
                "was written after it was freed: its free-list link is corrupted",
            )
        }
    }

    /// Reports misuse found at block `block` of `this`, then aborts.
    #[cold]
    #[inline(never)]
    pub(crate) fn corrupted(this: *mut Pool, block: *mut u8, what: &str) -> ! {
        // SAFETY: `class` of a live pool does not change while it has
        // blocks (invariant).
        let size = block_size(unsafe { (*this).class } as SizeClass);
        crate::fatal::misuse(block, size, "small", what)
    }

    /// `hardened`: `ptr`, being freed, must be the start of a block of
    /// `this`: a pointer into a block, past the pool's blocks, or into a
    /// pool never used is reported. Reads only fields that do not change
    /// while the pool has live blocks, so any thread may check.
    ///
    /// # Safety
    ///
    /// `this` is the header of the pool `ptr` lies in (by address).
    #[cfg(feature = "hardened")]
    #[inline(always)]
    pub(crate) unsafe fn check_freed(this: *mut Pool, ptr: NonNull<u8>) {
        // SAFETY: caller's contract; a header of a never-used pool reads
        // zero, which fails the checks below.
        let (base, class, capacity) =
            unsafe { ((*this).base, (*this).class as SizeClass, (*this).capacity) };
        let offset = ptr.as_ptr().addr().wrapping_sub(base.addr());
        let index = crate::small::size_class::block_index(class, offset);
        if base.is_null() || index.is_none_or(|i| i >= capacity as usize) {
            Self::corrupted(
                this,
                ptr.as_ptr(),
                "is not the start of a block (an interior or stale pointer)",
            )
        }
    }

    /// `hardened`: block `ptr` of `this`, being freed with a layout of
    /// `size` bytes, must hold that many: a larger layout is reported. (A
    /// smaller one is legitimate: a block stays in place when reallocated
    /// to a size it holds, whatever the alignment asked.)
    ///
    /// # Safety
    ///
    /// As for [`Self::check_freed`].
    #[cfg(feature = "hardened")]
    #[inline(always)]
    pub(crate) unsafe fn check_layout(this: *mut Pool, ptr: NonNull<u8>, size: usize) {
        // SAFETY: caller's contract.
        if size > block_size(unsafe { (*this).class } as SizeClass) {
            Self::corrupted(
                this,
                ptr.as_ptr(),
                "was freed with a layout larger than its block",
            )
        }
    }

    /// Marks block `ptr` of `this` free with its heap's `mark`
    /// ([ref:free-mark]); a block already marked is a double free,
    /// reported before anything is written.
    ///
    /// # Safety
    ///
    /// `ptr` is a block of `this` that the caller is freeing.
    #[inline(always)]
    pub(crate) unsafe fn mark_freed(this: *mut Pool, ptr: NonNull<u8>, mark: usize) {
        let slot = ptr.as_ptr().cast::<usize>().wrapping_add(1);
        // SAFETY: caller's contract; blocks are at least two words long.
        if !unsafe { crate::harden::set_mark(slot, mark) } {
            Self::corrupted(this, ptr.as_ptr(), "is already free (double free)")
        }
    }

    /// Links the next page's worth of never-used blocks (at least one) onto
    /// the empty free list of `this`, in address order; `false` if every
    /// block was carved already (the pool is full).
    ///
    /// # Safety
    ///
    /// The caller owns `this`, a used pool of class `class` whose free list
    /// is empty.
    #[cold]
    pub(super) unsafe fn carve(this: *mut Pool, class: SizeClass) -> bool {
        // SAFETY: caller's contract; blocks `bump..capacity` are never-used
        // memory of the pool, so ours to write.
        unsafe {
            debug_assert!((*this).freeblock.is_null());
            let (bump, capacity) = ((*this).bump as usize, (*this).capacity as usize);
            if bump == capacity {
                return false;
            }
            let size = block_size(class);
            let first = (*this).base.add(bump * size);
            // Blocks that start before the end of the page the first lies in.
            let page_end = (first.addr() | (CARVE_BYTES - 1)) + 1;
            let count = (page_end - first.addr())
                .div_ceil(size)
                .min(capacity - bump);
            // Under memcheck a carved block may be memory it saw freed (the
            // pool was used before): its link word is made writable first.
            #[cfg(feature = "hardened")]
            let first = Self::link_shuffled(first, size, count);
            #[cfg(not(feature = "hardened"))]
            {
                let mut block = first;
                for _ in 1..count {
                    let next = block.add(size);
                    Self::set_link(block, next);
                    block = next;
                }
                Self::set_link(block, null_mut());
            }
            (*this).freeblock = first;
            (*this).bump = (bump + count) as u32;
            true
        }
    }

    /// Stores the free-list link of free block `block` (encoded, see
    /// `crate::harden::encode`).
    ///
    /// # Safety
    ///
    /// `block` is a free or never-used block of a pool the caller owns.
    #[inline(always)]
    unsafe fn set_link(block: *mut u8, next: *mut u8) {
        crate::valgrind::defined(block, size_of::<usize>());
        // SAFETY: caller's contract; a block is at least a word long.
        unsafe {
            block
                .cast::<*mut u8>()
                .write(crate::harden::encode(next, block))
        };
        crate::valgrind::noaccess(block, size_of::<usize>());
    }

    /// `hardened`: links `count` never-used blocks of `size` bytes from
    /// `first` in a random order (Fisher-Yates), so the addresses the
    /// next allocations get cannot be told from the last one's; returns
    /// the new head.
    ///
    /// # Safety
    ///
    /// As for [`Self::carve`]: the blocks are never-used memory of a pool
    /// the caller owns.
    #[cfg(feature = "hardened")]
    unsafe fn link_shuffled(first: *mut u8, size: usize, count: usize) -> *mut u8 {
        // Carved blocks start within one page and are ALIGNMENT apart at
        // least.
        const MAX: usize = CARVE_BYTES / crate::config::ALIGNMENT;
        let mut order = [0u16; MAX];
        debug_assert!(count <= MAX);
        for (i, o) in order[..count].iter_mut().enumerate() {
            *o = i as u16;
        }
        // One draw from the shared generator per carve (an atomic add that
        // threads would contend on), then a local xorshift64*.
        let mut state = crate::harden::random() | 1;
        for i in (1..count).rev() {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let bits = state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32;
            order.swap(i, (bits as usize * (i + 1)) >> 32);
        }
        let block = |i: usize| first.wrapping_add(order[i] as usize * size);
        // SAFETY: caller's contract; every index is below `count`.
        unsafe {
            for i in 1..count {
                Self::set_link(block(i - 1), block(i));
            }
            Self::set_link(block(count - 1), null_mut());
        }
        block(0)
    }

    /// Pushes block `ptr` on the free list of `this` and uncounts it.
    /// Returns `true` if the pool needs its owner's attention: it is now
    /// empty, or it was full (off its list, `FULL` set). The free fast
    /// path: one load, three stores, one signed test.
    ///
    /// # Safety
    ///
    /// The caller owns `this` (used or full); `ptr` is a live block of it,
    /// not used afterwards.
    #[inline(always)]
    pub(super) unsafe fn put(this: *mut Pool, ptr: NonNull<u8>) -> bool {
        // SAFETY: caller's contract; the block is at least a word long.
        unsafe {
            Self::set_link(ptr.as_ptr(), (*this).freeblock);
            (*this).freeblock = ptr.as_ptr();
            let count = (*this).ref_count.load(Relaxed).wrapping_sub(1);
            (*this).ref_count.store(count, Relaxed);
            count as i32 <= 0
        }
    }

    /// used -> full: marks `this`, which has no free block left and leaves
    /// its owner's list.
    ///
    /// # Safety
    ///
    /// The caller owns `this`.
    pub(super) unsafe fn mark_full(this: *mut Pool) {
        // SAFETY: caller's contract.
        unsafe {
            let count = (*this).ref_count.load(Relaxed);
            debug_assert_eq!(count, (*this).capacity);
            (*this).ref_count.store(count | Self::FULL, Relaxed);
        }
    }

    /// full -> used: clears the `FULL` mark of `this` if set; returns
    /// whether it was (the caller relinks the pool).
    ///
    /// # Safety
    ///
    /// The caller owns `this`.
    pub(super) unsafe fn unmark_full(this: *mut Pool) -> bool {
        // SAFETY: caller's contract.
        unsafe {
            let count = (*this).ref_count.load(Relaxed);
            (*this).ref_count.store(count & !Self::FULL, Relaxed);
            count & Self::FULL != 0
        }
    }

    /// The size class of `this`.
    ///
    /// # Safety
    ///
    /// `this` is the header of a carved pool of a live arena.
    #[inline(always)]
    pub(crate) unsafe fn class(this: *const Pool) -> SizeClass {
        // SAFETY: caller's contract.
        unsafe { (*this).class as SizeClass }
    }

    /// The owner of `this` (null: the heap's shared lists, or none).
    ///
    /// # Safety
    ///
    /// `this` is the header of a pool of a live arena.
    #[inline(always)]
    pub(crate) unsafe fn owner(this: *const Pool) -> *mut PoolOwner {
        // SAFETY: caller's contract; `owner` is atomic.
        unsafe { (*this).owner.load(Relaxed) }
    }

    /// Allocated blocks of `this` (read atomically: any thread may ask).
    ///
    /// # Safety
    ///
    /// `this` is the header of a carved pool of a live arena.
    pub(crate) unsafe fn in_use(this: *const Pool) -> usize {
        // SAFETY: caller's contract; `ref_count` is atomic.
        unsafe { ((*this).ref_count.load(Relaxed) & !Self::FULL) as usize }
    }

    /// `ref_count` as is, `FULL` bit included (the owner's view).
    ///
    /// # Safety
    ///
    /// `this` is the header of a carved pool of a live arena.
    #[inline(always)]
    pub(super) unsafe fn in_use_raw(this: *const Pool) -> u32 {
        // SAFETY: caller's contract; `ref_count` is atomic.
        unsafe { (*this).ref_count.load(Relaxed) }
    }

    /// The state of `this`, from its block count.
    ///
    /// # Safety
    ///
    /// `this` is the header of a carved pool of a live arena.
    pub(crate) unsafe fn state(this: *const Pool) -> PoolState {
        // SAFETY: caller's contract; `capacity` changes only while empty.
        let (count, capacity) = unsafe { (Self::in_use(this), (*this).capacity as usize) };
        match count {
            0 => PoolState::Empty,
            c if c == capacity => PoolState::Full,
            _ => PoolState::Used,
        }
    }

    /// Blocks `this` holds in all.
    ///
    /// # Safety
    ///
    /// `this` is the header of a carved pool of a live arena.
    pub(crate) unsafe fn capacity(this: *const Pool) -> usize {
        // SAFETY: caller's contract.
        unsafe { (*this).capacity as usize }
    }

    /// Checks the block accounting of `this` (see the invariants); panics on
    /// a violation.
    ///
    /// # Safety
    ///
    /// `this` is a carved pool of a live arena that nobody changes
    /// meanwhile.
    pub(super) unsafe fn validate(this: *const Pool) {
        // SAFETY: caller's contract: the pool and its free blocks are live
        // and quiescent.
        unsafe {
            let pool = &*this;
            let class = pool.class as SizeClass;
            let count = pool.ref_count.load(Relaxed) & !Self::FULL;
            assert!(
                count <= pool.capacity,
                "pool {this:p}: count above capacity"
            );
            if pool.ref_count.load(Relaxed) & Self::FULL != 0 {
                assert!(
                    pool.freeblock.is_null() && pool.bump == pool.capacity,
                    "pool {this:p}: marked full with free blocks"
                );
            }
            assert!(
                pool.bump <= pool.capacity,
                "pool {this:p}: bump past the end"
            );
            let mut free = 0u32;
            let mut b = pool.freeblock;
            while !b.is_null() {
                assert!(
                    b.addr() >= pool.base.addr()
                        && b.addr() < pool.base.addr() + Self::SIZE
                        && (b.addr() - pool.base.addr()).is_multiple_of(block_size(class)),
                    "pool {this:p}: free list leads to {b:p}, not a block of the pool"
                );
                free += 1;
                assert!(free <= pool.capacity, "pool {this:p}: free list loops");
                crate::valgrind::defined(b, size_of::<usize>());
                let next = crate::harden::decode(b.cast::<*mut u8>().read(), b);
                crate::valgrind::noaccess(b, size_of::<usize>());
                b = next;
            }
            assert_eq!(
                count + free + (pool.capacity - pool.bump),
                pool.capacity,
                "pool {this:p}: allocated + free + never used != capacity"
            );
        }
    }
}

impl core::fmt::Debug for Pool {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Only the fields that do not change while the pool has blocks.
        f.debug_struct("Pool")
            .field("class", &self.class)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// Empty pools that left their owner and wait to be given back to their
/// arenas under the small-object lock, singly linked through `next`: an
/// owner collects them without the lock, the heap releases them with it
/// (`SmallHeap::release_chain`).
///
/// Invariant: every pool on the chain is empty, owned by the chain's holder
/// and on no other list.
pub(crate) struct PoolChain {
    head: *mut Pool,
}

impl PoolChain {
    pub(crate) const fn new() -> Self {
        Self { head: null_mut() }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// Adds `pool`.
    ///
    /// # Safety
    ///
    /// `pool` is a live empty pool on no list, owned by the caller.
    pub(crate) unsafe fn push(&mut self, pool: *mut Pool) {
        // SAFETY: caller's contract: `next` is free to use.
        unsafe { (*pool).next = self.head };
        self.head = pool;
    }

    /// Takes the first pool for which `f` holds off the chain.
    pub(crate) fn take_first(&mut self, mut f: impl FnMut(*mut Pool) -> bool) -> Option<*mut Pool> {
        let mut link: *mut *mut Pool = &mut self.head;
        // SAFETY: pools on the chain are live (invariant); `link` points at
        // the head or at a chained pool's `next`.
        unsafe {
            while !(*link).is_null() {
                let pool = *link;
                if f(pool) {
                    *link = (*pool).next;
                    return Some(pool);
                }
                link = &raw mut (*pool).next;
            }
        }
        None
    }

    /// Takes a pool off the chain.
    pub(crate) fn pop(&mut self) -> Option<*mut Pool> {
        let pool = NonNull::new(self.head)?.as_ptr();
        // SAFETY: pools on the chain are live (invariant).
        self.head = unsafe { (*pool).next };
        Some(pool)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool's blocks, pool-aligned as in an arena.
    #[repr(C, align(16384))]
    struct Data([u8; Pool::SIZE]);

    /// A pool header and its blocks in ordinary memory (the blocks behind a
    /// raw pointer: moving a `Box` would retag it and invalidate the
    /// pointers into it).
    struct Fake {
        header: Box<core::mem::MaybeUninit<Pool>>,
        data: *mut Data,
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            // SAFETY: from `Box::into_raw` in `new`, freed once.
            drop(unsafe { Box::from_raw(self.data) });
        }
    }

    impl Fake {
        fn new(class: SizeClass) -> Self {
            let mut fake = Fake {
                header: Box::new(core::mem::MaybeUninit::uninit()),
                data: Box::into_raw(Box::new(Data([0; Pool::SIZE]))),
            };
            let base = fake.data.cast::<u8>();
            // SAFETY: the header and the blocks are ours.
            unsafe { Pool::init(fake.pool(), base, class, null_mut()) };
            fake
        }

        fn pool(&mut self) -> *mut Pool {
            self.header.as_mut_ptr()
        }
    }

    /// A block of `pool` as its owner's table takes one: pop, else carve
    /// and pop; `None` when full.
    unsafe fn take(pool: *mut Pool, class: SizeClass) -> Option<NonNull<u8>> {
        // SAFETY: caller's contract.
        unsafe {
            if let Some(b) = Pool::pop(pool) {
                return Some(b);
            }
            if Pool::carve(pool, class) {
                return Pool::pop(pool);
            }
            None
        }
    }

    #[test]
    fn blocks_move_the_pool_through_its_states() {
        let class = crate::config::NB_SMALL_SIZE_CLASSES - 1; // 512 B: 32 blocks
        let mut fake = Fake::new(class);
        let pool = fake.pool();
        // SAFETY: the fake pool is ours and live throughout.
        unsafe {
            assert_eq!(Pool::state(pool), PoolState::Empty);
            let capacity = Pool::capacity(pool);
            assert_eq!(capacity, blocks_per_pool(class));
            let mut blocks = Vec::new();
            for i in 0..capacity {
                let block = take(pool, class).expect("a block left");
                assert_eq!(Pool::in_use(pool), i + 1);
                // Carving goes a page at a time: 8 blocks of 512 bytes.
                assert_eq!((*pool).bump as usize, (i / 8 + 1) * 8);
                blocks.push(block);
                Pool::validate(pool);
            }
            assert!(take(pool, class).is_none());
            assert_eq!(Pool::state(pool), PoolState::Full);
            // Blocks come in address order from a fresh pool; with
            // `hardened`, in a random order within each page carved.
            let in_order = |b: &[NonNull<u8>]| {
                b.windows(2)
                    .all(|w| w[1].as_ptr() == w[0].as_ptr().add(512))
            };
            #[cfg(not(feature = "hardened"))]
            assert!(in_order(&blocks));
            #[cfg(feature = "hardened")]
            {
                assert!(!in_order(&blocks), "4 pages in order: 1 in 40320^4");
                for page in blocks.chunks(8) {
                    let mut sorted = page.to_vec();
                    sorted.sort();
                    assert!(in_order(&sorted), "each page's blocks, shuffled");
                }
            }
            Pool::mark_full(pool);
            Pool::validate(pool);
            assert_eq!(Pool::state(pool), PoolState::Full);
            // Freeing a block of a full pool asks for attention; unmarking
            // says it was full.
            assert!(Pool::put(pool, blocks[3]));
            assert!(Pool::unmark_full(pool));
            assert_eq!(Pool::state(pool), PoolState::Used);
            // The freed block is reused first (LIFO).
            assert_eq!(take(pool, class), Some(blocks[3]));
            for (i, &b) in blocks.iter().enumerate() {
                assert_eq!(
                    Pool::put(pool, b),
                    i + 1 == capacity,
                    "empty only at the last"
                );
            }
            assert!(!Pool::unmark_full(pool));
            assert_eq!(Pool::state(pool), PoolState::Empty);
            Pool::validate(pool);
        }
    }

    #[test]
    fn carving_straddles_pages_by_one_block_at_most() {
        let class = 2; // 48-byte blocks: not a divisor of the page
        let mut fake = Fake::new(class);
        let pool = fake.pool();
        // SAFETY: the fake pool is ours and live throughout.
        unsafe {
            let base = (*pool).base;
            let page_end = (base.addr() | 4095) + 1;
            assert!(Pool::carve(pool, class));
            // Every block that starts in the base's page, and no other.
            let carved = (*pool).bump as usize;
            assert!(base.addr() + (carved - 1) * 48 < page_end);
            assert!(base.addr() + carved * 48 >= page_end);
            let mut n = 0;
            while Pool::pop(pool).is_some() {
                n += 1;
            }
            assert_eq!(n, carved);
            assert!(Pool::carve(pool, class));
            assert!((*pool).bump as usize > carved);
            Pool::validate(pool);
        }
    }

    #[test]
    #[should_panic(expected = "not a block of the pool")]
    fn validate_catches_a_corrupted_free_list() {
        let mut fake = Fake::new(1);
        let pool = fake.pool();
        // SAFETY: the fake pool is ours; the corruption stays inside it.
        unsafe {
            let a = take(pool, 1).unwrap();
            let _b = take(pool, 1).unwrap();
            Pool::put(pool, a);
            // A use-after-free write: the freed block's link now points
            // into the middle of another block.
            a.as_ptr().cast::<*mut u8>().write(a.as_ptr().add(40));
            Pool::validate(pool);
        }
    }

    #[test]
    #[should_panic(expected = "allocated + free + never used")]
    fn validate_catches_a_wrong_count() {
        let mut fake = Fake::new(0);
        let pool = fake.pool();
        // SAFETY: the fake pool is ours.
        unsafe {
            let _ = take(pool, 0);
            (*pool).ref_count.store(5, Relaxed);
            Pool::validate(pool);
        }
    }
}
