//! Per-thread ownership of pools: layer 2's lock-free fast path.
//!
//! # Design [tag:thread-heaps]
//!
//! Each thread that allocates small blocks from a [`PrivateHeap`] gets a
//! [`ThreadHeap`] of that heap: its own `usedpools` table. The pools on it
//! belong to the thread (`Pool::owner`), which allocates and frees
//! their blocks with plain loads and stores: no lock, no atomic
//! read-modify-write. The heap's lock is taken only to move a pool between
//! its arena and a thread (once per pool's worth of blocks).
//!
//! * **Remote frees.** A block freed by a thread that does not own its pool
//!   is pushed onto the pool's own remote list with one compare-and-swap
//!   (free-list sharding, as mimalloc's per-page thread-free lists), so
//!   remote frees of different pools never contend on one cache line. The
//!   first remote free after the owner last looked also queues the pool on
//!   the owner's `pending` inbox (a second compare-and-swap, once per pool
//!   per batch; `crate::protocol`). The owner takes its pending pools on
//!   its slow paths (a pool to carve, a class run dry, a pool emptied or
//!   refilled), whatever their class, and frees their blocks locally, so
//!   pools emptied remotely go back to their arenas without waiting for
//!   their class to run dry. Nothing waits on the owner.
//!
//!   Why not snmalloc's message queues: they batch remote frees per
//!   destination in the freeing thread, which pays off when frees are
//!   mostly remote, but holds freed memory in the freer until a batch
//!   fills and needs a flush at thread exit; a per-pool list costs one
//!   uncontended CAS per remote free and keeps memory where it belongs.
//! * **Thread exit and adoption.** A thread heap is owned by a *claim
//!   token*; the owning thread keeps `(heap key, thread heap, token)` in a
//!   small thread-local cache. When the thread exits (or evicts the entry),
//!   it clears the token with one compare-and-swap, and touches nothing else:
//!   the thread heap becomes an *orphan* with its pools, its pools' remote
//!   lists and its pending inbox still reachable by remote frees. The next thread that needs a thread heap of
//!   that heap adopts an orphan before making a new one, so a program that
//!   starts and joins any number of short threads holds at most as many
//!   thread heaps as it ever ran threads at once. `stats`, `trim` and
//!   `validate` collect orphans' pending pools.
//! * **Memory of thread heaps.** Thread heaps come from a process-wide slab
//!   that is never unmapped: a thread-local cache entry may outlive the heap
//!   it names, and a thread's exit must be able to clear a token without
//!   knowing whether the heap still exists. A dropped heap's thread heaps
//!   return to the slab's free list; a token is never reused, so a stale
//!   clear fails harmlessly.
//! * **No recursion.** The thread-local is `const`-initialised, so setting
//!   it up runs no code that allocates through the global allocator, and
//!   its destructor only does compare-and-swaps. It is read with `try_with`:
//!   once the thread's thread-locals are being destroyed, or when a claim
//!   fails, allocation falls back to the heap's shared, locked lists and
//!   frees of owned pools go through the pools' remote lists. std's guarantee
//!   (rust-lang/rust#144465: TLS machinery allocates through `System`) is
//!   all that is assumed.
//!
//! * **Medium cache.** Each thread heap also keeps medium blocks its
//!   thread freed, for the thread's own reuse without a lock
//!   ([`medium_cache`]).
//!
//! | file | what it keeps |
//! |---|---|
//! | this file | [`ThreadHeap`], the [`Registry`] of a heap's thread heaps, the slab they live in |
//! | `local.rs` | the thread-local cache of the calling thread's thread heaps, the exit guard |
//! | `medium_cache.rs` | [`MediumCache`] |
//! | `../protocol.rs` | the lock-free remote-list, inbox and claim protocols, checked with loom |
//!
//! [`PrivateHeap`]: crate::PrivateHeap

pub(crate) mod local;
pub(crate) mod medium_cache;

use crate::lock::GlobalLock;
use crate::os::{OsPages, PageSource, page_size};
use crate::protocol::{Claim, Inbox, Linked};
use crate::small::pool::{Pool, PoolChain, PoolOwner};
use crate::small::size_class::SizeClass;
use crate::small::used::{Freed, UsedPools};
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicU64, AtomicUsize};
use medium_cache::{CacheCounters, MediumCache, add_owned};
use parking_lot::lock_api::Mutex;

