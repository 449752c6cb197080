//! `PrivateHeap`: the whole heap. Routes each request by size to layer 2
//! (pools) or layer 1 (medium and huge blocks), and implements
//! `GlobalAlloc` and `allocator_api2::alloc::Allocator`.

// The C-style, size-less interface: malloc, calloc, realloc, free.
mod cstyle;

use crate::config::{ALIGNMENT, SMALL_REQUEST_THRESHOLD, ZERO_BY_PURGE};
use crate::lock::{ForkSafe, SpinLock};
use crate::os::{OsPages, PageSource};
use crate::raw::RawHeap;
use crate::raw::chunk::ChunkKind;
#[cfg(test)]
use crate::small::PoolState;
use crate::small::arena::Arena;
use crate::small::pool::{Pool, PoolChain, PoolOwner};
use crate::small::size_class::{SizeClass, block_size, class_of, common_class_of};
use crate::small::used::Freed;
use crate::small::{ArenaInfo, SmallHeap};
use crate::stats::Stats;
use crate::thread::local;
use crate::thread::medium_cache::{MediumCache, medium_bin};
use crate::thread::{Registry, ThreadHeap};
use crate::trace::hook as trace;
use allocator_api2::alloc::{AllocError, Allocator};
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::{NonNull, null_mut};
use parking_lot::lock_api::{Mutex, RawMutex};

/// The whole heap (the top of the layers), as CPython's memory manager:
/// requests of at most 512 bytes go to layer 2 (pools of
/// [`Arena`](crate::Arena)s, owned per thread), larger ones to its
/// [`RawHeap`] (layer 1), which owns every chunk the heap maps. Dropping it
/// gives all of its memory back to the OS.
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
///
/// # Threads
///
/// Each thread allocating small blocks owns pools of its own (a *thread
/// heap*, [ref:thread-heaps]): its allocations and frees of its own blocks
/// take no lock and no atomic read-modify-write; a block freed by another
/// thread goes back to its owner with one compare-and-swap. A block freed
/// that way counts in [`Stats::bytes_in_use`] until its owner collects it,
/// which happens when the owner next runs out of a size class, or at the
/// next `stats()`, `trim()` or `validate()` if the owner has exited.
pub struct PrivateHeap<S: PageSource = OsPages, R: RawMutex = SpinLock> {
    /// Layer 1.
    raw: RawHeap<S, R>,
    /// Layer 2's shared state and the thread heaps, under their own lock
    /// so small and medium requests do not contend. Lock order: `small`
    /// before `raw`.
    small: Mutex<ForkSafe<R>, Shared>,
}

