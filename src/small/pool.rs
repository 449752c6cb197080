//! Layer 2: the small-object allocator. Pools serve blocks of one size class;
//! arenas supply pools and go back to layer 1 when all their pools are empty.
//!
//! # Pool states and transitions
//!
//! ```text
//!              empty_to_used            used_to_full
//!   (empty) ----------------> (used) ----------------> (full)
//!      ^                      |   ^                      |
//!      +----------------------+   +----------------------+
//!          used_to_empty                full_to_used
//! ```
//!
//! Every pool with blocks has one *owner*, whose `usedpools` table
//! ([`UsedPools`]) it is on: a thread heap ([`crate::thread`]), or the
//! heap's shared table under the small-object lock, used by threads that
//! have no thread heap. Empty pools, arenas and the purge queue are shared
//! ([`SmallCore`], under the lock): a pool moves between its arena and an
//! owner on the `empty ↔ used` transitions only.
//!
//! * *used*: some blocks allocated, some free; on its owner's
//!   `usedpools[class]`, which the allocation fast path reads. A pool whose last block is freed while
//!   it is the only pool of its class stays *used* (empty but cached), so an
//!   alloc/free pair does not cycle the pool through its arena; at most one
//!   empty pool per class is on `usedpools`.
//! * *full*: every block allocated; on no list (a free moves it back).
//! * *empty*: no block allocated; on its arena's `freepools` (or never
//!   carved); may be re-initialised for any class.
//!
//! # Usable arenas [tag:usable-arenas]
//!
//! Arenas with a free pool are kept on `usable_arenas`, sorted by
//! `nfreepools` ascending: new pools come from the fullest arena, so nearly
//! empty arenas drain and can be returned. As in CPython, `last_with[n]`
//! points at the last arena on the list with `nfreepools == n`, so keeping
//! the order costs O(1) per transition. An arena whose pools are all empty
//! leaves the list: it is kept as a spare (up to `config::SPARE_ARENAS`),
//! or given back to layer 1.
//!
//! # Returning memory
//!
//! A pool that becomes empty joins the purge queue (oldest first). On later
//! pool transitions, pools empty for `config::PURGE_DELAY` get their pages
//! purged (`PageSource::purge`): churn at a steady size reuses pools within
//! the delay without a system call, and RSS follows frees without a
//! background thread. A pool taken for reuse, or an arena given back, leaves
//! the queue first. `trim` purges the whole queue at once.

use crate::config::{NB_SMALL_SIZE_CLASSES, USABLE_POOLS_PER_ARENA};
use crate::os::PageSource;
use crate::raw::RawHeap;
use crate::raw::chunk::ChunkHeader;
use crate::small::arena::{
    ArenaHeader, PoolHeader, arena_of_pool, init_arena, pool_data, pool_header, pool_of,
};
use crate::small::size_class::{SizeClass, block_size, blocks_per_pool};
use crate::thread::ThreadHeap;
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::Ordering::Relaxed;
use parking_lot::lock_api::RawMutex;

/// Counters of the small-object allocator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SmallStats {
    /// Sum of the sizes asked for by live small blocks.
    pub bytes_requested: usize,
    /// Live blocks per size class. A block freed by a thread that does not
    /// own its pool counts until the owner collects it.
    pub blocks_in_use: [usize; NB_SMALL_SIZE_CLASSES],
    /// Bytes in live blocks (block sizes, not requests).
    pub bytes_in_use: usize,
    /// Pools per size class holding blocks of it (used or full).
    pub pools: [usize; NB_SMALL_SIZE_CLASSES],
    /// Empty pools whose pages were given back to the OS, since the heap was
    /// created.
    pub pools_purged: usize,
    /// Arenas taken from layer 1 since the heap was created.
    pub arenas_allocated: usize,
    /// Arenas given back to layer 1 since the heap was created.
    pub arenas_reclaimed: usize,
    /// Most arenas held at once.
    pub arenas_high_water: usize,
    /// Thread heaps (per-thread pool owners) this heap has, owned or
    /// waiting for a thread to adopt them.
    pub thread_heaps: usize,
}

/// One owner's used pools: `heads[class]` is the head of the doubly linked
/// list of that class's used pools (see the pool states above). The heap's
/// shared lists and every thread heap have one.
pub(crate) struct UsedPools {
    heads: [*mut PoolHeader; NB_SMALL_SIZE_CLASSES],
}