impl Linked for Pool {
    unsafe fn set_next(this: *mut Self, next: *mut Self) {
        // SAFETY: the caller may write `this`'s inbox link (it queued it).
        unsafe { (*this).pending_next = next };
    }

    unsafe fn next(this: *mut Self) -> *mut Self {
        // SAFETY: the caller took `this` from an inbox.
        unsafe { (*this).pending_next }
    }
}

/// A value alone on its cache lines, so that remote threads writing it do
/// not slow the owner's fast path (false sharing).
#[repr(align(128))]
struct Padded<T>(T);

/// One thread's share of a heap's layer 2.
///
/// Its address is its pools' owner identity ([`PoolOwner`]): `used` is its
/// first field, and `owner_id`/`from_owner` convert.
///
/// Invariants:
/// * `used` and the pools on it are touched only by the owning thread (the
///   one whose cache holds `token`), or, while `token == 0` (orphan), by a
///   holder of the heap's small-object lock;
/// * every pool whose owner is this thread heap is on `used`, full, or
///   empty on `spare` (at most `THREAD_SPARE_POOLS` of them, counted by
///   `spares`);
/// * a pool on `pending` is owned by this thread heap and has its remote
///   list's queued bit set.
#[repr(C)]
pub(crate) struct ThreadHeap {
    used: UsedPools,
    /// Bytes requested by small blocks this owner allocated minus those it
    /// freed (its own or others', wrapping): the sum over all owners is
    /// exact. Written by the owner with a load and a store; read by
    /// `stats()`.
    requested: AtomicUsize,
    /// The claim token of the owner; 0 for an orphan.
    token: Claim,
    /// Next thread heap of the same heap (its [`Registry`]).
    next: *mut ThreadHeap,
    /// Next thread heap on the slab's free list.
    free_next: *mut ThreadHeap,
    medium: MediumCache,
    /// Empty pools of any class kept for reuse (linked through `next`).
    spare: PoolChain,
    spares: usize,
    /// Pools with blocks freed by other threads, not yet collected.
    pending: Padded<Inbox<Pool>>,
}

impl ThreadHeap {
    /// The medium allocator's shard of `th` (modulo `MEDIUM_SHARDS`):
    /// thread heaps are consecutive slab slots, so they take shards in
    /// turn.
    #[inline(always)]
    pub(crate) fn shard(th: *mut ThreadHeap) -> usize {
        th.addr() / size_of::<ThreadHeap>()
    }

    /// The owner identity of `th`'s pools.
    #[inline(always)]
    pub(crate) fn owner_id(th: *mut ThreadHeap) -> *mut PoolOwner {
        th.cast()
    }

    /// The thread heap whose owner identity is `owner` (non-null).
    #[inline(always)]
    fn from_owner(owner: *mut PoolOwner) -> *mut ThreadHeap {
        owner.cast()
    }

    /// The allocation fast path: a block of `class` for `size` bytes from
    /// the free list of `th`'s head pool of `class`, counted; `None` if
    /// that list is empty (then [`Self::alloc_carved`]).
    ///
    /// # Safety
    ///
    /// The calling thread owns `th`.
    #[inline(always)]
    pub(crate) unsafe fn alloc_local(
        th: *mut ThreadHeap,
        class: SizeClass,
        size: usize,
    ) -> Option<NonNull<u8>> {
        // SAFETY: caller's contract: the table and the counter are ours.
        unsafe {
            let block = (*th).used.pop_block(class)?;
            add_owned(&(*th).requested, size);
            Some(block)
        }
    }

    /// A block of `class` for `size` bytes from any of `th`'s used pools
    /// of `class`, carving never-used blocks as needed, counted; `None` if
    /// none has a block left.
    ///
    /// # Safety
    ///
    /// The calling thread owns `th`.
    pub(crate) unsafe fn alloc_carved(
        th: *mut ThreadHeap,
        class: SizeClass,
        size: usize,
    ) -> Option<NonNull<u8>> {
        // SAFETY: caller's contract: the table and the counter are ours.
        unsafe {
            let block = (*th).used.alloc_block(class)?;
            add_owned(&(*th).requested, size);
            Some(block)
        }
    }

