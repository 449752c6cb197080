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
/// * `0 <= ref_count <= capacity`, and
///   `ref_count + len(free list) + (capacity - bump) == capacity` (blocks
///   freed by other threads and not yet collected by the owner count as
///   allocated);
/// * a pool with a live block has one owner for as long as it has one:
///   `owner` is a thread heap's identity or null for the heap's shared,
///   locked lists; only the owner touches `freeblock`, `bump`, `ref_count`,
///   `next` and `prev`;
/// * `class` and `capacity` change only under the heap's small-object lock,
///   while the pool is empty and owned by no one;
/// * `zeroed_tail` implies the never-used blocks `bump..capacity` read zero;
/// * `emptied_at` is `Some` iff the pool is on the purge queue.
///
/// [`Arena`]: crate::Arena
#[repr(C)]
pub struct Pool {
    /// Head of the list of freed blocks, linked through their first word.
    pub(super) freeblock: *mut u8,
    /// Neighbours on the owner's used list, or the next pool on the arena's
    /// free pools or on a [`PoolChain`].
    pub(super) next: *mut Pool,
    pub(super) prev: *mut Pool,
    /// First byte of the pool's blocks.
    pub(super) base: *mut u8,
    /// Written by the owner only (a load and a store, no read-modify-write);
    /// atomic so that `stats()` may read it from any thread.
    pub(super) ref_count: AtomicU32,
    pub(super) capacity: u32,
    /// Index of the first never-used block.
    pub(super) bump: u32,
    pub(super) class: u8,
    pub(super) zeroed_tail: bool,
    /// The owner (see the invariants). Set under the small-object lock when
    /// the pool leaves or rejoins its arena; read by any thread freeing one
    /// of its blocks.
    pub(super) owner: AtomicPtr<PoolOwner>,
    /// Neighbours on the heap's purge queue of empty, not yet purged pools.
    pub(super) purge_next: *mut Pool,
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

/// A block handed out by a pool.
pub(crate) struct SmallBlock {
    pub(crate) ptr: NonNull<u8>,
    /// The block reads zero (it was never used since its pages were mapped
    /// or purged).
    pub(crate) zeroed: bool,
}

impl Pool {
    /// Bytes per pool.
    pub const SIZE: usize = crate::config::POOL_SIZE;