/// What freeing a block did to its pool.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Freed {
    /// The pool stays with its owner.
    Kept,
    /// The pool became empty and left the owner's lists: the caller gives
    /// it back to its arena (`SmallCore::release_pool`).
    Emptied,
}

impl UsedPools {
    pub(crate) const fn new() -> Self {
        Self {
            heads: [null_mut(); NB_SMALL_SIZE_CLASSES],
        }
    }

    /// Takes a block of `class` from the first used pool; `None` if the
    /// owner has no used pool of `class`.
    ///
    /// # Safety
    ///
    /// The caller is the owner of these lists (holds the small-object lock
    /// for the shared lists; is the owning thread for a thread heap's).
    #[inline(always)]
    pub(crate) unsafe fn pop(&mut self, class: SizeClass) -> Option<SmallBlock> {
        debug_assert!(class < NB_SMALL_SIZE_CLASSES);
        // SAFETY: size classes are below `NB_SMALL_SIZE_CLASSES`.
        let pool = unsafe { *self.heads.get_unchecked(class) };
        if pool.is_null() {
            return None;
        }
        // SAFETY: pools on a used list are live and not full, so either
        // `freeblock` is a freed block whose first word links the next one,
        // or `bump < capacity`. Fields are accessed in place (no `&mut` to
        // the header): `stats()` may read `ref_count` concurrently.
        unsafe {
            let (ptr, zeroed) = if (*pool).freeblock.is_null() {
                let bump = (*pool).bump;
                (*pool).bump = bump + 1;
                (
                    (*pool).base.add(bump as usize * block_size(class)),
                    (*pool).zeroed_tail,
                )
            } else {
                let block = (*pool).freeblock;
                crate::valgrind::defined(block, size_of::<usize>());
                (*pool).freeblock = block.cast::<*mut u8>().read();
                (block, false)
            };
            let count = (*pool).ref_count.load(Relaxed) + 1;
            (*pool).ref_count.store(count, Relaxed);
            if count == (*pool).capacity {
                // used → full: a full pool is on no list.
                self.unlink(pool, class);
            }
            Some(SmallBlock {
                ptr: NonNull::new_unchecked(ptr),
                zeroed,
            })
        }
    }