/// What the heap's small-object lock guards: layer 2's shared state and
/// the registry of thread heaps (adopting an orphan needs the lock that
/// also guards the orphan's pools).
struct Shared {
    small: SmallHeap,
    threads: Registry,
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
    /// Under two medium chunks (`2 * MEDIUM_CHUNK_SIZE`, 32 MiB), medium
    /// blocks are mapped one by one rather than carved from a chunk that
    /// would fill most of the bound.
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
            small: Mutex::const_new(
                <ForkSafe<R> as RawMutex>::INIT,
                Shared {
                    small: SmallHeap::new(),
                    threads: Registry::new(),
                },
            ),
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
    /// spare arenas, cached empty pools, the spare medium chunks and the
    /// whole pages inside free medium blocks. Live blocks are untouched.
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
        let own = self.thread_heap();
        let mut shared = self.small.lock();
        self.collect_threads(&mut shared, own, true);
        shared.small.trim(&self.raw);
        self.raw.trim();
    }

    /// Collects the pending remote frees of the calling thread's thread heap `own` (if
    /// not null) and of every orphan; with `release_cached`, also gives
    /// back their cached empty pools.
    fn collect_threads(&self, shared: &mut Shared, own: *mut ThreadHeap, release_cached: bool) {
        let mut chain = PoolChain::new();
        shared
            .threads
            .collect_idle(own, release_cached, &mut chain, |block| {
                self.release_cached(block)
            });
        // SAFETY: the chain holds empty pools that left their owners.
        unsafe { shared.small.release_chain(&self.raw, chain) };
    }

    /// The heap's layer 1, which the raw domain uses directly.
    pub fn raw(&self) -> &RawHeap<S, R> {
        &self.raw
    }

    /// A snapshot of the heap's counters. Takes the heap's locks briefly,
    /// one at a time; does not allocate.
    pub fn stats(&self) -> Stats {
        let own = self.thread_heap();
        let (small, (cache_requested, cache_bytes, cache_blocks)) = {
            let mut shared = self.small.lock();
            self.collect_threads(&mut shared, own, false);
            let mut small = shared.small.snapshot(&self.raw);
            let (requested, thread_heaps) = shared.threads.requested();
            small.bytes_requested = small.bytes_requested.wrapping_add(requested);
            small.thread_heaps = thread_heaps;
            (small, shared.threads.medium_totals())
        };
        let mut raw = self.raw.stats();
        // Blocks in threads' medium caches are neither requested nor in use.
        raw.bytes_requested = raw.bytes_requested.wrapping_add(cache_requested);
        raw.bytes_in_use -= cache_bytes;
        raw.medium_blocks -= cache_blocks;
        raw.bytes_cached = cache_bytes;
        Stats {
            bytes_requested: small.bytes_requested + raw.bytes_requested,
            bytes_in_use: small.bytes_in_use + raw.bytes_in_use,
            bytes_mapped: raw.bytes_mapped,
            small,
            raw,
        }
    }

    /// Live blocks of every size, as CPython's `sys.getallocatedblocks()`:
    /// small blocks (a block freed by another thread counts until its
    /// owner collects it), medium and huge blocks. Takes the locks briefly,
    /// as [`stats`](Self::stats).
    ///
    /// ```
    /// let heap = pymalloc::PrivateHeap::new();
    /// let a = allocator_api2::boxed::Box::new_in(1u8, &heap);
    /// let b = allocator_api2::boxed::Box::new_in([0u8; 5000], &heap);
    /// assert_eq!(heap.allocated_blocks(), 2);
    /// # drop((a, b));
    /// ```
    pub fn allocated_blocks(&self) -> usize {
        let s = self.stats();
        s.small.blocks_in_use.iter().sum::<usize>() + s.raw.medium_blocks + s.raw.huge_blocks
    }

    /// Checks every invariant of both layers (see [`RawHeap::validate`] and
    /// the pool and arena lists); panics with a description on the first
    /// violation. Safe to call while other threads use the heap: their own
    /// pools are skipped (they may be changing); the shared state, the
    /// calling thread's pools and those of exited threads are checked.
    /// O(pools + medium blocks); for tests, not for hot paths.
    pub fn validate(&self) {
        let own = self.thread_heap();
        let mut shared = self.small.lock();
        self.collect_threads(&mut shared, own, false);
        shared.small.validate();
        shared.threads.validate(own);
        self.raw.validate();
    }

    /// Calls `f` with a copy of each arena of the heap and its pools (size
    /// class, state, blocks in use), in address order: a map of layer 2 for
    /// finding fragmentation. Each copy is taken under the small-object
    /// lock, without allocating; `f` runs outside the lock, so it may
    /// allocate, even from this heap. Pools of other running threads are
    /// read as they are at that moment. O(arenas²) in all; for tools, not
    /// for hot paths.
    ///
    /// ```
    /// use allocator_api2::boxed::Box;
    /// let heap = pymalloc::PrivateHeap::new();
    /// let blocks: Vec<_> = (0..1000).map(|i| Box::new_in(i as u64, &heap)).collect();
    /// let mut used = 0;
    /// heap.for_each_arena(|arena| {
    ///     for pool in &arena.pools {
    ///         if pool.block_size == 16 {
    ///             used += pool.blocks_in_use;
    ///         }
    ///     }
    /// });
    /// assert_eq!(used, 1000);
    /// # drop(blocks);
    /// ```
    pub fn for_each_arena(&self, mut f: impl FnMut(&ArenaInfo)) {
        let mut after = None;
        loop {
            let Some(info) = self.small.lock().small.arena_after(&self.raw, after) else {
                return;
            };
            after = Some(info.address);
            f(&info);
        }
    }

    /// Every arena of the heap, copied as [`for_each_arena`] does.
    ///
    /// [`for_each_arena`]: Self::for_each_arena
    pub fn arenas(&self) -> Vec<ArenaInfo> {
        let mut out = Vec::new();
        self.for_each_arena(|a| out.push(a.clone()));
        out
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
        unsafe { Self::block_usable(header, ptr) }
    }

    /// Usable bytes of live block `ptr` once its chunk is known.
    ///
    /// # Safety
    ///
    /// `header` is the chunk (from the arena map) of live block `ptr`.
    pub(crate) unsafe fn block_usable(
        header: NonNull<crate::raw::chunk::ChunkHeader>,
        ptr: NonNull<u8>,
    ) -> usize {
        // SAFETY: caller's contract.
        unsafe {
            match (*header.as_ptr()).kind {
                ChunkKind::Arena => block_size(Pool::class(Arena::pool_of(
                    header.as_ptr().cast(),
                    ptr.as_ptr(),
                ))),
                _ => RawHeap::<S, R>::block_usable_size(header, ptr),
            }
        }
    }

    /// Allocates `size` bytes at `align`: the allocation fast path of
    /// `alloc` and `allocate`. A small request that the calling thread's
    /// cached thread heap serves is inline (see `try_alloc`), and so is a
    /// medium one its medium cache serves (a call, and the registers it
    /// saves, would cost a medium pair a fifth of its instructions);
    /// everything else is one call.
    #[inline(always)]
    pub(crate) fn alloc_fast(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        // The alignment tested first, then the size, in nested branches
        // (as in `free_layout`): LLVM then tests neither twice. A zero-byte
        // request is neither small nor medium here: it takes the outlined
        // path.
        let class = if align <= ALIGNMENT {
            let class = common_class_of(size, ALIGNMENT);
            if class.is_none()
                && let Some((bin, _)) = medium_bin(size)
            {
                return self.alloc_medium_fast(bin, size);
            }
            class
        } else {
            class_of(size, align)
        };
        if let Some(class) = class
            && let Some(th) = local::cached(self.raw.id())
            // SAFETY: the calling thread owns `th`.
            && let Some(block) = unsafe { ThreadHeap::alloc_local(th, class, size) }
        {
            #[cfg(feature = "valgrind")]
            crate::valgrind::malloclike(block.as_ptr(), size, false);
            return Some(block);
        }
        self.alloc_outlined(size, align)
    }

    /// The medium branch of [`Self::alloc_fast`]: `size` bytes (of bin
    /// `bin`, at the default alignment) from the calling thread's medium
    /// cache, inline; else one call.
    #[inline(always)]
    pub(crate) fn alloc_medium_fast(&self, bin: usize, size: usize) -> Option<NonNull<u8>> {
        debug_assert_eq!(medium_bin(size).map(|(b, _)| b), Some(bin));
        if let Some(th) = local::cached(self.raw.id())
            // SAFETY: the calling thread owns `th`; `bin` is `size`'s.
            && let Some(block) = unsafe { MediumCache::pop(ThreadHeap::medium(th), bin, size) }
        {
            #[cfg(feature = "valgrind")]
            crate::valgrind::malloclike(block.as_ptr(), size, false);
            return Some(block);
        }
        self.alloc_outlined(size, ALIGNMENT)
    }

    /// Everything `alloc_fast` does not inline.
    #[inline(never)]
    fn alloc_outlined(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        self.alloc_sized(size, align).map(|(p, _)| p)
    }

    /// Allocates `size` bytes at `align`; also tells whether the block is
    /// known to read zero.
    #[inline(always)]
    pub(crate) fn alloc_sized(&self, size: usize, align: usize) -> Option<(NonNull<u8>, bool)> {
        let found = match self.try_alloc(size, align) {
            Some(found) => Some(found),
            None => self.alloc_after_trim(size, align),
        };
        #[cfg(feature = "valgrind")]
        if let Some((p, zeroed)) = found {
            crate::valgrind::malloclike(p.as_ptr(), size, zeroed);
        }
        found
    }

    /// The allocation fast path, top to bottom: size class; the calling
    /// thread's thread heap from the first entry of its thread-local cache;
    /// the head used pool of the class; pop its free list; count. Plain
    /// loads and stores only. Carving a pool's never-used blocks onto its
    /// free list, and a pool found full, are out of line. A medium request
    /// up to 4 MiB pops the thread's medium cache. Anything else is a
    /// `#[cold]` call. Small blocks never report reading zero: their first
    /// word held a free-list link.
    ///
    /// Cost: see `suite/instructions.sh` (callgrind) and the README.
    #[inline(always)]
    fn try_alloc(&self, size: usize, align: usize) -> Option<(NonNull<u8>, bool)> {
        if let Some(class) = class_of(size, align) {
            if let Some(th) = local::cached(self.raw.id()) {
                // SAFETY: the calling thread owns `th`.
                if let Some(block) = unsafe { ThreadHeap::alloc_local(th, class, size) } {
                    return Some((block, false));
                }
                // SAFETY: as above.
                return unsafe { self.alloc_small_slow(th, class, size) };
            }
            // SAFETY: a null thread heap is looked up there.
            return unsafe { self.alloc_small_slow(null_mut(), class, size) };
        }
        if align <= ALIGNMENT
            && let Some((bin, bound)) = medium_bin(size)
        {
            return self.alloc_medium(bin, bound, size);
        }
        self.raw
            .alloc_block_in(size, align, self.medium_shard(local::cached(self.raw.id())))
            .map(|b| (b.ptr, b.zeroed))
    }

    /// The medium allocator's shard for the calling thread: its thread
    /// heap's, or its own thread-local one without a thread heap.
    #[inline]
    fn medium_shard(&self, th: Option<*mut ThreadHeap>) -> usize {
        th.map_or_else(RawHeap::<S, R>::thread_shard, ThreadHeap::shard)
    }

    /// A medium request that the calling thread's medium cache may serve
    /// without a lock; otherwise a block of the bin's size from layer 1.
    #[inline]
    fn alloc_medium(&self, bin: usize, bound: usize, size: usize) -> Option<(NonNull<u8>, bool)> {
        let th = local::cached(self.raw.id());
        if let Some(th) = th {
            // SAFETY: the calling thread owns `th`; `bin` is `size`'s.
            if let Some(block) = unsafe { MediumCache::pop(ThreadHeap::medium(th), bin, size) } {
                return Some((block, false));
            }
        }
        self.raw
            .alloc_medium_as(size, bound, ALIGNMENT, self.medium_shard(th))
            .map(|b| (b.ptr, b.zeroed))
    }

    /// A small request the fast path could not serve: the thread heap is
    /// not the cached one (`th` null), or it has no used pool of `class`.
    ///
    /// # Safety
    ///
    /// `th` is null or the calling thread's own thread heap.
    #[cold]
    #[inline(never)]
    unsafe fn alloc_small_slow(
        &self,
        th: *mut ThreadHeap,
        class: SizeClass,
        size: usize,
    ) -> Option<(NonNull<u8>, bool)> {
        let th = if th.is_null() {
            self.thread_heap_slow()
        } else {
            th
        };
        if th.is_null() {
            return self.alloc_shared(class, size);
        }
        // SAFETY: the calling thread owns `th` (caller, or just looked up).
        unsafe {
            // A slow path of the owner: collect what other threads freed
            // into its pools, whatever their class.
            self.collect_pending(th);
            if let Some(block) = ThreadHeap::alloc_carved(th, class, size) {
                return Some((block, false));
            }
            self.alloc_refill(th, class, size)
        }
    }

    /// Frees locally the blocks other threads freed into `th`'s pools, if
    /// any; pools that empty go back to their arenas.
    ///
    /// # Safety
    ///
    /// The calling thread owns `th`.
    #[inline]
    unsafe fn collect_pending(&self, th: *mut ThreadHeap) {
        // SAFETY: caller's contract.
        unsafe {
            if ThreadHeap::has_pending(th) {
                let emptied = ThreadHeap::collect(th);
                if !emptied.is_empty() {
                    // SAFETY: the chain holds pools that left `th`'s table
                    // empty.
                    self.small.lock().small.release_chain(&self.raw, emptied);
                }
            }
        }
    }

    /// Returns block `ptr` to `pool`, which thread heap `th` owns, counted.
    ///
    /// # Safety
    ///
    /// The calling thread owns `th`, which owns `pool`; `ptr` is a live block
    /// of `pool` requested with `size` bytes, not used afterwards.
    #[inline(always)]
    unsafe fn free_local(
        &self,
        th: *mut ThreadHeap,
        pool: *mut Pool,
        ptr: NonNull<u8>,
        size: usize,
    ) {
        // SAFETY: caller's contract.
        if !unsafe { ThreadHeap::free_local(th, pool, ptr, size) } {
            // SAFETY: as above; the block was just put back.
            unsafe { self.free_local_changed(th, pool) };
        }
    }

    /// The pool of a block `free_local` just put back changed state: full
    /// no more, or empty. One out-of-line call, last in the fast path, so
    /// that the path keeps nothing in saved registers across it (their
    /// saves and restores cost a C `malloc`+`free` pair 4 instructions:
    /// `preload/instructions.sh 32`).
    ///
    /// # Safety
    ///
    /// As for [`ThreadHeap::pool_changed`].
    #[cold]
    #[inline(never)]
    unsafe fn free_local_changed(&self, th: *mut ThreadHeap, pool: *mut Pool) {
        // SAFETY: caller's contract.
        unsafe {
            if ThreadHeap::pool_changed(th, pool) == Freed::Emptied {
                // It left `th`'s table, empty; `th` is ours.
                self.pool_emptied(th, pool);
            }
        }
    }

    /// The calling thread's thread heap of this heap; null when the thread
    /// cannot have one (its thread-locals are gone, or no memory).
    #[inline(always)]
    pub(crate) fn thread_heap(&self) -> *mut ThreadHeap {
        match local::cached(self.raw.id()) {
            Some(th) => th,
            None => self.thread_heap_slow(),
        }
    }

    #[cold]
    #[inline(never)]
    fn thread_heap_slow(&self) -> *mut ThreadHeap {
        let key = self.raw.assign_id();
        local::lookup(key, || self.small.lock().threads.claim())
    }

    /// The calling thread has no used pool of `class` with a block left
    /// (its pending pools collected): take a new pool under the lock.
    ///
    /// # Safety
    ///
    /// The calling thread owns `th`.
    unsafe fn alloc_refill(
        &self,
        th: *mut ThreadHeap,
        class: SizeClass,
        size: usize,
    ) -> Option<(NonNull<u8>, bool)> {
        let owner = ThreadHeap::owner_id(th);
        // SAFETY: the calling thread owns `th` (caller).
        let spare = unsafe { ThreadHeap::take_spare(th, class) };
        let (pool, mapped) = match spare {
            Some(pool) => (pool, false),
            None => {
                let mut shared = self.small.lock();
                let before = shared.small.arenas_mapped();
                // Every pool transition under the lock purges what is due.
                shared.small.purge_expired(&self.raw);
                // SAFETY: as above; a spare is an empty pool `th` owns.
                let pool = match unsafe { ThreadHeap::take_any_spare(th) } {
                    Some(pool) => {
                        // SAFETY: as above.
                        unsafe { shared.small.retype_pool(pool, class, owner) };
                        pool
                    }
                    None => {
                        let pool = shared.small.take_pool(&self.raw, class, owner)?;
                        // Spares for the next refills, in the same lock
                        // hold, from arenas already mapped.
                        // SAFETY: as above.
                        for _ in 0..unsafe { ThreadHeap::spare_room(th) } {
                            let Some(extra) = shared.small.take_pool_mapped(class, owner) else {
                                break;
                            };
                            // SAFETY: a fresh empty pool owned by `th`.
                            unsafe { ThreadHeap::keep_spare(th, extra) };
                        }
                        pool
                    }
                };
                (pool, shared.small.arenas_mapped() != before)
            }
        };
        if mapped {
            self.arena_mapped();
        }
        // SAFETY: `pool` is a fresh used pool of `class` owned by `th` and
        // on no list, and the calling thread owns `th`.
        let block = unsafe {
            ThreadHeap::link_pool(th, pool, class);
            ThreadHeap::alloc_carved(th, class, size)
        }?;
        Some((block, false))
    }

    /// Allocation for a thread without a thread heap: the shared lists.
    #[cold]
    #[inline(never)]
    fn alloc_shared(&self, class: SizeClass, size: usize) -> Option<(NonNull<u8>, bool)> {
        let (block, mapped) = {
            let mut shared = self.small.lock();
            let before = shared.small.arenas_mapped();
            let block = shared.small.alloc_shared(&self.raw, class, size)?;
            (block, shared.small.arenas_mapped() != before)
        };
        if mapped {
            self.arena_mapped();
        }
        Some((block, false))
    }

    /// A new arena was mapped: with `PYMALLOCSTATS` set, print the
    /// statistics (CPython prints them on every new arena).
    #[cold]
    #[inline(never)]
    fn arena_mapped(&self) {
        if crate::stats::stats_requested() {
            self.stats().print_to_stderr();
        }
    }

    /// Prints [`stats`](Self::stats) to standard error through a buffer on
    /// the stack: nothing is allocated, so it works in an exit handler or
    /// with the heap as the global allocator.
    pub fn print_stats(&self) {
        self.stats().print_to_stderr();
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

    /// Frees a live block that was requested (or last resized) with `size`
    /// bytes at alignment `align`: the free fast path of `dealloc` and
    /// `deallocate`.
    ///
    /// # Safety
    ///
    /// `ptr` is a live, non-zero-sized block of this heap, requested (or
    /// last resized) with `size` bytes at `align`, and is not used
    /// afterwards. A pointer of another heap is undefined behaviour here
    /// (as `GlobalAlloc::dealloc` says): the arena map is not consulted.
    ///
    /// Top to bottom: a layout of a small size class means a small block
    /// (a block changes between small and larger only by moving), so its
    /// arena and pool header are found by masking its address
    /// ([ref:arena-layout]); if the calling thread owns the pool, push the
    /// block on the pool's free list and uncount it, with plain loads and
    /// stores. A block of another thread's pool goes onto that pool's remote
    /// list (one CAS). A medium layout of the default alignment goes to the
    /// thread's medium cache without the map either ([`Self::free_larger`]);
    /// other layouts take the arena map ([`Self::free_sized`]).
    #[inline(always)]
    pub(crate) unsafe fn free_layout(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // Nested tests, not one combined condition: LLVM then knows the
        // alignment and the size's lower bound in `free_larger`, and does
        // not test them again.
        if align <= ALIGNMENT {
            if size > SMALL_REQUEST_THRESHOLD {
                // SAFETY: caller's contract.
                return unsafe { self.free_larger(ptr, size, align) };
            }
        } else if class_of(size, align).is_none() {
            // SAFETY: caller's contract.
            return unsafe { self.free_larger(ptr, size, align) };
        }
        // The arena by masking, with the arena's provenance (the pointer
        // given may carry only the block's); under Miri, and with
        // `hardened` (which checks every pointer), from the arena map.
        // SAFETY: `ptr` is a live small block (caller).
        #[cfg(not(any(miri, feature = "hardened")))]
        let (arena, ptr) = unsafe { Arena::of_freed_block(ptr) };
        #[cfg(any(miri, feature = "hardened"))]
        let (arena, ptr) = {
            let (header, ptr) = self.raw.find_own_block(ptr, "PrivateHeap::dealloc");
            // SAFETY: `header` is a live chunk of ours.
            if unsafe { (*header.as_ptr()).kind } != ChunkKind::Arena {
                crate::fatal::misuse(
                    ptr.as_ptr(),
                    size,
                    "large",
                    "was freed with the layout of a small block",
                );
            }
            (header.as_ptr().cast::<Arena>(), ptr)
        };
        let pool = Arena::pool_of(arena, ptr.as_ptr());
        // SAFETY: `pool` is the header the block's address falls in.
        #[cfg(feature = "hardened")]
        unsafe {
            Pool::check_layout(pool, ptr, size)
        };
        // SAFETY: `ptr` is a live small block of `pool` (caller).
        unsafe { self.free_small(pool, ptr, size) }
    }

    /// Frees small block `ptr` of `pool`, requested with `size` bytes: if
    /// the calling thread owns the pool, onto its free list with plain
    /// loads and stores; otherwise out of line.
    ///
    /// # Safety
    ///
    /// `ptr` is a live small block of this heap in `pool`, requested (or
    /// counted) with `size` bytes, not used afterwards.
    #[inline(always)]
    pub(crate) unsafe fn free_small(&self, pool: *mut Pool, ptr: NonNull<u8>, size: usize) {
        crate::valgrind::freelike(ptr.as_ptr());
        // SAFETY: `pool` is the header of a live block's pool, so it is
        // live and owned by `owner` for as long as the block is
        // ([ref:thread-heaps]).
        unsafe {
            // `hardened`: a block start of this pool (the size-less `free`
            // comes here too).
            #[cfg(feature = "hardened")]
            Pool::check_freed(pool, ptr);
            // Whoever frees it, the block is marked free first, so a second
            // free is caught on any path ([ref:free-mark]).
            Pool::mark_freed(pool, ptr, self.raw.free_mark());
            if let Some(th) = local::cached(self.raw.id())
                && Pool::owner(pool) == ThreadHeap::owner_id(th)
            {
                return self.free_local(th, pool, ptr, size);
            }
            self.free_small_slow(pool, ptr, size);
        }
    }

    /// Frees a block larger than small, requested with `size` bytes at
    /// `align`. A medium request of the default alignment up to
    /// `MEDIUM_CACHE_MAX` is always a medium block (never small; never
    /// huge while [`RawHeap::sized_frees`](crate::raw::RawHeap) holds)
    /// holding exactly its bin's bound ([ref:bin-bound]), so it goes
    /// straight to the calling thread's medium cache without the arena map
    /// or its header (reading the header cost a 4 KiB pair a tenth of its
    /// time in criterion's `alloc_free_pair`). A double free is caught by
    /// the free mark, which layer 1 writes too and its purges keep, while
    /// the block's chunk is mapped (a block merged into the free block
    /// before it may lose it, and its header, when that block's pages are
    /// purged: by `trim()`, or by the aging of free blocks of
    /// `MEDIUM_PURGE_MIN` bytes or more). Like a small block's, a pointer the heap does
    /// not own — of another heap, or of a chunk already given back — is
    /// undefined behaviour here, as `GlobalAlloc::dealloc` says, and so is
    /// a layout larger than the block's: the block would join a larger
    /// bin (`hardened` checks every pointer in the map and takes the size
    /// from the header). Anything else takes [`Self::free_sized`].
    ///
    /// Inline, with every other path one out-of-line call: a call of its
    /// own, and the registers it saved for its slow paths, cost a 4 KiB
    /// pair a fifth of its instructions.
    ///
    /// # Safety
    ///
    /// As for [`Self::free_layout`].
    #[inline(always)]
    pub(crate) unsafe fn free_larger(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // Under Miri and `hardened`, every pointer is checked in the map.
        #[cfg(not(any(miri, feature = "hardened")))]
        if align <= ALIGNMENT
            && medium_bin(size).is_some()
            && self.raw.sized_frees()
            && let Some(th) = local::cached(self.raw.id())
        {
            let mark = self.raw.free_mark();
            // SAFETY: `ptr` is a live medium block of this heap (caller,
            // and the size range above: over 512 bytes, so the mark's word
            // lies in it); the calling thread owns `th`.
            unsafe {
                // Freed blocks hold the mark, cached or in layer 1.
                if crate::harden::is_marked(
                    ptr.as_ptr().add(crate::raw::medium::MARK_OFFSET).cast(),
                    mark,
                ) {
                    crate::fatal::misuse(
                        ptr.as_ptr(),
                        size,
                        "medium",
                        "is already free (double free)",
                    )
                }
                debug_assert_eq!(
                    Some(self.usable_size(ptr)),
                    medium_bin(size).map(|(_, bound)| bound),
                    "medium block {ptr:?} of {size} bytes holds its bin's bound"
                );
                crate::valgrind::freelike(ptr.as_ptr());
                if !MediumCache::push_sized(ThreadHeap::medium(th), ptr, size, mark) {
                    self.free_medium_refused(th, ptr, size, mark);
                }
                return;
            }
        }
        #[cfg(any(miri, feature = "hardened"))]
        let _ = align;
        // SAFETY: caller's contract.
        unsafe { self.free_sized_outlined(ptr, size) }
    }

    /// Reports medium block `ptr` (`usable` bytes), being freed, and
    /// aborts if it holds the free `mark`: it is in some thread's medium
    /// cache already, and this is a double free, caught before the block
    /// is cached or freed twice ([ref:free-mark]).
    ///
    /// # Safety
    ///
    /// As for [`MediumCache::is_cached`].
    #[inline(always)]
    unsafe fn check_not_cached(ptr: NonNull<u8>, usable: usize, mark: usize) {
        // SAFETY: caller's contract.
        if unsafe { MediumCache::is_cached(ptr, usable, mark) } {
            crate::fatal::misuse(
                ptr.as_ptr(),
                usable,
                "medium",
                "is already free (double free)",
            )
        }
    }

    /// A checked medium block the thread's full cache refused: offered
    /// again after the cache's idle bins went (every so often); else to
    /// layer 1.
    ///
    /// # Safety
    ///
    /// As for `free_sized`, for a medium block of a bin's request `size`
    /// ([ref:bin-bound]), already checked and reported to memcheck as
    /// freed, with `th` the calling thread's.
    #[cfg(not(any(miri, feature = "hardened")))]
    #[cold]
    #[inline(never)]
    unsafe fn free_medium_refused(
        &self,
        th: *mut ThreadHeap,
        ptr: NonNull<u8>,
        size: usize,
        mark: usize,
    ) {
        // SAFETY: caller's contract: the block holds its bin's bound.
        unsafe {
            let bound = medium_bin(size).map_or(0, |(_, bound)| bound);
            if !self.cache_medium_refused(th, ptr, bound, size, mark) {
                let (header, ptr) = self.raw.find_own_block(ptr, "PrivateHeap::dealloc");
                self.raw.free_block(header, ptr, size);
            }
        }
    }

    /// [`Self::free_sized`], out of line: the slow path of `free_larger`,
    /// kept out of its register allocation.
    ///
    /// # Safety
    ///
    /// As for `free_sized`.
    #[inline(never)]
    unsafe fn free_sized_outlined(&self, ptr: NonNull<u8>, size: usize) {
        // SAFETY: caller's contract.
        unsafe { self.free_sized(ptr, size) }
    }

    /// Keeps freed medium block `ptr` (`usable` bytes, requested with
    /// `size`) in `th`'s medium cache, marked with `mark`. If the cache
    /// refuses it, every so often its idle bins go back to layer 1 and it
    /// is offered again ([`MediumCache::overflowed`]); `false`: the caller
    /// frees it.
    ///
    /// # Safety
    ///
    /// As for [`MediumCache::push`], with `th` the calling thread's own.
    #[inline(always)]
    unsafe fn cache_medium(
        &self,
        th: *mut ThreadHeap,
        ptr: NonNull<u8>,
        usable: usize,
        size: usize,
        mark: usize,
    ) -> bool {
        // SAFETY: caller's contract.
        // A block that fits no bin (one allocated over-aligned) is not a
        // refusal: it says nothing of the cache's idle bins.
        unsafe {
            MediumCache::push(ThreadHeap::medium(th), ptr, usable, size, mark)
                || (MediumCache::takes(usable)
                    && self.cache_medium_refused(th, ptr, usable, size, mark))
        }
    }

    /// The cache refused a block: count it, and every so often collect the
    /// idle bins and offer it again.
    ///
    /// # Safety
    ///
    /// As for [`Self::cache_medium`].
    #[cold]
    #[inline(never)]
    unsafe fn cache_medium_refused(
        &self,
        th: *mut ThreadHeap,
        ptr: NonNull<u8>,
        usable: usize,
        size: usize,
        mark: usize,
    ) -> bool {
        // SAFETY: caller's contract; the collected blocks are cached ones,
        // live medium blocks of this heap.
        unsafe {
            let cache = ThreadHeap::medium(th);
            MediumCache::overflowed(cache)
                && MediumCache::collect_idle(cache, |b| self.release_cached(b)) > 0
                && MediumCache::push(cache, ptr, usable, size, mark)
        }
    }

    /// Gives a block out of a thread's medium cache back to layer 1 (as
    /// requested with 0 bytes: its requested bytes left the counters when
    /// it was cached).
    fn release_cached(&self, block: NonNull<u8>) {
        let (header, block) = self.raw.find_own_block(block, "medium cache");
        // SAFETY: a live medium block of this heap, out of its cache.
        unsafe { self.raw.free_block(header, block, 0) };
    }

    /// Frees a live block that was requested with `size` bytes, any
    /// alignment.
    ///
    /// # Safety
    ///
    /// `ptr` is a live, non-zero-sized block of this heap, requested (or last
    /// resized) with `size` bytes, and is not used afterwards.
    ///
    /// The chunk comes from the arena map, which also rejects foreign
    /// pointers (reported, then abort); then as [`Self::free_layout`]; medium
    /// blocks go to the calling thread's medium cache.
    #[inline]
    pub(crate) unsafe fn free_sized(&self, ptr: NonNull<u8>, size: usize) {
        let (header, ptr) = self.raw.find_own_block(ptr, "PrivateHeap::dealloc");
        // SAFETY: as the caller's, with `header` the chunk of `ptr`.
        unsafe { self.free_in_chunk(header, ptr, size) }
    }

    /// [`Self::free_sized`] once the block's chunk is known.
    ///
    /// # Safety
    ///
    /// As `free_sized`; `header` is the chunk of `ptr` (from the arena map)
    /// and `ptr` carries the chunk's provenance.
    #[inline(always)]
    pub(crate) unsafe fn free_in_chunk(
        &self,
        header: NonNull<crate::raw::chunk::ChunkHeader>,
        ptr: NonNull<u8>,
        size: usize,
    ) {
        // SAFETY: `header` is the chunk holding `ptr`, and `ptr` is a live
        // block of this heap (caller).
        unsafe {
            if (*header.as_ptr()).kind != ChunkKind::Arena {
                crate::valgrind::freelike(ptr.as_ptr());
                return self.free_large(header, ptr, size);
            }
            let pool = Arena::pool_of(header.as_ptr().cast(), ptr.as_ptr());
            self.free_small(pool, ptr, size);
        }
    }

    /// Frees a medium or huge block: into the calling thread's medium cache
    /// if it fits (not for bounded heaps, whose limit must see every free
    /// block), else to layer 1.
    ///
    /// # Safety
    ///
    /// `ptr` is a live medium or huge block of this heap in chunk `header`,
    /// requested with `size` bytes, not used afterwards.
    #[inline(never)]
    unsafe fn free_large(
        &self,
        header: NonNull<crate::raw::chunk::ChunkHeader>,
        ptr: NonNull<u8>,
        size: usize,
    ) {
        // SAFETY: caller's contract; a live medium block's size word is
        // written only by whoever holds the block, so it is read unlocked.
        unsafe {
            if (*header.as_ptr()).kind == ChunkKind::Medium {
                let usable = crate::raw::medium::freed_usable_size(ptr, header.as_ptr().cast());
                Self::check_not_cached(ptr, usable, self.raw.free_mark());
                if self.raw.sized_frees()
                    && let th = self.thread_heap()
                    && !th.is_null()
                    && self.cache_medium(th, ptr, usable, size, self.raw.free_mark())
                {
                    return;
                }
            }
            self.raw.free_block(header, ptr, size);
        }
    }

    /// A small block the fast path could not free: the thread heap is not
    /// the cached one, or the block's pool is not the calling thread's.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of `pool` of this heap, requested with `size`
    /// bytes, not used afterwards.
    #[inline(never)]
    unsafe fn free_small_slow(&self, pool: *mut Pool, ptr: NonNull<u8>, size: usize) {
        let th = self.thread_heap();
        // SAFETY: the pool of a live block keeps its owner (caller).
        unsafe {
            let owner = Pool::owner(pool);
            if !th.is_null() && owner == ThreadHeap::owner_id(th) {
                return self.free_local(th, pool, ptr, size);
            }
            self.free_remote(owner, th, pool, ptr, size);
        }
    }

    /// Frees a small block of a pool the calling thread does not own: onto
    /// the pool's remote list (and the pool onto its owner's inbox of
    /// pools, once per batch), or into the shared lists under the lock.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of `pool`, owned by `owner`, requested with
    /// `size` bytes; `th` is the calling thread's thread heap or null.
    unsafe fn free_remote(
        &self,
        owner: *mut PoolOwner,
        th: *mut ThreadHeap,
        pool: *mut Pool,
        ptr: NonNull<u8>,
        size: usize,
    ) {
        if owner.is_null() {
            let mut shared = self.small.lock();
            // SAFETY: a shared pool: the lock makes us its owner.
            unsafe { shared.small.free_shared(&self.raw, pool, ptr) };
            shared.small.add_requested(size.wrapping_neg());
            return;
        }
        // SAFETY: `owner` owns the block's pool (caller).
        unsafe { ThreadHeap::push_remote(owner, pool, ptr) };
        // SAFETY: `th` is null or ours (caller).
        unsafe { self.account_to(th, size.wrapping_neg()) };
    }

    /// Adds `delta` (wrapping) to the small requested bytes of the calling
    /// thread's thread heap, or of the shared state if it has none.
    #[inline]
    pub(crate) fn account(&self, delta: usize) {
        // SAFETY: `thread_heap` gives null or the calling thread's own.
        unsafe { self.account_to(self.thread_heap(), delta) }
    }

    /// `account` with the thread heap known.
    ///
    /// # Safety
    ///
    /// `th` is null or the calling thread's own thread heap.
    #[inline]
    unsafe fn account_to(&self, th: *mut ThreadHeap, delta: usize) {
        if th.is_null() {
            self.small.lock().small.add_requested(delta);
        } else {
            // SAFETY: caller's contract.
            unsafe { ThreadHeap::add_requested(th, delta) };
        }
    }

    /// A pool of thread heap `th` became empty: keep it as a spare; past
    /// `THREAD_SPARE_POOLS`, give the spares back to their arenas under one
    /// lock hold. Also collects `th`'s pending remote frees (a slow path).
    ///
    /// # Safety
    ///
    /// The calling thread owns `th`; `pool` is a pool of `th` that left its
    /// table empty.
    #[cold]
    #[inline(never)]
    unsafe fn pool_emptied(&self, th: *mut ThreadHeap, pool: *mut Pool) {
        // SAFETY: caller's contract.
        unsafe {
            if ThreadHeap::keep_spare(th, pool) {
                let spares = ThreadHeap::take_spares(th);
                self.small.lock().small.release_chain(&self.raw, spares);
            }
            self.collect_pending(th);
        }
    }

    /// Zeroes the first `size` bytes of fresh block `p`. From
    /// `ZERO_BY_PURGE` bytes on, its whole pages are purged instead of
    /// written where the OS then reads them as zero, and only the partial
    /// pages at either end are written.
    ///
    /// # Safety
    ///
    /// `p` is a live block of this heap holding at least `size` bytes,
    /// whose contents nobody needs.
    unsafe fn zero_block(&self, p: NonNull<u8>, size: usize) {
        // Elsewhere a purge does not make pages read zero.
        if cfg!(target_os = "linux") && size >= ZERO_BY_PURGE {
            let page = crate::os::page_size();
            let start = p.as_ptr().addr();
            let (from, to) = (start.next_multiple_of(page), (start + size) & !(page - 1));
            let purged = from < to
                // SAFETY: `from..to` are whole pages inside the block, a
                // live medium or huge block (small blocks are far smaller)
                // in a live chunk of this heap's source; its contents are
                // not needed.
                && unsafe {
                    self.raw.purge(
                        NonNull::new_unchecked(p.as_ptr().with_addr(from)),
                        to - from,
                    )
                };
            if purged {
                // SAFETY: both ends lie inside the block.
                unsafe {
                    p.as_ptr().write_bytes(0, from - start);
                    p.as_ptr().with_addr(to).write_bytes(0, start + size - to);
                }
                crate::valgrind::defined(p.as_ptr().with_addr(from), to - from);
                return;
            }
        }
        // SAFETY: the block holds `size` bytes (caller).
        unsafe { p.as_ptr().write_bytes(0, size) };
    }

    /// Moves or resizes a live block from `old_size` bytes to `new_size`
    /// bytes at `new_align`, keeping the first `min(old, new)` bytes. Stays
    /// in place when the block already fits without much waste; a medium
    /// block that cannot grow where it is takes its free predecessor first
    /// ([`RawHeap::grow_backward`]), then moves. On failure the old block
    /// is untouched.
    ///
    /// # Safety
    ///
    /// `ptr` is a live, non-zero-sized block of this heap requested with
    /// `old_size` bytes; `new_size` is non-zero, `new_align` a power of two.
    /// On success the old pointer must not be used again.
    pub(crate) unsafe fn realloc_sized(
        &self,
        ptr: NonNull<u8>,
        old_size: usize,
        new_size: usize,
        new_align: usize,
    ) -> Option<NonNull<u8>> {
        let (header, ptr) = self.raw.find_own_block(ptr, "PrivateHeap::realloc");
        if ptr.as_ptr().addr() & (new_align - 1) == 0
            && crate::valgrind::resize_in_place(ptr.as_ptr(), old_size, new_size, || {
                // SAFETY: `header` is the chunk of live block `ptr` (caller).
                unsafe { self.resize_in_place(header, ptr, old_size, new_size, new_align) }
                    .then_some(())
            })
            .is_some()
        {
            return Some(ptr);
        }
        // SAFETY: as above; a huge block remapped is not used at its old place.
        if let Some((p, _)) = unsafe {
            self.raw
                .realloc_huge(header, ptr, old_size, new_size, new_align)
        } {
            return Some(p);
        }
        // A small request is a pool's block, never a medium one; memcheck
        // cannot follow a block that moves onto itself.
        if new_size > old_size.max(SMALL_REQUEST_THRESHOLD)
            && new_align <= ALIGNMENT
            && !cfg!(feature = "valgrind")
        {
            // SAFETY: as above; the old pointer is not used once moved.
            if let Some((p, _)) = unsafe {
                self.raw
                    .grow_backward(header, ptr, old_size, new_size, Self::fit_for(new_size))
            } {
                return Some(p);
            }
        }
        let (new, _) = self.alloc_sized(new_size, new_align)?;
        // SAFETY: both blocks are live, distinct, and hold at least
        // `min(old_size, new_size)` bytes; the old one is freed once.
        unsafe {
            self.raw.count_copy(header, old_size.min(new_size));
            core::ptr::copy_nonoverlapping(ptr.as_ptr(), new.as_ptr(), old_size.min(new_size));
            self.free_sized(ptr, old_size);
        }
        Some(new)
    }

    /// Bytes a medium block of the default alignment holds for a request
    /// of `size`: a request of a bin keeps holding exactly the bin's bound,
    /// as when it was allocated ([ref:bin-bound]).
    fn fit_for(size: usize) -> usize {
        medium_bin(size).map_or(size, |(_, bound)| bound)
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
        header: NonNull<crate::raw::chunk::ChunkHeader>,
        ptr: NonNull<u8>,
        old_size: usize,
        new_size: usize,
        new_align: usize,
    ) -> bool {
        // SAFETY: `header` is the live chunk of live block `ptr` (caller).
        unsafe {
            if (*header.as_ptr()).kind == ChunkKind::Arena {
                let size = block_size(Pool::class(Arena::pool_of(
                    header.as_ptr().cast(),
                    ptr.as_ptr(),
                )));
                if new_size > size || (new_size < old_size && 4 * new_size <= 3 * size) {
                    return false;
                }
                self.account(new_size.wrapping_sub(old_size));
                return true;
            }
            let fit = if new_align <= ALIGNMENT {
                Self::fit_for(new_size)
            } else {
                new_size
            };
            new_size > SMALL_REQUEST_THRESHOLD
                && self
                    .raw
                    .resize_in_place(header, ptr, old_size, new_size, fit)
                    .is_some()
        }
    }
}