    /// Returns block `ptr` (requested with `size` bytes) to `pool`, which
    /// `th` owns, counted: `true` if the pool stays where it is, else the
    /// caller follows with [`Self::pool_changed`] (see
    /// `UsedPools::put_block`).
    ///
    /// # Safety
    ///
    /// The calling thread owns `th`, which owns `pool`; `ptr` is a live
    /// block of `pool`, not used afterwards.
    #[inline(always)]
    pub(crate) unsafe fn free_local(
        th: *mut ThreadHeap,
        pool: *mut Pool,
        ptr: NonNull<u8>,
        size: usize,
    ) -> bool {
        // SAFETY: caller's contract.
        unsafe {
            add_owned(&(*th).requested, size.wrapping_neg());
            (*th).used.put_block(pool, ptr)
        }
    }

    /// After [`Self::free_local`] returned `false`: `pool` was full and is
    /// back on `th`'s table, or became empty (and left the table, unless it
    /// is its class's only pool).
    ///
    /// # Safety
    ///
    /// The calling thread owns `th`, which owns `pool`, whose block was
    /// just put back.
    #[inline(always)]
    pub(crate) unsafe fn pool_changed(th: *mut ThreadHeap, pool: *mut Pool) -> Freed {
        // SAFETY: caller's contract.
        unsafe { (*th).used.free_block_slow(pool) }
    }

    /// Puts `pool`, fresh from its arena for `th`, on `th`'s table.
    ///
    /// # Safety
    ///
    /// The calling thread owns `th`; `pool` is a used pool of `class` owned
    /// by `th` and on no list.
    pub(crate) unsafe fn link_pool(th: *mut ThreadHeap, pool: *mut Pool, class: SizeClass) {
        // SAFETY: caller's contract.
        unsafe { (*th).used.link(pool, class) }
    }

    /// Takes a spare pool of `class` off `th`'s spares, if it has one.
    ///
    /// # Safety
    ///
    /// The calling thread owns `th`.
    pub(crate) unsafe fn take_spare(th: *mut ThreadHeap, class: SizeClass) -> Option<*mut Pool> {
        // SAFETY: caller's contract: the spares are ours and live.
        unsafe {
            let pool = (*th).spare.take_first(|p| Pool::class(p) == class)?;
            (*th).spares -= 1;
            Some(pool)
        }
    }

    /// Takes any spare pool off `th`'s spares, if it has one.
    ///
    /// # Safety
    ///
    /// The calling thread owns `th`.
    pub(crate) unsafe fn take_any_spare(th: *mut ThreadHeap) -> Option<*mut Pool> {
        // SAFETY: caller's contract.
        unsafe {
            let pool = (*th).spare.pop()?;
            (*th).spares -= 1;
            Some(pool)
        }
    }

    /// Spare pools `th` may still take.
    ///
    /// # Safety
    ///
    /// The calling thread owns `th`.
    pub(crate) unsafe fn spare_room(th: *mut ThreadHeap) -> usize {
        // SAFETY: caller's contract.
        crate::config::THREAD_SPARE_POOLS.saturating_sub(unsafe { (*th).spares })
    }

    /// Keeps empty pool `pool` (owned by `th`, on no list) as a spare.
    /// Returns whether `th` now holds more than `THREAD_SPARE_POOLS` (the
    /// caller then gives them back with [`Self::take_spares`]).
    ///
    /// # Safety
    ///
    /// The calling thread owns `th`, which owns `pool`, empty and on no
    /// list.
    pub(crate) unsafe fn keep_spare(th: *mut ThreadHeap, pool: *mut Pool) -> bool {
        // SAFETY: caller's contract.
        unsafe {
            (*th).spare.push(pool);
            (*th).spares += 1;
            (*th).spares > crate::config::THREAD_SPARE_POOLS
        }
    }

    /// Takes all of `th`'s spare pools.
    ///
    /// # Safety
    ///
    /// The calling thread owns `th` (or holds the lock and `th` is an
    /// orphan).
    pub(crate) unsafe fn take_spares(th: *mut ThreadHeap) -> PoolChain {
        // SAFETY: caller's contract.
        unsafe {
            (*th).spares = 0;
            core::mem::replace(&mut (*th).spare, PoolChain::new())
        }
    }

    /// `th`'s medium cache.
    ///
    /// # Safety
    ///
    /// `th` is a thread heap from the slab.
    #[inline(always)]
    pub(crate) unsafe fn medium(th: *mut ThreadHeap) -> *mut MediumCache {
        // SAFETY: caller's contract; no reference is formed.
        unsafe { &raw mut (*th).medium }
    }