    /// Returns block `ptr` to its pool `pool`.
    ///
    /// # Safety
    ///
    /// The caller owns these lists and `pool` is one of its pools (used or
    /// full); `ptr` is a live block of `pool`, not used afterwards.
    #[inline(always)]
    pub(crate) unsafe fn push(&mut self, pool: *mut PoolHeader, ptr: NonNull<u8>) -> Freed {
        // SAFETY: caller's contract; fields accessed in place as in `pop`.
        unsafe {
            let class = (*pool).class as SizeClass;
            debug_assert!(class < NB_SMALL_SIZE_CLASSES);
            let count = (*pool).ref_count.load(Relaxed);
            let was_full = count == (*pool).capacity;
            crate::valgrind::defined(ptr.as_ptr(), size_of::<usize>());
            ptr.as_ptr().cast::<*mut u8>().write((*pool).freeblock);
            crate::valgrind::noaccess(ptr.as_ptr(), size_of::<usize>());
            (*pool).freeblock = ptr.as_ptr();
            (*pool).ref_count.store(count - 1, Relaxed);
            if was_full {
                // full → used.
                self.link(pool, class);
            }
            // Keep the class's only pool even when empty: an alloc/free pair
            // would otherwise move it to its arena and back every time.
            if count == 1 && !(*self.heads.get_unchecked(class) == pool && (*pool).next.is_null()) {
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
    /// The caller owns these lists and `pool`; `pool` is on no list.
    pub(crate) unsafe fn link(&mut self, pool: *mut PoolHeader, class: SizeClass) {
        debug_assert!(class < NB_SMALL_SIZE_CLASSES);
        // SAFETY: size classes are below `NB_SMALL_SIZE_CLASSES`.
        let head = unsafe { *self.heads.get_unchecked(class) };
        // SAFETY: `pool` and `head` (if non-null) are live pool headers of
        // this owner.
        unsafe {
            (*pool).prev = null_mut();
            (*pool).next = head;
            if !head.is_null() {
                (*head).prev = pool;
            }
        }
        // SAFETY: as above.
        unsafe { *self.heads.get_unchecked_mut(class) = pool };
    }

    /// # Safety
    ///
    /// `pool` is on `heads[class]`, owned by the caller.
    unsafe fn unlink(&mut self, pool: *mut PoolHeader, class: SizeClass) {
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

    /// Takes every class's cached empty pool off the lists and passes it to
    /// `release`.
    ///
    /// # Safety
    ///
    /// The caller owns these lists.
    pub(crate) unsafe fn take_empty(&mut self, mut release: impl FnMut(*mut PoolHeader)) {
        for class in 0..NB_SMALL_SIZE_CLASSES {
            let pool = self.heads[class];
            // SAFETY: pools on the lists are live and ours.
            if !pool.is_null() && unsafe { (*pool).ref_count.load(Relaxed) } == 0 {
                // SAFETY: `pool` heads `heads[class]`.
                unsafe { self.unlink(pool, class) };
                release(pool);
            }
        }
    }

    /// Forgets every pool (their arenas are being unmapped).
    pub(crate) fn clear(&mut self) {
        self.heads = [null_mut(); NB_SMALL_SIZE_CLASSES];
    }

    /// Checks the lists of one owner; panics on a violation.
    ///
    /// # Safety
    ///
    /// Nothing modifies the lists or their pools meanwhile.
    pub(crate) unsafe fn validate(&self, owner: *mut ThreadHeap) {
        for (class, &head) in self.heads.iter().enumerate() {
            let mut p = head;
            let mut prev = null_mut();
            let mut empties = 0;
            // SAFETY: pools on the lists are live (caller: quiescent).
            unsafe {
                while !p.is_null() {
                    let pool = &*p;
                    assert_eq!(pool.class as usize, class);
                    assert_eq!(pool.prev, prev);
                    assert_eq!(pool.owner.load(Relaxed), owner, "pool on a foreign list");
                    let count = pool.ref_count.load(Relaxed);
                    assert!(count < pool.capacity, "full pool on usedpools");
                    if count == 0 {
                        empties += 1;
                        assert!(empties <= 1, "two empty pools on usedpools[{class}]");
                    }
                    let mut free = 0u32;
                    let mut b = pool.freeblock;
                    while !b.is_null() {
                        assert!(
                            b.addr() >= pool.base.addr()
                                && b.addr() < pool.base.addr() + crate::config::POOL_SIZE
                        );
                        assert_eq!((b.addr() - pool.base.addr()) % block_size(class), 0);
                        free += 1;
                        crate::valgrind::defined(b, size_of::<usize>());
                        let next = b.cast::<*mut u8>().read();
                        crate::valgrind::noaccess(b, size_of::<usize>());
                        b = next;
                    }
                    assert_eq!(count + free + (pool.capacity - pool.bump), pool.capacity);
                    prev = p;
                    p = pool.next;
                }
            }
        }
    }
}

/// State of layer 2 shared by all threads, kept under the heap's
/// small-object lock: the arenas and their free pools, the purge queue, and
/// the used pools of threads that cannot use a thread heap (their
/// thread-local state is gone).
pub(crate) struct SmallCore {
    /// Used pools owned by no thread (`owner` null).
    used: UsedPools,
    /// Bytes requested by live blocks allocated from `used`, minus those of
    /// small blocks freed without a thread heap (wrapping).
    requested: usize,
    /// Every thread heap of this heap, linked through `ThreadHeap::next`.
    pub(crate) threads: *mut ThreadHeap,
    /// Head of the usable arenas, fullest first.
    usable: *mut ArenaHeader,
    /// `last_with[n]`: last usable arena with `nfreepools == n`, or null.
    last_with: [*mut ArenaHeader; USABLE_POOLS_PER_ARENA + 1],
    /// An arena whose pools are all empty, kept to avoid remapping.
    /// Arenas whose pools are all empty, kept to avoid remapping (linked
    /// through `next`, at most `SPARE_ARENAS`); their pools' pages are
    /// purged after the delay like any empty pool's.
    spare: *mut ArenaHeader,
    spares: usize,
    /// Empty pools not yet purged, oldest first (doubly linked through
    /// `purge_next`/`purge_prev`). A pool is on it iff its `emptied_at` is
    /// `Some`.
    purge_head: *mut PoolHeader,
    purge_tail: *mut PoolHeader,
    counters: Counters,
}

/// What layer 2 counts as it goes, on transitions only; per-block figures
/// are summed from pool headers by [`SmallCore::snapshot`].
#[derive(Clone, Copy)]
struct Counters {
    pools: [usize; NB_SMALL_SIZE_CLASSES],
    pools_purged: usize,
    arenas_allocated: usize,
    arenas_reclaimed: usize,
    arenas_high_water: usize,
}

// SAFETY: the raw pointers refer to arenas and thread heaps owned by the
// heap, which may be used from any thread; `SmallCore` is only reached
// through the heap's lock.
unsafe impl Send for SmallCore {}

/// A block handed out by layer 2.
pub(crate) struct SmallBlock {
    pub(crate) ptr: NonNull<u8>,
    /// The block reads zero (it was never used since its arena was mapped).
    pub(crate) zeroed: bool,
}

impl SmallCore {
    pub(crate) const fn new() -> Self {
        Self {
            used: UsedPools::new(),
            requested: 0,
            threads: null_mut(),
            usable: null_mut(),
            last_with: [null_mut(); USABLE_POOLS_PER_ARENA + 1],
            spare: null_mut(),
            spares: 0,
            purge_head: null_mut(),
            purge_tail: null_mut(),
            counters: Counters {
                pools: [0; NB_SMALL_SIZE_CLASSES],
                pools_purged: 0,
                arenas_allocated: 0,
                arenas_reclaimed: 0,
                arenas_high_water: 0,
            },
        }
    }

    /// Allocates a block of `class` from the shared lists.
    pub(crate) fn alloc<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        class: SizeClass,
        size: usize,
    ) -> Option<SmallBlock> {
        // SAFETY: we hold the lock, so we own the shared lists.
        let block = match unsafe { self.used.pop(class) } {
            Some(block) => block,
            None => {
                let pool = self.take_pool(raw, class, null_mut())?;
                // SAFETY: a fresh used pool of `class`, on no list, shared.
                unsafe {
                    self.used.link(pool, class);
                    self.used.pop(class)?
                }
            }
        };
        self.requested = self.requested.wrapping_add(size);
        Some(block)
    }

    /// Frees a block of a pool owned by no thread.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of shared pool `pool` of this heap, not used
    /// afterwards.
    pub(crate) unsafe fn free_shared<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        pool: *mut PoolHeader,
        ptr: NonNull<u8>,
    ) {
        // SAFETY: we hold the lock and `pool` is shared (caller).
        if unsafe { self.used.push(pool, ptr) } == Freed::Emptied {
            // SAFETY: the pool just left the shared lists, empty.
            unsafe { self.release_pool(raw, pool) };
        }
    }

    /// Adds `delta` (wrapping) to the bytes requested through the shared
    /// path.
    pub(crate) fn add_requested(&mut self, delta: usize) {
        self.requested = self.requested.wrapping_add(delta);
    }

    /// Size class of the live block at `ptr` in `arena`.
    ///
    /// # Safety
    ///
    /// `ptr` lies in a pool of live arena `arena`.
    #[inline]
    pub(crate) unsafe fn class_of_block(arena: *mut ArenaHeader, ptr: *const u8) -> SizeClass {
        // SAFETY: caller's contract.
        unsafe { crate::small::arena::class_of_pool(pool_of(arena, ptr)) }
    }

    // ----- pool transitions -----

    /// empty → used: takes an empty pool from the fullest usable arena and
    /// initialises it for `class`, owned by `owner` (null: shared). The
    /// caller links it on its owner's lists.
    pub(crate) fn take_pool<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        class: SizeClass,
        owner: *mut ThreadHeap,
    ) -> Option<*mut PoolHeader> {
        self.purge_expired(raw);
        if self.usable.is_null() {
            let arena = self.take_arena(raw)?;
            self.arena_becomes_usable(arena);
        }
        let arena = self.usable;
        // SAFETY: `arena` is a live usable arena, so it has a free pool:
        // either on `freepools` or past `ncarved`. No reference into the
        // arena outlives a statement.
        unsafe {
            let (pool, base, zeroed) = if (*arena).freepools.is_null() {
                let index = (*arena).ncarved + 1;
                (*arena).ncarved = index;
                (pool_header(arena, index), pool_data(arena, index), true)
            } else {
                let pool = (*arena).freepools;
                (*arena).freepools = (*pool).next;
                self.dequeue_purge(pool);
                (pool, (*pool).base, (*pool).zeroed_tail)
            };
            self.arena_lost_pool(arena);
            pool.write(PoolHeader {
                freeblock: null_mut(),
                next: null_mut(),
                prev: null_mut(),
                base,
                ref_count: 0.into(),
                capacity: blocks_per_pool(class) as u32,
                bump: 0,
                class: class as u8,
                zeroed_tail: zeroed,
                owner: owner.into(),
                purge_next: null_mut(),
                purge_prev: null_mut(),
                emptied_at: None,
            });
            self.counters.pools[class] += 1;
            Some(pool)
        }
    }

    /// used → empty: the pool's last block was freed and it left its
    /// owner's lists. It goes on its arena's free list, owned by no one; the
    /// arena moves on the usable list, or leaves it.
    ///
    /// # Safety
    ///
    /// `pool` is a live empty pool of this heap on no list.
    pub(crate) unsafe fn release_pool<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        pool: *mut PoolHeader,
    ) {
        let arena = arena_of_pool(pool);
        // SAFETY: `pool` is a live empty pool on no list (caller).
        unsafe {
            debug_assert_eq!((*pool).ref_count.load(Relaxed), 0);
            self.counters.pools[(*pool).class as usize] -= 1;
            (*pool).owner.store(null_mut(), Relaxed);
            (*pool).next = (*arena).freepools;
            (*arena).freepools = pool;
            (*pool).zeroed_tail = false;
            self.enqueue_purge(pool, std::time::Instant::now());
        }
        self.purge_expired(raw);
        self.arena_gained_pool(raw, arena);
    }