impl<S: PageSource + Sync + 'static, R: RawMutex + Sync + 'static> PrivateHeap<S, R> {
    /// Does nothing: every heap is fork-safe without a call. Kept so that
    /// code written for pymalloc 0.1 compiles; returns `true`.
    ///
    /// Every lock of every heap passes the fork gate (`src/fork.rs`), whose
    /// `pthread_atfork` handlers are registered by the first lock any heap
    /// takes: the child of a `fork()` in a multi-threaded program finds no
    /// lock held, for the global heap and per-collection heaps alike.
    #[deprecated(since = "0.1.1", note = "every heap is fork-safe without a call")]
    pub fn enable_fork(&'static self) -> bool {
        true
    }
}

impl<S: PageSource, R: RawMutex> Drop for PrivateHeap<S, R> {
    fn drop(&mut self) {
        // The arenas go with `raw`; the thread heaps go back to the slab
        // (threads' caches may still name them, harmlessly).
        self.small.get_mut().threads.recycle_all();
    }
}

// SAFETY: GlobalAlloc contract: blocks come from distinct live regions of the
// heap and are aligned as asked (class and TLSF alignment rules, checked by
// the tests); `dealloc`/`realloc` accept exactly the pointers `alloc`
// returned; no method unwinds (failure is null) or re-enters the global
// allocator (the locks never allocate).
unsafe impl<S: PageSource + Sync, R: RawMutex + Sync> GlobalAlloc for PrivateHeap<S, R> {
    // Always: with the tracing hook, the cost model would outline it.
    #[inline(always)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = self
            .alloc_fast(layout.size(), layout.align())
            .map_or(null_mut(), NonNull::as_ptr);
        trace::allocated(p, layout.size());
        p
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = match self.alloc_sized(layout.size(), layout.align()) {
            Some((p, zeroed)) => {
                if !zeroed {
                    // SAFETY: a fresh block of at least `layout.size()` bytes.
                    unsafe { self.zero_block(p, layout.size()) };
                }
                p.as_ptr()
            }
            None => null_mut(),
        };
        trace::allocated(p, layout.size());
        p
    }

    // Always: with the tracing hook, the cost model would outline it.
    #[inline(always)]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        trace::freeing(ptr);
        // SAFETY: `ptr` is a live block of this heap allocated with `layout`
        // (GlobalAlloc::dealloc contract), hence non-null.
        unsafe { self.free_layout(NonNull::new_unchecked(ptr), layout.size(), layout.align()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        trace::realloc(ptr, new_size, || {
            // SAFETY: `ptr` is a live block allocated with `layout`,
            // `new_size` is non-zero and valid with `layout.align()`
            // (GlobalAlloc::realloc contract).
            unsafe {
                self.realloc_sized(
                    NonNull::new_unchecked(ptr),
                    layout.size(),
                    new_size,
                    layout.align(),
                )
            }
            .map_or(null_mut(), NonNull::as_ptr)
        })
    }
}