    /// Adds `delta` (wrapping) to the owner's requested bytes of small
    /// blocks.
    ///
    /// # Safety
    ///
    /// The caller owns `th`.
    #[inline(always)]
    pub(crate) unsafe fn add_requested(th: *mut ThreadHeap, delta: usize) {
        // SAFETY: `th` is live (slab memory is never unmapped); only the
        // owner writes the counter, so load + store loses no update.
        unsafe { add_owned(&(*th).requested, delta) }
    }

    /// Adds `delta` (wrapping) to the owner's requested bytes of medium and
    /// huge blocks (summed into layer 1's count by `stats()`).
    ///
    /// # Safety
    ///
    /// The caller owns `th`.
    pub(crate) unsafe fn add_medium_requested(th: *mut ThreadHeap, delta: usize) {
        // SAFETY: as for `add_requested`.
        unsafe { MediumCache::add_requested(Self::medium(th), delta) }
    }

    /// Frees block `ptr` of `pool`, which another thread heap `owner` owns:
    /// onto the pool's remote list with one compare-and-swap, and, if that
    /// push queued the pool, onto the owner's pending inbox with another.
    ///
    /// # Safety
    ///
    /// `owner` is a non-null owner identity made by `owner_id`, owner of
    /// `pool`; `ptr` is a live block of `pool`, not used afterwards.
    #[inline]
    pub(crate) unsafe fn push_remote(owner: *mut PoolOwner, pool: *mut Pool, ptr: NonNull<u8>) {
        // SAFETY: `pool` is live while `ptr` is; the block is given up.
        // Once pushed, the pool cannot empty (the block counts as allocated)
        // until its owner takes it from `pending`, which needs this push:
        // so `pool` and its owner `th` (slab memory) are still the block's.
        unsafe {
            if (*pool).remote.push(ptr.as_ptr()) {
                let th = Self::from_owner(owner);
                (*th).pending.0.push(pool);
            }
        }
    }

    /// Whether other threads freed blocks that `th` has not collected.
    ///
    /// # Safety
    ///
    /// `th` is a thread heap from the slab.
    #[inline]
    pub(crate) unsafe fn has_pending(th: *mut ThreadHeap) -> bool {
        // SAFETY: slab memory is never unmapped.
        unsafe { !(*th).pending.0.is_empty() }
    }

    /// Frees locally every block other threads freed into `th`'s pools
    /// (the pending pools' remote lists). Pools that become empty leave
    /// `used` and are returned, for the caller to release under the
    /// small-object lock.
    ///
    /// # Safety
    ///
    /// The caller owns `th` (or holds the lock and `th` is an orphan).
    pub(crate) unsafe fn collect(th: *mut ThreadHeap) -> PoolChain {
        // SAFETY: `th` is live.
        let mut pool = unsafe { (*th).pending.0.take_all() };
        let mut emptied = PoolChain::new();
        while !pool.is_null() {
            // SAFETY: pending pools are owned by `th` (invariant). The link
            // is read before the remote list is taken: taking it clears the
            // queued bit, after which a remote free may queue the pool again
            // and rewrite the link. Remote blocks are live blocks of the
            // pool until freed here.
            unsafe {
                let next = <Pool as Linked>::next(pool);
                let mut block = (*pool).remote.take_all();
                while !block.is_null() {
                    let after = <u8 as Linked>::next(block);
                    #[cfg(feature = "hardened")]
                    Pool::check_link(pool, block, after);
                    if (*th).used.free_block(pool, NonNull::new_unchecked(block)) == Freed::Emptied
                    {
                        debug_assert!(after.is_null());
                        emptied.push(pool);
                    }
                    block = after;
                }
                pool = next;
            }
        }
        emptied
    }

    /// Whether `th` has no owner.
    ///
    /// # Safety
    ///
    /// `th` is a thread heap from the slab.
    unsafe fn is_orphan(th: *mut ThreadHeap) -> bool {
        // SAFETY: slab memory is never unmapped. Acquire pairs with the
        // releasing thread's Release, so its last writes are visible.
        unsafe { (*th).token.is_orphan() }
    }

    /// Makes the calling thread the owner of orphan `th`; returns the token.
    ///
    /// # Safety
    ///
    /// `th` is an orphan of a heap whose small-object lock the caller holds.
    unsafe fn adopt(th: *mut ThreadHeap) -> u64 {
        let token = NEXT_TOKEN.fetch_add(1, Relaxed);
        // SAFETY: `th` is live; claims happen under the lock, so no one else
        // adopts it meanwhile.
        unsafe { (*th).token.adopt(token) };
        token
    }

