//! Layer 2: the small-object allocator. Requests of at most
//! `SMALL_REQUEST_THRESHOLD` bytes are served from [`Pool`]s (one size class
//! each), carved from [`Arena`]s that layer 1 maps.
//!
//! | file | type | what it keeps |
//! |---|---|---|
//! | `size_class.rs` | `SizeClass` | request size ↔ block size |
//! | `pool.rs` | [`Pool`], `PoolChain` | one pool's blocks and state machine |
//! | `used.rs` | `UsedPools` | one owner's used pools, per class |
//! | `arena.rs` | [`Arena`] | one arena's empty pools |
//! | `arenas.rs` | `Arenas` | usable arenas, fullest first; spares |
//! | `purge.rs` | `PurgeQueue` | empty pools whose pages are not yet purged |
//! | `info.rs` | [`ArenaInfo`], [`PoolInfo`] | read-only copies for users |
//! | this file | `SmallHeap` | the above together, under the heap's lock |
//!
//! Every pool with blocks has one *owner*, whose [`UsedPools`] table it is
//! on: a thread heap (`crate::thread`, which builds on this layer), or the
//! heap's shared table, under the small-object lock, for threads that
//! cannot have a thread heap. Empty pools, arenas and the purge queue are
//! shared ([`SmallHeap`], under the lock): a pool moves between its arena
//! and an owner on the `empty <-> used` transitions only.

pub(crate) mod arena;
mod arenas;
mod info;
pub(crate) mod pool;
mod purge;
pub(crate) mod size_class;
pub(crate) mod used;

pub use arena::Arena;
pub use info::{ArenaInfo, PoolInfo};
pub use pool::{Pool, PoolState};

use crate::config::{NB_SMALL_SIZE_CLASSES, POOL_PURGE_INTERVAL, PURGE_DELAY};
use crate::os::PageSource;
use crate::raw::RawHeap;
use crate::raw::chunk::ChunkHeader;
use arenas::Arenas;
use core::ptr::{NonNull, null_mut};
use parking_lot::lock_api::RawMutex;
use pool::{PoolChain, PoolOwner};
use purge::PurgeQueue;
use size_class::{SizeClass, block_size};
use std::time::Instant;
use used::{Freed, UsedPools};

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

/// What layer 2 counts as it goes, on transitions only; per-block figures
/// are summed from pool headers by [`SmallHeap::snapshot`].
#[derive(Clone, Copy)]
struct Counters {
    pools_purged: usize,
    arenas_allocated: usize,
    arenas_reclaimed: usize,
    arenas_high_water: usize,
}

/// State of layer 2 shared by all threads, kept under the heap's
/// small-object lock: the arenas and their empty pools, the purge queue,
/// and the used pools of threads that cannot use a thread heap (their
/// thread-local state is gone).
pub(crate) struct SmallHeap {
    /// Used pools owned by no thread (`owner` null).
    shared: UsedPools,
    /// Bytes requested by live blocks allocated from `shared`, minus those
    /// of small blocks freed without a thread heap (wrapping).
    requested: usize,
    arenas: Arenas,
    purge: PurgeQueue,
    /// When the last timed purge pass ran (see `purge_due`).
    purged_at: Option<Instant>,
    counters: Counters,
}

// SAFETY: the raw pointers refer to arenas and pools owned by the heap,
// which may be used from any thread; `SmallHeap` is only reached through
// the heap's lock.
unsafe impl Send for SmallHeap {}

impl SmallHeap {
    pub(crate) const fn new() -> Self {
        Self {
            shared: UsedPools::new(),
            requested: 0,
            arenas: Arenas::new(),
            purge: PurgeQueue::new(),
            purged_at: None,
            counters: Counters {
                pools_purged: 0,
                arenas_allocated: 0,
                arenas_reclaimed: 0,
                arenas_high_water: 0,
            },
        }
    }