// SAFETY: Allocator contract: returned blocks stay valid until deallocated
// or the heap is dropped (the `&PrivateHeap` borrow outlives every block);
// copies of `&PrivateHeap` are the same allocator; zero-sized blocks are
// dangling, aligned pointers that are never passed to the heap; grow/shrink
// keep contents and leave the old block valid on failure.
unsafe impl<S: PageSource + Sync, R: RawMutex + Sync> Allocator for &PrivateHeap<S, R> {
    // Always: with the tracing hook, the cost model would outline it.
    #[inline(always)]
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            return Ok(NonNull::slice_from_raw_parts(dangling(layout.align()), 0));
        }
        let p = self.alloc_fast(layout.size(), layout.align());
        trace::allocated(p.map_or(null_mut(), NonNull::as_ptr), layout.size());
        Ok(NonNull::slice_from_raw_parts(
            p.ok_or(AllocError)?,
            layout.size(),
        ))
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

    // Always: with the tracing hook, the cost model would outline it.
    #[inline(always)]
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            trace::freeing(ptr.as_ptr());
            // SAFETY: a non-zero-sized block of this heap (Allocator contract).
            unsafe { self.free_layout(ptr, layout.size(), layout.align()) }
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
        unsafe { self.resize_layout(ptr, old, new) }
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
        // SAFETY: `ptr` is a live, non-zero-sized block with `old`
        // (contract, and `old.size() >= new.size() > 0`).
        unsafe { self.resize_layout(ptr, old, new) }
    }
}