    /// empty -> used: makes `this` a pool of `class` with every block free,
    /// owned by `owner` (null: the shared lists), blocks starting at `base`.
    ///
    /// # Safety
    ///
    /// `this` is the header of an empty pool of a live arena whose blocks
    /// start at `base`, taken off its arena under the small-object lock;
    /// `zeroed` only if the pool's blocks read zero.
    pub(super) unsafe fn init(
        this: *mut Pool,
        base: *mut u8,
        class: SizeClass,
        zeroed: bool,
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
                zeroed_tail: zeroed,
                owner: AtomicPtr::new(owner),
                purge_next: null_mut(),
                purge_prev: null_mut(),
                emptied_at: None,
            })
        }
    }

    /// Takes one block of used pool `this` (of `class`): the head of its
    /// free list, else the next never-used block. Returns the block and
    /// whether the pool is now full.
    ///
    /// # Safety
    ///
    /// The caller owns `this`, a used pool (not full) of class `class`.
    /// Fields are accessed in place (no `&mut` to the header): `stats()`
    /// may read `ref_count` concurrently.
    #[inline(always)]
    pub(super) unsafe fn take_block(this: *mut Pool, class: SizeClass) -> (SmallBlock, bool) {
        // SAFETY: a used pool has a free block on its list (whose first word
        // links the next one) or `bump < capacity` (invariant).
        unsafe {
            let (ptr, zeroed) = if (*this).freeblock.is_null() {
                let bump = (*this).bump;
                (*this).bump = bump + 1;
                (
                    (*this).base.add(bump as usize * block_size(class)),
                    (*this).zeroed_tail,
                )
            } else {
                let block = (*this).freeblock;
                crate::valgrind::defined(block, size_of::<usize>());
                (*this).freeblock = block.cast::<*mut u8>().read();
                (block, false)
            };
            let count = (*this).ref_count.load(Relaxed) + 1;
            (*this).ref_count.store(count, Relaxed);
            let block = SmallBlock {
                ptr: NonNull::new_unchecked(ptr),
                zeroed,
            };
            (block, count == (*this).capacity)
        }
    }

    /// Returns block `ptr` to `this`. Returns (whether the pool was full,
    /// whether it is now empty).
    ///
    /// # Safety
    ///
    /// The caller owns `this` (used or full); `ptr` is a live block of it,
    /// not used afterwards.
    #[inline(always)]
    pub(super) unsafe fn put_block(this: *mut Pool, ptr: NonNull<u8>) -> (bool, bool) {
        // SAFETY: caller's contract; the block is at least a word long.
        unsafe {
            let count = (*this).ref_count.load(Relaxed);
            crate::valgrind::defined(ptr.as_ptr(), size_of::<usize>());
            ptr.as_ptr().cast::<*mut u8>().write((*this).freeblock);
            crate::valgrind::noaccess(ptr.as_ptr(), size_of::<usize>());
            (*this).freeblock = ptr.as_ptr();
            (*this).ref_count.store(count - 1, Relaxed);
            (count == (*this).capacity, count == 1)
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
        unsafe { (*this).ref_count.load(Relaxed) as usize }
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
            let count = pool.ref_count.load(Relaxed);
            assert!(
                count <= pool.capacity,
                "pool {this:p}: count above capacity"
            );
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
                let next = b.cast::<*mut u8>().read();
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

    /// A pool header and its blocks in ordinary memory.
    struct Fake {
        header: Box<core::mem::MaybeUninit<Pool>>,
        data: Vec<u128>,
    }

    impl Fake {
        fn new(class: SizeClass) -> Self {
            let mut fake = Fake {
                header: Box::new(core::mem::MaybeUninit::uninit()),
                data: vec![0; Pool::SIZE / 16],
            };
            let base = fake.data.as_mut_ptr().cast::<u8>();
            // SAFETY: the header and the blocks are ours.
            unsafe { Pool::init(fake.pool(), base, class, true, null_mut()) };
            fake
        }

        fn pool(&mut self) -> *mut Pool {
            self.header.as_mut_ptr()
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
                let (block, full) = Pool::take_block(pool, class);
                assert!(block.zeroed, "never-used blocks of a zeroed pool read zero");
                assert_eq!(full, i + 1 == capacity);
                assert_eq!(Pool::in_use(pool), i + 1);
                blocks.push(block.ptr);
                Pool::validate(pool);
            }
            assert_eq!(Pool::state(pool), PoolState::Full);
            let distinct: std::collections::BTreeSet<_> = blocks.iter().collect();
            assert_eq!(distinct.len(), capacity);
            let (was_full, empty) = Pool::put_block(pool, blocks[3]);
            assert!(was_full && !empty);
            assert_eq!(Pool::state(pool), PoolState::Used);
            // The freed block is reused first (LIFO), and is not zeroed.
            let (again, _) = Pool::take_block(pool, class);
            assert_eq!(again.ptr, blocks[3]);
            assert!(!again.zeroed);
            for (i, &b) in blocks.iter().enumerate() {
                let (_, empty) = Pool::put_block(pool, b);
                assert_eq!(empty, i + 1 == capacity);
            }
            assert_eq!(Pool::state(pool), PoolState::Empty);
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
            let (a, _) = Pool::take_block(pool, 1);
            let (_b, _) = Pool::take_block(pool, 1);
            Pool::put_block(pool, a.ptr);
            // A use-after-free write: the freed block's link now points
            // into the middle of another block.
            a.ptr
                .as_ptr()
                .cast::<*mut u8>()
                .write(a.ptr.as_ptr().add(40));
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
            let _ = Pool::take_block(pool, 0);
            (*pool).ref_count.store(5, Relaxed);
            Pool::validate(pool);
        }
    }
}