    // ----- returning memory -----

    /// Puts an empty pool at the tail of the purge queue.
    unsafe fn enqueue_purge(&mut self, pool: *mut PoolHeader, now: std::time::Instant) {
        // SAFETY: `pool` is a live empty pool not on the queue (caller);
        // `purge_tail` is null or a live queued pool.
        unsafe {
            (*pool).emptied_at = Some(now);
            (*pool).purge_next = null_mut();
            (*pool).purge_prev = self.purge_tail;
            if self.purge_tail.is_null() {
                self.purge_head = pool;
            } else {
                (*self.purge_tail).purge_next = pool;
            }
        }
        self.purge_tail = pool;
    }

    /// Takes `pool` off the purge queue if it is on it.
    unsafe fn dequeue_purge(&mut self, pool: *mut PoolHeader) {
        // SAFETY: `pool` is a live pool; if queued, its queue neighbours are
        // live queued pools.
        unsafe {
            if (*pool).emptied_at.take().is_none() {
                return;
            }
            let (next, prev) = ((*pool).purge_next, (*pool).purge_prev);
            if next.is_null() {
                self.purge_tail = prev;
            } else {
                (*next).purge_prev = prev;
            }
            if prev.is_null() {
                self.purge_head = next;
            } else {
                (*prev).purge_next = next;
            }
        }
    }