    /// Allocates a block of `class` for `size` bytes from the shared lists.
    pub(crate) fn alloc_shared<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        class: SizeClass,
        size: usize,
    ) -> Option<NonNull<u8>> {
        // SAFETY: we hold the lock, so we own the shared lists.
        let block = match unsafe { self.shared.alloc_block(class) } {
            Some(block) => block,
            None => {
                let pool = self.take_pool(raw, class, null_mut())?;
                // SAFETY: a fresh used pool of `class`, on no list, shared.
                unsafe {
                    self.shared.link(pool, class);
                    self.shared.alloc_block(class)?
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
        pool: *mut Pool,
        ptr: NonNull<u8>,
    ) {
        // SAFETY: we hold the lock and `pool` is shared (caller).
        if unsafe { self.shared.free_block(pool, ptr) } == Freed::Emptied {
            // SAFETY: the pool just left the shared lists, empty.
            unsafe { self.release_pool(raw, pool) };
        }
    }

    /// Arenas taken from layer 1 so far (to tell whether an operation
    /// mapped one).
    pub(crate) fn arenas_mapped(&self) -> usize {
        self.counters.arenas_allocated
    }

    /// Adds `delta` (wrapping) to the bytes requested through the shared
    /// path.
    pub(crate) fn add_requested(&mut self, delta: usize) {
        self.requested = self.requested.wrapping_add(delta);
    }

    // ----- pool transitions -----

    /// empty -> used: takes an empty pool from the fullest usable arena and
    /// initialises it for `class`, owned by `owner` (null: shared). The
    /// caller links it on its owner's table.
    pub(crate) fn take_pool<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        class: SizeClass,
        owner: *mut PoolOwner,
    ) -> Option<*mut Pool> {
        self.purge_expired(raw);
        if self.arenas.fullest().is_null() {
            let arena = self.take_arena(raw)?;
            // SAFETY: a wholly empty arena, on no list.
            unsafe { self.arenas.insert(arena) };
        }
        self.take_pool_mapped(class, owner)
    }

    /// As [`Self::take_pool`], but only from arenas already usable (no
    /// arena mapped or taken from the spares); `None` if there is none.
    pub(crate) fn take_pool_mapped(
        &mut self,
        class: SizeClass,
        owner: *mut PoolOwner,
    ) -> Option<*mut Pool> {
        if self.arenas.fullest().is_null() {
            return None;
        }
        let arena = self.arenas.fullest();
        // SAFETY: `arena` is a live usable arena, so it has an empty pool;
        // the pool leaves the purge queue before it is reinitialised.
        let pool = unsafe {
            let (pool, base, reused) = Arena::take_pool(arena);
            if reused {
                self.purge.remove(pool);
            }
            self.arenas.lost_pool(arena);
            Pool::init(pool, base, class, owner);
            pool
        };
        Some(pool)
    }

    /// Re-initialises `pool`, an empty pool its owner kept as a spare, for
    /// `class` (empty -> used, without going through its arena).
    ///
    /// # Safety
    ///
    /// `pool` is a live empty pool of this heap owned by `owner`, on no
    /// list.
    pub(crate) unsafe fn retype_pool(
        &mut self,
        pool: *mut Pool,
        class: SizeClass,
        owner: *mut PoolOwner,
    ) {
        // SAFETY: caller's contract; we hold the lock, under which classes
        // change.
        unsafe {
            debug_assert_eq!(Pool::in_use(pool), 0);
            Pool::init(pool, (*pool).base, class, owner);
        }
    }

    /// used -> empty: the pool's last block was freed and it left its
    /// owner's table. It goes back to its arena, owned by no one, and joins
    /// the purge queue; the arena moves on the usable list, or leaves it.
    ///
    /// # Safety
    ///
    /// `pool` is a live empty pool of this heap on no list.
    pub(crate) unsafe fn release_pool<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        pool: *mut Pool,
    ) {
        // SAFETY: caller's contract.
        unsafe { self.release_pool_at(raw, pool, Instant::now()) }
    }

    /// `release_pool` with the clock already read (once per chain).
    ///
    /// # Safety
    ///
    /// As for `release_pool`.
    unsafe fn release_pool_at<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        pool: *mut Pool,
        now: Instant,
    ) {
        let arena = Arena::of_pool(pool);
        // SAFETY: `pool` is a live empty pool on no list (caller); its
        // arena is live.
        unsafe {
            debug_assert_eq!(Pool::in_use(pool), 0);
            (*pool)
                .owner
                .store(null_mut(), core::sync::atomic::Ordering::Relaxed);
            Arena::return_pool(arena, pool);
            self.purge.push(pool, now);
        }
        self.purge_due(raw, now, Some(PURGE_DELAY));
        // SAFETY: `arena` is live; it is on the usable list unless it was
        // full.
        if unsafe { self.arenas.gained_pool(arena) } {
            self.arena_emptied(raw, arena);
        }
    }

    /// Releases every pool of `chain`.
    ///
    /// # Safety
    ///
    /// The chain's pools are live empty pools of this heap (its invariant).
    pub(crate) unsafe fn release_chain<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        mut chain: PoolChain,
    ) {
        if chain.is_empty() {
            return;
        }
        let now = Instant::now();
        while let Some(pool) = chain.pop() {
            // SAFETY: caller's contract; off the chain, it is on no list.
            unsafe { self.release_pool_at(raw, pool, now) };
        }
    }

    // ----- arena transitions -----

    /// A wholly empty arena: a spare, or a new one from layer 1.
    fn take_arena<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
    ) -> Option<*mut Arena> {
        if let Some(arena) = self.arenas.pop_spare() {
            return Some(arena);
        }
        let base = raw.map_arena()?;
        self.counters.arenas_allocated += 1;
        let held = self.counters.arenas_allocated - self.counters.arenas_reclaimed;
        self.counters.arenas_high_water = self.counters.arenas_high_water.max(held);
        // SAFETY: layer 1 just mapped this arena chunk for us, zero-filled.
        Some(unsafe { Arena::init(base) })
    }

    /// Every pool of `arena` (now on no list) is empty: keep it as a spare,
    /// or give it back to layer 1.
    fn arena_emptied<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        arena: *mut Arena,
    ) {
        // SAFETY: `arena` is live, wholly empty, on no list.
        if !unsafe { self.arenas.push_spare(arena) } {
            self.release_arena(raw, arena);
        }
    }

    /// Gives a wholly empty arena, on no list, back to layer 1.
    fn release_arena<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        arena: *mut Arena,
    ) {
        // SAFETY: `arena` is live with every pool empty: its used pools are
        // on its free pools, some maybe on the purge queue, which must
        // forget them before the memory goes.
        unsafe { Arena::for_each_free_pool(arena, |pool| self.purge.remove(pool)) };
        self.counters.arenas_reclaimed += 1;
        // SAFETY: no block of `arena` is live and no list refers to it.
        unsafe { raw.unmap_arena(NonNull::new_unchecked(arena.cast::<ChunkHeader>())) };
    }

    // ----- returning memory -----

    /// Purges the pages of queued pools empty for at least `delay` at `now`
    /// (every queued pool if `None`). Called on pool transitions only, so
    /// the fast path never reads the clock; no background thread is
    /// needed.
    ///
    /// A timed pass runs at most once per `POOL_PURGE_INTERVAL` and purges
    /// no more pools than stayed unused over the whole interval since the
    /// last pass (the queue's low water): a program that drops and rebuilds
    /// a structure reuses its pools without a fault or a system call, and
    /// pools it stopped needing are purged one to two intervals after they
    /// emptied. (`json_2t` made 3,500 purge calls of one pool each per run
    /// when every pool was purged `PURGE_DELAY` after it emptied.)
    ///
    /// Pools are taken in batches and purged in address order, pools whose
    /// data regions touch in one call: each `madvise` of a multi-threaded
    /// process flushes every core's TLB.
    fn purge_due<S: PageSource, R: RawMutex>(
        &mut self,
        raw: &RawHeap<S, R>,
        now: Instant,
        delay: Option<core::time::Duration>,
    ) {
        const BATCH: usize = 64;
        let mut budget = usize::MAX;
        if delay.is_some() {
            if self
                .purged_at
                .is_some_and(|last| now.saturating_duration_since(last) < POOL_PURGE_INTERVAL)
            {
                return;
            }
            self.purged_at = Some(now);
            budget = self.purge.low_water();
        }
        loop {
            let mut batch = [null_mut::<Pool>(); BATCH];
            let mut n = 0;
            while n < BATCH.min(budget)
                && let Some(pool) = self.purge.pop_expired(now, delay)
            {
                batch[n] = pool;
                n += 1;
            }
            budget -= n;
            if n == 0 {
                break;
            }
            // SAFETY: the batch's pools were queued: live, empty pools.
            let base = |pool: *mut Pool| unsafe { (*pool).base };
            batch[..n].sort_unstable_by_key(|&pool| base(pool).addr());
            let mut run = 0;
            while run < n {
                let start = base(batch[run]);
                let mut end = run + 1;
                while end < n
                    && Arena::of_pool(batch[end]) == Arena::of_pool(batch[run])
                    && base(batch[end]).addr() == start.addr() + (end - run) * Pool::SIZE
                {
                    end += 1;
                }
                // SAFETY: the run's data regions are whole, page-aligned,
                // touching `POOL_SIZE` regions of one live arena, used by no
                // block. Whether the pages now read zero does not matter: a
                // pool's blocks are carved (their links written) before use.
                unsafe {
                    let _ = raw.purge(NonNull::new_unchecked(start), (end - run) * Pool::SIZE);
                }
                self.counters.pools_purged += end - run;
                run = end;
            }
            if n < BATCH {
                break;
            }
        }
        self.purge.reset_low_water();
    }

    pub(crate) fn purge_expired<S: PageSource, R: RawMutex>(&mut self, raw: &RawHeap<S, R>) {
        raw.purge_expired();
        if !self.purge.is_empty() {
            self.purge_due(raw, Instant::now(), Some(PURGE_DELAY));
        }
    }

    /// Gives back everything the shared state holds but does not use: the
    /// shared table's cached empty pools, the pages of every empty pool,
    /// the spare arenas. (Thread heaps' cached pools are released first by
    /// the heap's `trim`.)
    pub(crate) fn trim<S: PageSource, R: RawMutex>(&mut self, raw: &RawHeap<S, R>) {
        let mut empties = PoolChain::new();
        // SAFETY: we hold the lock: the shared table is ours, and the
        // pools taken off it are empty.
        unsafe {
            self.shared.take_empty(&mut empties);
            self.release_chain(raw, empties);
        }
        self.purge_due(raw, Instant::now(), None);
        while let Some(arena) = self.arenas.pop_spare() {
            self.release_arena(raw, arena);
        }
    }

    /// The counters, with the per-pool and per-block ones summed from the pool headers
    /// of every arena (O(arenas); keeps counters off the fast path), and
    /// the bytes requested through the shared lists only (the heap adds
    /// its thread heaps').
    pub(crate) fn snapshot<S: PageSource, R: RawMutex>(&self, raw: &RawHeap<S, R>) -> SmallStats {
        let c = self.counters;
        let mut s = SmallStats {
            pools_purged: c.pools_purged,
            arenas_allocated: c.arenas_allocated,
            arenas_reclaimed: c.arenas_reclaimed,
            arenas_high_water: c.arenas_high_water,
            bytes_requested: self.requested,
            ..SmallStats::default()
        };
        raw.for_each_arena(|arena| {
            let arena = arena.as_ptr().cast::<Arena>();
            // SAFETY: a live arena of this heap; we hold the small-object
            // lock, so no pool is (re)initialised meanwhile and its class
            // is stable; owners write block counts atomically. Carved pools
            // that are empty count zero.
            unsafe {
                for index in 1..=Arena::carved(arena) {
                    let pool = Arena::pool(arena, index);
                    let (class, in_use) = (Pool::class(pool), Pool::in_use(pool));
                    s.blocks_in_use[class] += in_use;
                    s.pools[class] += usize::from(in_use > 0);
                }
            }
        });
        s.bytes_in_use = (0..NB_SMALL_SIZE_CLASSES)
            .map(|c| s.blocks_in_use[c] * block_size(c))
            .sum();
        s
    }

    /// Copies the arena at the lowest address above `after` (`None`: the
    /// lowest of all), or `None` if there is none. Visiting arenas one call
    /// at a time lets the caller use each copy outside the lock (and
    /// allocate meanwhile), at O(arenas) per call.
    pub(crate) fn arena_after<S: PageSource, R: RawMutex>(
        &self,
        raw: &RawHeap<S, R>,
        after: Option<usize>,
    ) -> Option<ArenaInfo> {
        let mut best: Option<*mut Arena> = None;
        raw.for_each_arena(|chunk| {
            let arena = chunk.as_ptr().cast::<Arena>();
            let addr = arena.addr();
            if after.is_none_or(|a| addr > a) && best.is_none_or(|b| addr < b.addr()) {
                best = Some(arena);
            }
        });
        let arena = best?;
        // SAFETY: a live arena of this heap, and we hold the lock.
        Some(unsafe { ArenaInfo::copy(arena, self.arenas.is_spare(arena)) })
    }

    /// Checks every invariant of the shared state that can be checked while
    /// other threads run: the shared table and its pools, the purge queue,
    /// the usable arenas in order with their free pools, the spares. Other
    /// owners' tables are checked by their holders
    /// ([`UsedPools::validate`]). Panics on a violation.
    pub(crate) fn validate(&self) {
        // SAFETY: every pointer reached is a live arena or pool of this
        // heap, and we hold the lock that guards these lists.
        unsafe {
            self.shared.validate(null_mut());
            let queue = self.purge.validate();
            // Every pool that says it is queued is on the queue: free pools
            // of usable and spare arenas (full arenas have none).
            let mut queued = 0;
            self.arenas
                .validate(|arena| queued += Arena::validate(arena));
            assert_eq!(queued, queue, "pools marked queued but off the purge queue");
        }
    }
}