impl<S: PageSource + Sync, R: RawMutex + Sync> PrivateHeap<S, R> {
    /// `grow` and `shrink` of a non-zero-sized block to a non-zero size,
    /// traced as a reallocation.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of this heap allocated with `old`, which is
    /// not zero-sized; `new.size()` is not zero.
    unsafe fn resize_layout(
        &self,
        ptr: NonNull<u8>,
        old: Layout,
        new: Layout,
    ) -> Result<NonNull<[u8]>, AllocError> {
        let p = trace::realloc(ptr.as_ptr(), new.size(), || {
            // SAFETY: caller's contract.
            unsafe { self.realloc_sized(ptr, old.size(), new.size(), new.align()) }
                .map_or(null_mut(), NonNull::as_ptr)
        });
        Ok(NonNull::slice_from_raw_parts(
            NonNull::new(p).ok_or(AllocError)?,
            new.size(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three live 64-byte blocks of a fresh heap, the first one freed; the
    /// freed block's link word is then overwritten with `link(first)`, as
    /// a use-after-free write would, and `validate()` must object.
    fn corrupt_freed_link(link: impl FnOnce(*mut u8) -> *mut u8) {
        let heap = PrivateHeap::new();
        let blocks: Vec<_> = (0..3).map(|_| heap.alloc_sized(64, 8).unwrap().0).collect();
        heap.validate();
        // SAFETY: a live block of `heap` requested with 64 bytes. The write
        // after the free stays inside the heap's own arena (the point of
        // the test); the heap is not used again but to validate and drop.
        unsafe {
            heap.free_sized(blocks[0], 64);
            let p = blocks[0].as_ptr();
            p.cast::<*mut u8>().write(crate::harden::encode(link(p), p));
        }
        heap.validate();
    }

    #[test]
    #[should_panic(expected = "not a block of the pool")]
    fn validate_catches_a_free_list_sent_elsewhere() {
        corrupt_freed_link(|p| p.wrapping_add(8));
    }

    #[test]
    #[should_panic(expected = "free list loops")]
    fn validate_catches_a_free_list_loop() {
        corrupt_freed_link(|p| p);
    }

    /// A fresh pool carved while other pools wait on the purge queue must
    /// leave the queue alone (a fresh header reads as "queued"), and every
    /// queued pool is purged by `trim`.
    #[test]
    fn carving_a_pool_keeps_the_purge_queue() {
        let heap = PrivateHeap::new();
        let per_pool = Pool::SIZE / 512;
        // Arena A full (63 pools of 512-byte blocks), arena B with 30.
        let blocks: Vec<_> = (0..(Arena::POOLS + 30) * per_pool)
            .map(|_| heap.alloc_sized(512, 8).unwrap().0)
            .collect();
        assert_eq!(heap.arenas().len(), 2);
        // Empty 40 of A's pools: 39 go back to A and join the purge queue
        // (the first stays cached); A now has more free pools than B.
        for &b in &blocks[..40 * per_pool] {
            // SAFETY: live blocks of `heap` requested with 512 bytes.
            unsafe { heap.free_sized(b, 512) };
        }
        heap.validate();
        // A new class needs a pool: B, the fullest, carves a fresh one.
        let small = heap.alloc_sized(16, 8).unwrap().0;
        heap.validate();
        heap.trim();
        assert!(
            heap.stats().small.pools_purged >= 39,
            "every queued pool is purged: {}",
            heap.stats().small.pools_purged
        );
        // SAFETY: live blocks of `heap`, freed once.
        unsafe {
            heap.free_sized(small, 16);
            for &b in &blocks[40 * per_pool..] {
                heap.free_sized(b, 512);
            }
        }
        heap.validate();
    }

    #[test]
    fn arenas_show_each_pool() {
        let heap = PrivateHeap::new();
        assert!(heap.arenas().is_empty());
        let small: Vec<_> = (0..600)
            .map(|_| heap.alloc_sized(32, 8).unwrap().0)
            .collect();
        let big: Vec<_> = (0..3)
            .map(|_| heap.alloc_sized(512, 8).unwrap().0)
            .collect();
        let arenas = heap.arenas();
        assert_eq!(arenas.len(), 1);
        let pools: Vec<_> = arenas[0]
            .pools
            .iter()
            .filter(|p| p.class.is_some())
            .collect();
        // 600 blocks of 32 bytes: one full pool of 512 and one used one.
        // (Other pools the thread took are its empty spares.)
        let of_32: Vec<_> = pools
            .iter()
            .filter(|p| p.block_size == 32 && p.state != PoolState::Empty)
            .collect();
        assert_eq!(of_32.len(), 2);
        assert_eq!(of_32.iter().map(|p| p.blocks_in_use).sum::<usize>(), 600);
        assert!(
            of_32
                .iter()
                .any(|p| p.state == PoolState::Full && p.capacity == 512)
        );
        let of_512: Vec<_> = pools
            .iter()
            .filter(|p| p.block_size == 512 && p.state != PoolState::Empty)
            .collect();
        assert_eq!(of_512.len(), 1);
        assert_eq!(
            (of_512[0].blocks_in_use, of_512[0].state),
            (3, PoolState::Used)
        );
        let spares = pools.iter().filter(|p| p.state == PoolState::Empty).count();
        assert!(spares <= crate::config::THREAD_SPARE_POOLS);
        assert_eq!(arenas[0].free_pools, Arena::POOLS - 3 - spares);
        assert_eq!(
            arenas[0].bytes_in_use(),
            heap.stats().small.bytes_in_use,
            "the map and the statistics agree"
        );
        for b in small {
            // SAFETY: live blocks of `heap` requested with 32 bytes.
            unsafe { heap.free_sized(b, 32) };
        }
        for b in big {
            // SAFETY: as above, with 512 bytes.
            unsafe { heap.free_sized(b, 512) };
        }
        heap.trim();
        assert!(heap.arenas().is_empty(), "trim gave the arena back");
    }

    /// The medium free's fast path counts a block as holding exactly its
    /// request's bin bound without looking ([`MediumCache::push_sized`],
    /// [ref:bin-bound]); layer 1 must give such blocks, fresh and reused
    /// alike. (Debug builds also check every block the fast path frees.)
    #[test]
    fn medium_blocks_hold_exactly_their_bin_bound() {
        let heap = PrivateHeap::new();
        let mut sizes: Vec<usize> = (513..=4096).step_by(37).collect();
        // Past 4 KiB, sizes a sixteenth apart, reaching each bin without
        // mapping gigabytes (a fourth apart under Miri: every other bin).
        let mut size = 4097;
        while size <= crate::config::MEDIUM_CACHE_MAX {
            sizes.push(size);
            size += size / if cfg!(miri) { 4 } else { 16 } + 37;
        }
        let mut inexact = Vec::new();
        for round in 0..2 {
            let blocks: Vec<_> = sizes
                .iter()
                .map(|&size| (heap.alloc_fast(size, 8).expect("medium block"), size))
                .collect();
            for &(b, size) in &blocks {
                // SAFETY: a live block of `heap`.
                let usable = unsafe { heap.usable_size(b) };
                if medium_bin(size).is_some_and(|(_, bound)| usable != bound) {
                    inexact.push((round, size, usable));
                }
            }
            // Every other block first, so the second round reuses split
            // and merged space as well as cached blocks.
            for &(b, size) in blocks.iter().step_by(2) {
                // SAFETY: live blocks of `heap` requested with `size` bytes.
                unsafe { heap.free_layout(b, size, 8) };
            }
            heap.trim();
            for &(b, size) in blocks.iter().skip(1).step_by(2) {
                // SAFETY: as above.
                unsafe { heap.free_layout(b, size, 8) };
            }
        }
        assert!(inexact.is_empty(), "(round, size, usable): {inexact:?}");
    }

    /// A buffer that cannot grow in place moves down into the free space
    /// before it, keeping its bytes and its bin's bound.
    #[test]
    #[cfg(not(feature = "valgrind"))] // no moves onto themselves there
    fn a_growing_buffer_takes_the_free_space_before_it() {
        use core::alloc::{GlobalAlloc, Layout};
        // Bounded (above two medium chunks): no medium cache, so a freed
        // block is free in layer 1 at once.
        let heap = PrivateHeap::with_limit(64 << 20);
        let layout = Layout::from_size_align(8000, 8).unwrap();
        // SAFETY: blocks of `heap` with `layout`, freed once; `b` is used
        // at its new place only.
        unsafe {
            let [a, b, c] = [(); 3].map(|_| heap.alloc(layout));
            for i in 0..8000 {
                b.add(i).write(i as u8);
            }
            heap.dealloc(a, layout);
            let moved = heap.realloc(b, layout, 12000);
            assert_eq!(moved, a, "moved onto the freed predecessor");
            assert!((0..8000).all(|i| moved.add(i).read() == i as u8));
            let bound = medium_bin(12000).unwrap().1;
            assert_eq!(heap.usable_size(NonNull::new(moved).unwrap()), bound);
            assert_eq!(heap.stats().bytes_requested, 12000 + 8000);
            heap.validate();
            heap.dealloc(moved, Layout::from_size_align(12000, 8).unwrap());
            heap.dealloc(c, layout);
        }
        assert_eq!(heap.stats().bytes_in_use, 0);
    }
}