    /// Gives back the pages of pools empty for longer than `PURGE_DELAY`.
    /// Called on pool transitions only, so the fast path never reads the
    /// clock; no background thread is needed.
    fn purge_expired<S: PageSource, R: RawMutex>(&mut self, raw: &RawHeap<S, R>) {
        if self.purge_head.is_null() {
            return;
        }
        let now = std::time::Instant::now();
        // SAFETY: queued pools are live empty pools of this heap.
        while let Some(emptied) = unsafe { self.purge_head.as_ref() }.and_then(|p| p.emptied_at) {
            if now.duration_since(emptied) < crate::config::PURGE_DELAY {
                break;
            }
            // SAFETY: the head is a live queued pool.
            unsafe { self.purge_pool(raw, self.purge_head) };
        }
    }

    /// Purges one queued pool's pages now.
    unsafe fn purge_pool<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        pool: *mut PoolHeader,
    ) {
        // SAFETY: `pool` is a live, empty, queued pool: its data is a whole,
        // page-aligned `POOL_SIZE` region of a live arena that no block uses.
        unsafe {
            self.dequeue_purge(pool);
            let data = NonNull::new_unchecked((*pool).base);
            (*pool).zeroed_tail = raw.purge(data, crate::config::POOL_SIZE);
        }
        self.counters.pools_purged += 1;
    }

    /// Gives back everything layer 2 holds but does not use: every class's
    /// cached empty pool, the pages of every empty pool, the spare arenas.
    /// Sums the medium-cache counters of every thread heap: (requested
    /// delta, usable bytes held, blocks held).
    pub(crate) fn medium_cache_totals(&self) -> (usize, usize, usize) {
        let mut totals = (0usize, 0, 0);
        let mut th = self.threads;
        while !th.is_null() {
            // SAFETY: thread heaps on the list live as long as the heap.
            unsafe {
                let (r, b, n) = ThreadHeap::medium_counters(th);
                totals = (totals.0.wrapping_add(r), totals.1 + b, totals.2 + n);
                th = (*th).next;
            }
        }
        totals
    }

    /// Gives back everything the shared state holds but does not use: the
    /// shared lists' cached empty pools, the pages of every empty pool, the
    /// spare arena. (Thread heaps' cached pools are released by
    /// `PrivateHeap::trim` first.)
    pub(crate) fn trim<S: PageSource, R: RawMutex>(&mut self, raw: &RawHeap<S, R>) {
        let mut empties = null_mut::<PoolHeader>();
        // SAFETY: we hold the lock: the shared lists are ours. The taken
        // pools are chained through `next` until released.
        unsafe {
            self.used.take_empty(|pool| {
                (*pool).next = empties;
                empties = pool;
            });
            self.release_chain(raw, empties);
        }
        while !self.purge_head.is_null() {
            // SAFETY: the head is a live queued pool.
            unsafe { self.purge_pool(raw, self.purge_head) };
        }
        while !self.spare.is_null() {
            let arena = self.spare;
            // SAFETY: spare arenas are live, linked through `next`.
            self.spare = unsafe { (*arena).next };
            self.spares -= 1;
            // SAFETY: as above; it leaves the spare list first.
            unsafe { (*arena).next = null_mut() };
            self.release_arena(raw, arena);
        }
    }

    /// Releases every pool of a chain linked through `next`.
    ///
    /// # Safety
    ///
    /// Each pool of the chain is a live empty pool of this heap on no list.
    pub(crate) unsafe fn release_chain<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        mut chain: *mut PoolHeader,
    ) {
        while !chain.is_null() {
            // SAFETY: caller's contract; `next` is read before the pool is
            // relinked.
            unsafe {
                let next = (*chain).next;
                self.release_pool(raw, chain);
                chain = next;
            }
        }
    }

    /// The counters, with the per-block ones summed from the pool headers
    /// of every arena and the requested bytes from every owner (O(arenas +
    /// threads); keeps counters off the fast path). Reads owners' counters
    /// with relaxed loads: exact when no other thread allocates meanwhile.
    pub(crate) fn snapshot<S: PageSource, R: RawMutex>(&self, raw: &RawHeap<S, R>) -> SmallStats {
        let c = self.counters;
        let mut s = SmallStats {
            pools: c.pools,
            pools_purged: c.pools_purged,
            arenas_allocated: c.arenas_allocated,
            arenas_reclaimed: c.arenas_reclaimed,
            arenas_high_water: c.arenas_high_water,
            ..SmallStats::default()
        };
        raw.for_each_arena(|arena| {
            let arena = arena.as_ptr().cast::<ArenaHeader>();
            // SAFETY: a live arena of this heap; we hold the small-object
            // lock, so no pool is (re)initialised meanwhile and `class` is
            // stable; owners write `ref_count` atomically. Carved pools that
            // are empty have `ref_count == 0`.
            unsafe {
                for index in 1..=(*arena).ncarved {
                    let pool = pool_header(arena, index);
                    s.blocks_in_use[(*pool).class as usize] +=
                        (*pool).ref_count.load(Relaxed) as usize;
                }
            }
        });
        let mut requested = self.requested;
        let mut th = self.threads;
        while !th.is_null() {
            // SAFETY: thread heaps on the list live as long as the heap.
            unsafe {
                requested = requested.wrapping_add(ThreadHeap::requested(th));
                th = (*th).next;
            }
            s.thread_heaps += 1;
        }
        s.bytes_requested = requested;
        s.bytes_in_use = (0..NB_SMALL_SIZE_CLASSES)
            .map(|c| s.blocks_in_use[c] * block_size(c))
            .sum();
        s
    }

    // ----- arena transitions -----

    /// A wholly empty arena: the spare, or a new one from layer 1.
    fn take_arena<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
    ) -> Option<*mut ArenaHeader> {
        if !self.spare.is_null() {
            let arena = self.spare;
            // SAFETY: spare arenas are live, linked through `next`.
            unsafe {
                self.spare = (*arena).next;
                (*arena).next = null_mut();
            }
            self.spares -= 1;
            return Some(arena);
        }
        let base = raw.map_arena()?;
        self.counters.arenas_allocated += 1;
        let held = self.counters.arenas_allocated - self.counters.arenas_reclaimed;
        self.counters.arenas_high_water = self.counters.arenas_high_water.max(held);
        // SAFETY: layer 1 just mapped this arena chunk for us, zero-filled.
        Some(unsafe { init_arena(base) })
    }

    /// Puts an arena that is on no list, with `nfreepools >= 1`, on the
    /// usable list at its place.
    fn arena_becomes_usable(&mut self, arena: *mut ArenaHeader) {
        // SAFETY: `arena` is live and on no list.
        let nf = unsafe { (*arena).nfreepools };
        // Place it right after the last arena with fewer free pools.
        let mut after = null_mut();
        for n in (1..nf).rev() {
            if !self.last_with[n].is_null() {
                after = self.last_with[n];
                break;
            }
        }
        // SAFETY: `after` is null or a live arena on the list.
        unsafe { self.insert_usable_after(arena, after) };
        if self.last_with[nf].is_null() {
            self.last_with[nf] = arena;
        }
    }

    /// The head usable arena gave out a pool (`nfreepools` k → k−1).
    fn arena_lost_pool(&mut self, arena: *mut ArenaHeader) {
        debug_assert_eq!(arena, self.usable);
        // SAFETY: `arena` is the live head of the usable list.
        unsafe {
            let k = (*arena).nfreepools;
            (*arena).nfreepools = k - 1;
            if self.last_with[k] == arena {
                let next = (*arena).next;
                self.last_with[k] = if !next.is_null() && (*next).nfreepools == k {
                    next
                } else {
                    null_mut()
                };
            }
            if k - 1 == 0 {
                self.unlink_usable(arena);
            } else {
                // The head had the fewest free pools, so no arena had k − 1.
                debug_assert!(self.last_with[k - 1].is_null());
                self.last_with[k - 1] = arena;
            }
        }
    }

    /// An arena got an empty pool back (`nfreepools` k → k+1): it moves
    /// towards the tail, or off the list when all its pools are empty.
    fn arena_gained_pool<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        arena: *mut ArenaHeader,
    ) {
        // SAFETY: `arena` is a live arena of this heap; list neighbours too.
        unsafe {
            let k = (*arena).nfreepools;
            (*arena).nfreepools = k + 1;
            if k == 0 {
                // It was full, hence on no list.
                self.arena_becomes_usable(arena);
                return;
            }
            // Leave the k group.
            let prev = (*arena).prev;
            let last_k = self.last_with[k];
            if last_k == arena {
                self.last_with[k] = if !prev.is_null() && (*prev).nfreepools == k {
                    prev
                } else {
                    null_mut()
                };
            }
            if k + 1 == USABLE_POOLS_PER_ARENA {
                self.unlink_usable(arena);
                self.arena_becomes_empty(raw, arena);
                return;
            }
            if last_k != arena {
                // Move to just after the last of the k group: the front of
                // the k + 1 group.
                self.unlink_usable(arena);
                self.insert_usable_after(arena, last_k);
            }
            if self.last_with[k + 1].is_null() {
                self.last_with[k + 1] = arena;
            }
        }
    }

    /// All pools of `arena` (now on no list) are empty: keep it as the
    /// spare, or give it back to layer 1.
    fn arena_becomes_empty<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        arena: *mut ArenaHeader,
    ) {
        if self.spares < crate::config::SPARE_ARENAS {
            // SAFETY: `arena` is live and on no list.
            unsafe { (*arena).next = self.spare };
            self.spare = arena;
            self.spares += 1;
            return;
        }
        self.release_arena(raw, arena);
    }

    /// Gives a wholly empty arena, on no list, back to layer 1.
    fn release_arena<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        arena: *mut ArenaHeader,
    ) {
        // SAFETY: `arena` is live with every pool empty; its used pools are on
        // `freepools`, some maybe on the purge queue, which must forget them.
        unsafe {
            let mut pool = (*arena).freepools;
            while !pool.is_null() {
                self.dequeue_purge(pool);
                pool = (*pool).next;
            }
        }
        self.counters.arenas_reclaimed += 1;
        // SAFETY: no block of `arena` is live and no list refers to it.
        unsafe { raw.unmap_arena(NonNull::new_unchecked(arena.cast::<ChunkHeader>())) };
    }

    /// # Safety
    ///
    /// `arena` is live and on no list; `after` is null (insert at head) or on
    /// the list.
    unsafe fn insert_usable_after(&mut self, arena: *mut ArenaHeader, after: *mut ArenaHeader) {
        // SAFETY: caller's contract.
        unsafe {
            let next = if after.is_null() {
                self.usable
            } else {
                (*after).next
            };
            (*arena).prev = after;
            (*arena).next = next;
            if !next.is_null() {
                (*next).prev = arena;
            }
            if after.is_null() {
                self.usable = arena;
            } else {
                (*after).next = arena;
            }
        }
    }

    /// # Safety
    ///
    /// `arena` is on the usable list.
    unsafe fn unlink_usable(&mut self, arena: *mut ArenaHeader) {
        // SAFETY: caller's contract.
        unsafe {
            let (next, prev) = ((*arena).next, (*arena).prev);
            if !next.is_null() {
                (*next).prev = prev;
            }
            if prev.is_null() {
                self.usable = next;
            } else {
                (*prev).next = next;
            }
            (*arena).next = null_mut();
            (*arena).prev = null_mut();
        }
    }

    /// Checks every invariant of layer 2 (O(pools)) that can be checked
    /// while other threads run: the shared state, the calling thread's own
    /// thread heap `own` (may be null) and every orphan (which no thread
    /// may adopt while we hold the lock). Other live threads' pools are
    /// theirs to change, so they are skipped. Panics on a violation.
    pub(crate) fn validate(&self, own: *mut ThreadHeap) {
        // SAFETY: every pointer reached is a live arena, pool or thread heap
        // of this heap; we hold the lock (shared state, orphans) or own the
        // thread heap.
        unsafe {
            self.used.validate(null_mut());
            let mut th = self.threads;
            while !th.is_null() {
                if th == own || ThreadHeap::is_orphan(th) {
                    (*th).used.validate(th);
                }
                th = (*th).next;
            }
            let mut q = self.purge_head;
            let mut prev_q = null_mut();
            while !q.is_null() {
                let pool = &*q;
                assert_eq!(pool.purge_prev, prev_q, "purge queue broken");
                assert_eq!(
                    pool.ref_count.load(Relaxed),
                    0,
                    "non-empty pool on the purge queue"
                );
                assert!(
                    pool.owner.load(Relaxed).is_null(),
                    "owned pool on the purge queue"
                );
                let emptied = pool.emptied_at.expect("queued pool without a time");
                if !prev_q.is_null() {
                    assert!(
                        (*prev_q).emptied_at.unwrap() <= emptied,
                        "purge queue out of order"
                    );
                }
                prev_q = q;
                q = pool.purge_next;
            }
            assert_eq!(self.purge_tail, prev_q);
            let mut a = self.usable;
            let mut prev: *mut ArenaHeader = null_mut();
            while !a.is_null() {
                let arena = &*a;
                assert_eq!(arena.prev, prev);
                let nf = arena.nfreepools;
                assert!(nf > 0 && nf < USABLE_POOLS_PER_ARENA);
                if !prev.is_null() {
                    assert!((*prev).nfreepools <= nf, "usable arenas out of order");
                }
                let is_last = arena.next.is_null() || (*arena.next).nfreepools != nf;
                assert_eq!(self.last_with[nf] == a, is_last, "last_with[{nf}] wrong");
                let mut on_list = 0;
                let mut f = arena.freepools;
                while !f.is_null() {
                    assert_eq!((*f).ref_count.load(Relaxed), 0);
                    on_list += 1;
                    f = (*f).next;
                }
                assert_eq!(nf, on_list + USABLE_POOLS_PER_ARENA - arena.ncarved);
                prev = a;
                a = arena.next;
            }
        }
    }
}