    /// Gives up ownership of `th` if the caller still owns it under `token`
    /// (null `th`: nothing to do).
    pub(crate) fn disown(th: *mut ThreadHeap, token: u64) {
        if !th.is_null() {
            // SAFETY: slab memory is never unmapped. Release: whoever adopts
            // `th` sees every write the owner made. Fails harmlessly if the
            // heap was dropped and the slot recycled (token cleared or new).
            let _ = unsafe { (*th).token.release(token) };
        }
    }

    /// A fresh thread heap from the slab, owned by the calling thread with
    /// the returned token; `None` if the OS refuses memory.
    fn new_owned() -> Option<(*mut ThreadHeap, u64)> {
        let th = SLAB.lock().take()?;
        // SAFETY: a slab slot no heap uses (taken off the free list, or
        // fresh and zeroed). Every field but `token` is written plainly;
        // `token` is only ever written atomically, because a stale cache
        // entry of a dropped heap may still try to release it (its CAS
        // fails: the slot's token is 0, or new).
        unsafe {
            (&raw mut (*th).used).write(UsedPools::new());
            (&raw mut (*th).requested).write(AtomicUsize::new(0));
            (&raw mut (*th).next).write(null_mut());
            (&raw mut (*th).free_next).write(null_mut());
            (&raw mut (*th).medium).write(MediumCache::new());
            (&raw mut (*th).spare).write(PoolChain::new());
            (&raw mut (*th).spares).write(0);
            (&raw mut (*th).pending).write(Padded(Inbox::new()));
            Some((th, Self::adopt(th)))
        }
    }

    /// Returns a dropped heap's thread heap to the slab.
    ///
    /// # Safety
    ///
    /// `th`'s heap is being dropped (no thread uses it, its pools are gone);
    /// `th` is not used afterwards except by stale cache entries, whose
    /// releases fail because the token is cleared here.
    unsafe fn recycle(th: *mut ThreadHeap) {
        // SAFETY: `th` is a live slab slot (caller).
        unsafe {
            (*th).token.reset();
            (*th).used.clear();
            Self::take_spares(th);
            MediumCache::forget(Self::medium(th));
            (*th).pending.0.clear();
        }
        SLAB.lock().give_back(th);
    }
}

/// Every thread heap of one heap, owned or orphaned, linked through
/// `ThreadHeap::next`. Lives under the heap's small-object lock, which
/// adoption requires: an orphan is touched only by lock holders.
pub(crate) struct Registry {
    head: *mut ThreadHeap,
}

// SAFETY: the pointers refer to slab memory, which any thread may use; the
// registry is only reached through the heap's lock.
unsafe impl Send for Registry {}

impl Registry {
    pub(crate) const fn new() -> Self {
        Self { head: null_mut() }
    }

    fn iter(&self) -> impl Iterator<Item = *mut ThreadHeap> + '_ {
        core::iter::successors(NonNull::new(self.head), |th| {
            // SAFETY: registered thread heaps live as long as the heap.
            NonNull::new(unsafe { (*th.as_ptr()).next })
        })
        .map(NonNull::as_ptr)
    }

    /// A thread heap for the calling thread: an orphan adopted, or a new
    /// one; `None` if the OS refuses memory. The caller holds the lock.
    pub(crate) fn claim(&mut self) -> Option<(*mut ThreadHeap, u64)> {
        for th in self.iter() {
            // SAFETY: registered thread heaps are live; we hold the lock,
            // which adoption requires.
            unsafe {
                if ThreadHeap::is_orphan(th) {
                    return Some((th, ThreadHeap::adopt(th)));
                }
            }
        }
        let (th, token) = ThreadHeap::new_owned()?;
        // SAFETY: a fresh thread heap, ours.
        unsafe { (*th).next = self.head };
        self.head = th;
        Some((th, token))
    }

    /// Collects the pending remote frees of the calling thread's thread heap `own` (may
    /// be null) and of every orphan: the pools that empty go on `chain`.
    /// With `release_cached`, also moves their cached empty pools to
    /// `chain` and passes their medium cache's blocks to `free_medium`.
    /// Other live threads' thread heaps are theirs alone.
    pub(crate) fn collect_idle(
        &self,
        own: *mut ThreadHeap,
        release_cached: bool,
        chain: &mut PoolChain,
        mut free_medium: impl FnMut(NonNull<u8>),
    ) {
        for th in self.iter() {
            // SAFETY: `own` is ours, and an orphan is touched by no thread
            // while we hold the lock (only lock holders adopt). Pools that
            // leave a table empty are on no list once on the chain.
            unsafe {
                if th != own && !ThreadHeap::is_orphan(th) {
                    continue;
                }
                let mut emptied = ThreadHeap::collect(th);
                while let Some(pool) = emptied.pop() {
                    chain.push(pool);
                }
                if release_cached {
                    (*th).used.take_empty(chain);
                    let mut spares = ThreadHeap::take_spares(th);
                    while let Some(pool) = spares.pop() {
                        chain.push(pool);
                    }
                    MediumCache::drain(ThreadHeap::medium(th), &mut free_medium);
                }
            }
        }
    }

    /// Bytes requested through every thread heap (wrapping), and how many
    /// thread heaps there are. Read with relaxed loads: exact when no other
    /// thread allocates meanwhile.
    pub(crate) fn requested(&self) -> (usize, usize) {
        self.iter().fold((0, 0), |(sum, n), th| {
            // SAFETY: registered thread heaps are live; the counter is
            // atomic.
            let r = unsafe { (*th).requested.load(Relaxed) };
            (sum.wrapping_add(r), n + 1)
        })
    }

    /// The medium caches' counters, summed.
    pub(crate) fn medium_totals(&self) -> CacheCounters {
        self.iter().fold((0, 0, 0), |t, th| {
            // SAFETY: registered thread heaps are live; counters are atomic.
            let (r, b, n) = unsafe { MediumCache::counters(ThreadHeap::medium(th)) };
            (t.0.wrapping_add(r), t.1 + b, t.2 + n)
        })
    }

    /// Checks the used-pool tables of `own` (may be null) and of every
    /// orphan; panics on a violation. Other live threads' tables may be
    /// changing, so they are skipped.
    pub(crate) fn validate(&self, own: *mut ThreadHeap) {
        for th in self.iter() {
            // SAFETY: as in `collect_idle`: these tables are quiescent.
            unsafe {
                if th == own || ThreadHeap::is_orphan(th) {
                    (*th).used.validate(ThreadHeap::owner_id(th));
                }
            }
        }
    }

    /// Returns every thread heap to the slab (the heap is being dropped;
    /// threads' caches may still name them, harmlessly).
    pub(crate) fn recycle_all(&mut self) {
        let mut th = core::mem::replace(&mut self.head, null_mut());
        while !th.is_null() {
            // SAFETY: no thread uses a heap being dropped; `next` is read
            // before the slot is recycled.
            unsafe {
                let next = (*th).next;
                ThreadHeap::recycle(th);
                th = next;
            }
        }
    }
}

/// Source of claim tokens; 0 means "orphan", and tokens are never reused.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// The process-wide home of thread heaps: slabs mapped from the OS, never
/// unmapped ([ref:thread-heaps]), and a free list of recycled slots.
struct Slab {
    free: *mut ThreadHeap,
    /// Next never-used slot, and the end of the current slab.
    cursor: *mut ThreadHeap,
    end: usize,
}

// SAFETY: the pointers refer to process-wide slab memory; the slab is only
// reached under its lock.
unsafe impl Send for Slab {}

static SLAB: Mutex<GlobalLock, Slab> = Mutex::const_new(
    <GlobalLock as parking_lot::lock_api::RawMutex>::INIT,
    Slab {
        free: null_mut(),
        cursor: null_mut(),
        end: 0,
    },
);

/// Bytes mapped per slab.
const SLAB_BYTES: usize = 64 * 1024;

impl Slab {
    fn take(&mut self) -> Option<*mut ThreadHeap> {
        if !self.free.is_null() {
            let th = self.free;
            // SAFETY: slots on the free list are live slab memory.
            self.free = unsafe { (*th).free_next };
            return Some(th);
        }
        if self.cursor.is_null() || self.cursor.addr() + size_of::<ThreadHeap>() > self.end {
            let bytes = SLAB_BYTES.max(page_size());
            let base = OsPages.map(bytes, page_size())?;
            self.cursor = base.as_ptr().cast();
            self.end = base.as_ptr().addr() + bytes;
        }
        let th = self.cursor;
        self.cursor = th.wrapping_add(1);
        Some(th)
    }

    fn give_back(&mut self, th: *mut ThreadHeap) {
        // SAFETY: `th` is a live slab slot no one owns.
        unsafe { (*th).free_next = self.free };
        self.free = th;
    }
}

const _: () = assert!(SLAB_BYTES.is_multiple_of(core::mem::align_of::<ThreadHeap>()));
