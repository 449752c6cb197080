//! Layer 1: the raw heap. Thread-safe; serves every request too large for
//! the pools, hands arena chunks to layer 2, and keeps the byte accounting.
//!
//! * **Medium** requests (up to `MEDIUM_MAX` bytes, alignment up to
//!   `MEDIUM_MAX_ALIGN`) come from a TLSF allocator ([`crate::raw::medium`]) over
//!   `MEDIUM_CHUNK_SIZE` chunks, so they cost no system call. It is split
//!   in `MEDIUM_SHARDS` shards, each with its own chunks and lock; a shard
//!   keeps up to `MEDIUM_SPARE_CHUNKS` wholly free chunks while they are
//!   reused, and unmaps the others.
//! * **Huge** requests get a mapping of their own. The chunk header sits at
//!   the mapping's base; the block starts at the first suitably aligned
//!   offset after it. A freed huge mapping is kept for reuse by a later huge
//!   request that fits it (at most `HUGE_CACHE_MAPPINGS` of them, at most
//!   `HUGE_CACHE_BYTES` in all; their pages purged after `PURGE_DELAY`),
//!   and a huge block that grows or shrinks past its mapping is remapped
//!   ([`PageSource::remap`]: `mremap` on Linux) rather than copied.
//! * **Arena** chunks for layer 2 are `ARENA_SIZE`-aligned mappings.
//!
//! Every chunk is registered in the arena map and linked on the heap's chunk
//! list, so that dropping the heap unmaps everything.

// The header every chunk starts with.
pub(crate) mod chunk;
// malloc/calloc/resize/free of layer 1 alone.
mod cstyle;
// The arena map: address -> chunk, in O(1).
pub(crate) mod map;
// The TLSF allocator of medium blocks.
pub(crate) mod medium;

use crate::config::{
    ALIGNMENT, ARENA_SIZE, CHUNK_SIZE, HUGE_CACHE_BYTES, HUGE_CACHE_MAPPINGS, HUGE_CACHE_RESIDENT,
    MEDIUM_CHUNK_SIZE, MEDIUM_MAX, MEDIUM_MAX_ALIGN, MEDIUM_PURGE_MIN, MEDIUM_SHARDS,
    MEDIUM_SPARE_CHUNKS, POOL_PURGE_INTERVAL, PURGE_DELAY,
};
use crate::lock::{ForkSafe, SpinLock};
use crate::os::{OsPages, PageSource, Stamp, checked_align_up, page_size};
use crate::raw::chunk::{CHUNK_HEADER_SIZE, ChunkHeader, ChunkKind};
use crate::raw::map::ARENA_MAP;
use core::alloc::Layout;
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::{AtomicUsize, Ordering};
use medium::{MARK_OFFSET, Tlsf};
use parking_lot::lock_api::{Mutex, RawMutex};

/// Counters of layer 1.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawStats {
    /// Sum of the sizes asked for by live medium and huge blocks.
    pub bytes_requested: usize,
    /// Bytes currently mapped from the OS, for every chunk kind.
    pub bytes_mapped: usize,
    /// Usable bytes of live medium and huge blocks.
    pub bytes_in_use: usize,
    /// Live medium blocks.
    pub medium_blocks: usize,
    /// Live huge blocks.
    pub huge_blocks: usize,
    /// Medium chunks currently mapped.
    pub medium_chunks: usize,
    /// Arena chunks currently lent to layer 2.
    pub arena_chunks: usize,
    /// Usable bytes of medium blocks that threads freed and keep for reuse
    /// (a [`PrivateHeap`](crate::PrivateHeap)'s per-thread medium caches):
    /// in neither `bytes_in_use` nor `medium_blocks`. Always 0 for a bare
    /// `RawHeap`.
    pub bytes_cached: usize,
    /// Bytes of freed huge mappings kept for reuse (see
    /// [`HUGE_CACHE_BYTES`](crate::config::HUGE_CACHE_BYTES)); part of
    /// `bytes_mapped`, and given back by [`RawHeap::trim`].
    pub huge_cached_bytes: usize,
    /// Bytes copied, so far, out of huge blocks that a reallocation moved
    /// by copying (when the page source cannot remap them, or they changed
    /// kind). A move by remapping pages copies nothing and is not counted.
    pub huge_bytes_copied: usize,
}

/// See [`RawHeap::purge_spare_chunk`].
const PURGE_CHECK_INTERVAL: u32 = 64;

/// A block handed out by layer 1.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawBlock {
    pub(crate) ptr: NonNull<u8>,
    /// The block reads zero.
    pub(crate) zeroed: bool,
}

/// A freed huge mapping kept for reuse: off the chunk list and out of the
/// arena map, still counted in `bytes_mapped`.
#[derive(Clone, Copy)]
struct CachedMapping {
    base: *mut u8,
    size: usize,
    align: usize,
    /// When it was freed; `None` once its pages were purged.
    freed: Option<Stamp>,
    /// Its pages read zero (purged by a source that says so).
    zeroed: bool,
}

impl CachedMapping {
    const EMPTY: Self = Self {
        base: null_mut(),
        size: 0,
        align: 0,
        freed: None,
        zeroed: false,
    };
}

/// One shard of the medium allocator ([`MEDIUM_SHARDS`]), under its own
/// lock: a TLSF allocator over the medium chunks whose header names this
/// shard, and the counters of their blocks.
///
/// Lock order: a shard's lock, then the raw heap's (for mapping or
/// unmapping a chunk); shards in index order when several are held.
pub(crate) struct MediumShard {
    tlsf: Tlsf,
    /// While the shard keeps wholly free chunks: when the current interval
    /// of the TLSF's low water of them began (`None`: it keeps none).
    spare_since: Option<Stamp>,
    /// While the shard may hold free blocks of `MEDIUM_PURGE_MIN` bytes or
    /// more that are not purged: when their current interval began.
    dirty_since: Option<Stamp>,
    /// Medium operations so far (wrapping); the clock is read on every
    /// `PURGE_CHECK_INTERVAL`-th only.
    ops: u32,
    /// Usable bytes of this shard's live blocks.
    bytes_in_use: usize,
    /// Bytes requested by them (wrapping: blocks that went through a
    /// thread's medium cache are counted there).
    requested: usize,
    /// This shard's live blocks.
    blocks: usize,
}

// SAFETY: the TLSF's pointers refer to chunks owned by the heap, usable
// from any thread; a shard is only reached under its lock.
unsafe impl Send for MediumShard {}

impl MediumShard {
    const fn new() -> Self {
        Self {
            tlsf: Tlsf::new(),
            spare_since: None,
            dirty_since: None,
            ops: 0,
            bytes_in_use: 0,
            requested: 0,
            blocks: 0,
        }
    }
}

/// A shard and its lock, on cache lines of their own.
#[repr(align(128))]
struct ShardSlot<R: RawMutex>(Mutex<ForkSafe<R>, MediumShard>);

/// Layer-1 state, under the raw heap's lock.
pub(crate) struct RawCore {
    /// Every chunk of this heap, doubly linked through the chunk headers.
    chunks: *mut ChunkHeader,
    /// Freed huge mappings kept for reuse, oldest first; the first
    /// `huge_cached` entries are live.
    huge_cache: [CachedMapping; HUGE_CACHE_MAPPINGS],
    huge_cached: usize,
    stats: RawStats,
}

// SAFETY: the pointers refer to chunks owned by the heap, usable from any
// thread; the core is only reached under the raw heap's lock.
unsafe impl Send for RawCore {}

/// Layer 1: the raw memory allocator. Thread-safe.
///
/// A `RawHeap` owns every chunk its heap maps from the OS (layer 0): the
/// medium chunks it carves with TLSF for requests over the small threshold,
/// the mapping of each huge block, and the arena chunks it hands to layer 2
/// ([`Arena`](crate::Arena)). It keeps the byte accounting of all of them
/// and enforces the heap's bound on mapped bytes. Every
/// [`PrivateHeap`](crate::PrivateHeap) has one; used alone it is the raw
/// domain of the PyMem interface.
///
/// `S` supplies OS pages; `R` is the lock (the default [`SpinLock`] never
/// allocates, as a global allocator requires).
///
/// ```
/// use core::alloc::Layout;
/// let raw = pymalloc::RawHeap::new();
/// let layout = Layout::from_size_align(10_000, 64).unwrap();
/// let p = raw.allocate(layout).unwrap();
/// assert_eq!(p.as_ptr() as usize % 64, 0);
/// // SAFETY: `p` is a live block of `raw`.
/// unsafe {
///     assert!(raw.usable_size(p) >= 10_000);
///     raw.deallocate(p, layout);
/// }
/// assert_eq!(raw.stats().bytes_in_use, 0);
/// ```
pub struct RawHeap<S: PageSource = OsPages, R: RawMutex = SpinLock> {
    source: S,
    core: Mutex<ForkSafe<R>, RawCore>,
    /// The medium allocator's shards.
    shards: [ShardSlot<R>; MEDIUM_SHARDS],
    /// This heap's identity, stamped on every chunk it maps and used by
    /// [`PrivateHeap`](crate::PrivateHeap) as its key in threads' caches of
    /// thread heaps: 0 until first needed, then unique in the process and
    /// never changed (a value, so the heap may move before that).
    id: AtomicUsize,
    /// Most bytes the heap may have mapped from the OS at once
    /// (`usize::MAX`: unbounded). Invariant, under the lock:
    /// `stats.bytes_mapped <= limit` after every `map_chunk`.
    limit: AtomicUsize,
    /// Unbounded and no medium block ever mapped alone
    /// ([`Self::sized_frees`]).
    sized_frees: core::sync::atomic::AtomicBool,
    /// Some medium block was mapped alone (`alloc_medium_mapped`).
    medium_alone: core::sync::atomic::AtomicBool,
    /// `RawStats::huge_bytes_copied`, counted without the lock.
    huge_copied: AtomicUsize,
    /// Some cached huge mapping still holds its pages (a hint, read without
    /// the lock by `purge_expired`).
    huge_waiting: core::sync::atomic::AtomicBool,
    /// Some shard may keep wholly free chunks or large free blocks not
    /// purged yet (a hint, read without a lock by `purge_expired`).
    spares_waiting: core::sync::atomic::AtomicBool,
    /// The free mark of this heap's blocks ([ref:free-mark]): random, set
    /// under the lock before the first chunk is mapped (so before any block
    /// exists), never changed afterwards; 0 until then.
    mark: AtomicUsize,
}

/// Source of heap identities; 0 means "not assigned yet".
static NEXT_HEAP_ID: AtomicUsize = AtomicUsize::new(1);

impl<S: PageSource, R: RawMutex> core::fmt::Debug for RawHeap<S, R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RawHeap")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl RawHeap {
    /// An empty raw heap on the OS's pages. Maps nothing until first used.
    pub const fn new() -> Self {
        Self::with_source(OsPages)
    }
}

impl Default for RawHeap {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: PageSource, R: RawMutex> RawHeap<S, R> {
    /// An empty raw heap taking its pages from `source`.
    pub const fn with_source(source: S) -> Self {
        Self::with_source_and_limit(source, usize::MAX)
    }

    /// An empty raw heap taking its pages from `source` that never maps more
    /// than `limit` bytes at once.
    pub const fn with_source_and_limit(source: S, limit: usize) -> Self {
        Self {
            source,
            core: Mutex::const_new(
                <ForkSafe<R> as RawMutex>::INIT,
                RawCore {
                    chunks: null_mut(),
                    huge_cache: [CachedMapping::EMPTY; HUGE_CACHE_MAPPINGS],
                    huge_cached: 0,
                    stats: RawStats {
                        bytes_requested: 0,
                        bytes_mapped: 0,
                        bytes_in_use: 0,
                        medium_blocks: 0,
                        huge_blocks: 0,
                        medium_chunks: 0,
                        arena_chunks: 0,
                        bytes_cached: 0,
                        huge_cached_bytes: 0,
                        huge_bytes_copied: 0,
                    },
                },
            ),
            shards: [const {
                ShardSlot(Mutex::const_new(
                    <ForkSafe<R> as RawMutex>::INIT,
                    MediumShard::new(),
                ))
            }; MEDIUM_SHARDS],
            id: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            sized_frees: core::sync::atomic::AtomicBool::new(limit == usize::MAX),
            medium_alone: core::sync::atomic::AtomicBool::new(false),
            huge_copied: AtomicUsize::new(0),
            huge_waiting: core::sync::atomic::AtomicBool::new(false),
            spares_waiting: core::sync::atomic::AtomicBool::new(false),
            mark: AtomicUsize::new(0),
        }
    }

    /// The free mark of this heap's blocks ([ref:free-mark]). Any thread
    /// holding one of the heap's blocks sees it set: it was set before the
    /// block's chunk was mapped.
    #[inline(always)]
    pub(crate) fn free_mark(&self) -> usize {
        self.mark.load(Ordering::Relaxed)
    }

    /// This heap's identity (0: not assigned yet).
    #[inline(always)]
    pub(crate) fn id(&self) -> usize {
        self.id.load(Ordering::Relaxed)
    }

    /// This heap's identity, assigned now if it has none.
    pub(crate) fn assign_id(&self) -> usize {
        let id = self.id.load(Ordering::Relaxed);
        if id != 0 {
            return id;
        }
        let new = NEXT_HEAP_ID.fetch_add(1, Ordering::Relaxed);
        match self
            .id
            .compare_exchange(0, new, Ordering::Relaxed, Ordering::Relaxed)
        {
            Ok(_) => new,
            Err(won) => won,
        }
    }

    /// The most bytes this heap may map from the OS (`usize::MAX`: no
    /// bound).
    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Changes the bound. Lowering it below what is mapped now unmaps
    /// nothing; it only makes new mappings fail until usage drops.
    pub fn set_limit(&self, bytes: usize) {
        self.limit.store(bytes, Ordering::Relaxed);
        // Sequentially consistent with `alloc_medium_mapped`'s stores: a
        // block mapped alone meanwhile is seen here, or clears it after.
        let unbounded = bytes == usize::MAX;
        self.sized_frees.store(unbounded, Ordering::SeqCst);
        if unbounded && self.medium_alone.load(Ordering::SeqCst) {
            self.sized_frees.store(false, Ordering::SeqCst);
        }
    }

    /// Whether a freed medium block may be known by its request's size
    /// alone and kept in a thread's medium cache: the heap is unbounded (a
    /// bound must see every free block) and never mapped a medium block
    /// alone (such a block is huge, whatever its size says). One relaxed
    /// load, on the free's fast path.
    #[inline]
    pub(crate) fn sized_frees(&self) -> bool {
        self.sized_frees.load(Ordering::Relaxed)
    }

    /// Gives back to the OS what layer 1 holds but does not use: the spare
    /// wholly free medium chunks and the cached huge mappings are unmapped,
    /// and the whole pages inside free medium blocks are purged.
    pub fn trim(&self) {
        self.release_huge_cache(&mut self.core.lock());
        for slot in &self.shards {
            let mut shard = slot.0.lock();
            self.unmap_empty_chunks(&mut shard, usize::MAX);
            shard
                .tlsf
                .for_each_free_block(|start, end| self.purge_free_range(start, end));
            shard.spare_since = None;
        }
    }

    /// Takes up to `most` wholly free chunks out of `shard` and unmaps
    /// them.
    fn unmap_empty_chunks(&self, shard: &mut MediumShard, most: usize) {
        for _ in 0..most {
            let Some(chunk) = shard.tlsf.any_empty_chunk() else {
                break;
            };
            // SAFETY: the chunk is wholly free and registered; nothing
            // refers to it once taken out of the index.
            unsafe {
                shard.tlsf.take_empty_chunk(chunk);
                self.unmap_medium_chunk(chunk.cast());
            }
        }
    }

    /// Unmaps a medium chunk taken out of its shard.
    ///
    /// # Safety
    ///
    /// `chunk` is a wholly free medium chunk of this heap that no shard
    /// holds any more.
    unsafe fn unmap_medium_chunk(&self, chunk: NonNull<ChunkHeader>) {
        let mut core = self.core.lock();
        // SAFETY: caller's contract.
        unsafe { self.unmap_chunk(&mut core, chunk) };
        core.stats.medium_chunks -= 1;
    }

    /// Purges the whole pages of `start..end`, the part of a free medium
    /// block past its header, links and free mark.
    fn purge_free_range(&self, start: *mut u8, end: usize) {
        let page = page_size();
        let (from, to) = (start.addr().next_multiple_of(page), end & !(page - 1));
        if from < to {
            // SAFETY: whole pages inside a free block, past its header and
            // links, inside a live chunk of this source; free contents are
            // not needed.
            unsafe {
                self.source
                    .purge(NonNull::new_unchecked(start.with_addr(from)), to - from)
            };
        }
    }

    /// Releases the wholly free chunks `shard` keeps that stayed unused
    /// over a whole `POOL_PURGE_INTERVAL` ([`Self::release_spare_chunks`]).
    /// Checked on the shard's medium allocations and frees, reading the
    /// clock on one call in `PURGE_CHECK_INTERVAL` while it keeps some, so
    /// steady churn pays neither a clock read per call nor a system call
    /// per pair; pool transitions check too (`purge_expired`), for a
    /// program that stopped using medium blocks.
    #[inline]
    fn purge_spare_chunk(&self, shard: &mut MediumShard) {
        shard.ops = shard.ops.wrapping_add(1);
        if shard.ops.is_multiple_of(PURGE_CHECK_INTERVAL) {
            if shard.spare_since.is_some() {
                self.release_spare_chunks(shard);
            }
            if shard.dirty_since.is_some() {
                self.purge_large_free(shard);
            }
            if self.huge_waiting.load(Ordering::Relaxed) {
                self.purge_huge_cache(&mut self.core.lock());
            }
        }
    }

    /// Once the interval has passed, unmaps as many of `shard`'s wholly
    /// free chunks as stayed unused over all of it (the TLSF's low water),
    /// and starts the next interval.
    #[cold]
    fn release_spare_chunks(&self, shard: &mut MediumShard) {
        let Some(now) = due(shard.spare_since, POOL_PURGE_INTERVAL) else {
            return;
        };
        self.unmap_empty_chunks(shard, shard.tlsf.empty_low());
        shard.tlsf.reset_empty_low();
        shard.spare_since = (shard.tlsf.empty_chunks > 0).then_some(now);
    }

    /// Starts the aging of `shard`'s large free blocks if a free, merge or
    /// shrink just made one ([`medium::Tlsf::take_large_freed`]).
    #[inline]
    fn note_large_free(&self, shard: &mut MediumShard) {
        if shard.tlsf.take_large_freed() && shard.dirty_since.is_none() {
            shard.dirty_since = Some(Stamp::now());
            self.spares_waiting.store(true, Ordering::Relaxed);
        }
    }

    /// Every `PURGE_DELAY` while `shard` may hold large free blocks, ages
    /// them ([`medium::Tlsf::age_free_blocks`]): the pages of
    /// one free over a whole interval, from one aging to the next, are
    /// purged, wholly free chunks aside (the spares have their own
    /// interval). A buffer of a few MiB that a program drops and does not
    /// allocate again soon stops holding memory, as a huge block's mapping
    /// would; one reused meanwhile keeps its pages.
    #[cold]
    fn purge_large_free(&self, shard: &mut MediumShard) {
        let Some(now) = due(shard.dirty_since, PURGE_DELAY) else {
            return;
        };
        let pending = shard.tlsf.age_free_blocks(MEDIUM_PURGE_MIN, |start, end| {
            self.purge_free_range(start, end)
        });
        shard.dirty_since = pending.then_some(now);
    }

    /// A request of `size` bytes for which the good fit found no block of
    /// a partly used chunk of `shard` took empty chunk `taken` (a spare or
    /// a new one), whose pages it will touch: the shard's largest free
    /// blocks of `MEDIUM_PURGE_MIN` or more outside that chunk (too small
    /// for it, as the search saw them) have their pages purged, up to
    /// `size` bytes, so that the shard's footprint stays level instead of
    /// growing by what the request touches while pages it cannot use stay
    /// resident. Spills are rare in steady use (a program's live medium
    /// bytes grow past its chunks, or its blocks fragment them), and the
    /// purge waits for no interval: the peak is what it lowers.
    /// `vec_growth_8x`'s peak, 23.0 MB without it, is 22.1 (System's
    /// 22.1), for 6.8k page faults instead of 4.8k; purging only when a
    /// new chunk is mapped (not when a spare is taken), 22.3 (`workloads
    /// peak`, interleaved runs of each build).
    #[cold]
    fn purge_for_spill(&self, shard: &mut MediumShard, taken: NonNull<u8>, size: usize) {
        let start = taken.as_ptr().addr();
        shard.tlsf.purge_largest(
            MEDIUM_PURGE_MIN,
            size,
            start..start + MEDIUM_CHUNK_SIZE,
            |s, e| self.purge_free_range(s, e),
        );
    }

    /// Purges `size` bytes at `ptr` (whole pages of a live chunk whose
    /// contents are no longer needed); `true` if they now read zero.
    ///
    /// # Safety
    ///
    /// As for [`PageSource::purge`].
    pub(crate) unsafe fn purge(&self, ptr: NonNull<u8>, size: usize) -> bool {
        // SAFETY: forwarded contract.
        unsafe { self.source.purge(ptr, size) }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> RawStats {
        let mut medium = (0, 0, 0);
        for slot in &self.shards {
            let shard = slot.0.lock();
            medium.0 += shard.bytes_in_use;
            medium.1 = shard.requested.wrapping_add(medium.1);
            medium.2 += shard.blocks;
        }
        let mut stats = self.core.lock().stats;
        stats.bytes_in_use += medium.0;
        stats.bytes_requested = stats.bytes_requested.wrapping_add(medium.1);
        stats.medium_blocks = medium.2;
        stats.huge_bytes_copied = self.huge_copied.load(Ordering::Relaxed);
        stats
    }

    /// Counts `bytes` copied out of the live block of chunk `header` by a
    /// reallocation that moves it, if it is a huge block.
    ///
    /// # Safety
    ///
    /// `header` is a live chunk of this heap.
    #[inline]
    pub(crate) unsafe fn count_copy(&self, header: NonNull<ChunkHeader>, bytes: usize) {
        // SAFETY: a live chunk header (caller).
        if unsafe { (*header.as_ptr()).kind } == ChunkKind::Huge {
            self.huge_copied.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    /// Allocates a block for `layout` (any size, any power-of-two alignment).
    /// `None` when the OS refuses memory or the size overflows.
    pub fn allocate(&self, layout: Layout) -> Option<NonNull<u8>> {
        let b = self.alloc_block(layout.size(), layout.align())?;
        crate::valgrind::malloclike(b.ptr.as_ptr(), layout.size(), b.zeroed);
        Some(b.ptr)
    }

    /// Frees a block.
    ///
    /// # Safety
    ///
    /// `ptr` was returned by [`RawHeap::allocate`] on this heap with
    /// `layout`, and is not used afterwards.
    pub unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        let (header, ptr) = self.find_own_block(ptr, "RawHeap::deallocate");
        crate::valgrind::freelike(ptr.as_ptr());
        // SAFETY: the block is live and ours (caller).
        unsafe { self.free_block(header, ptr, layout.size()) }
    }

    /// Usable bytes of a live block: at least what was asked for.
    ///
    /// # Safety
    ///
    /// `ptr` was returned by [`RawHeap::allocate`] on this heap and is not
    /// yet freed.
    pub unsafe fn usable_size(&self, ptr: NonNull<u8>) -> usize {
        let (header, ptr) = self.find_own_block(ptr, "RawHeap::usable_size");
        // SAFETY: live block of ours (caller).
        unsafe { Self::block_usable_size(header, ptr) }
    }

    /// The chunk holding live block `ptr` and the re-derived pointer
    /// ([ref:rebase]). A pointer of no heap, or of another heap, is reported
    /// and aborts the process.
    #[inline]
    pub(crate) fn find_own_block(
        &self,
        ptr: NonNull<u8>,
        what: &str,
    ) -> (NonNull<ChunkHeader>, NonNull<u8>) {
        let (header, ptr) = ARENA_MAP.find_block(ptr, what);
        // SAFETY: `header` is a live chunk header (arena map invariant).
        if unsafe { (*header.as_ptr()).owner } != self.id() {
            crate::fatal::wrong_heap(what, ptr.as_ptr());
        }
        (header, ptr)
    }

    /// Whether a request goes to the medium allocator.
    #[inline]
    fn is_medium(size: usize, align: usize) -> bool {
        size <= MEDIUM_MAX && align <= MEDIUM_MAX_ALIGN
    }

    pub(crate) fn alloc_block(&self, size: usize, align: usize) -> Option<RawBlock> {
        self.alloc_block_in(size, align, Self::thread_shard())
    }

    /// [`Self::alloc_block`], a medium block from shard `shard` (any
    /// index: taken modulo `MEDIUM_SHARDS`).
    pub(crate) fn alloc_block_in(
        &self,
        size: usize,
        align: usize,
        shard: usize,
    ) -> Option<RawBlock> {
        if Self::is_medium(size, align) {
            self.alloc_medium_as(size, size, align, shard)
        } else {
            self.alloc_huge(size, align)
        }
    }

    /// A shard for the calling thread when no thread heap names one:
    /// threads take shards in turn, on their first such request. A const
    /// thread-local with no destructor: set-up and teardown never allocate
    /// (rust-lang/rust#144465).
    #[inline]
    pub(crate) fn thread_shard() -> usize {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        std::thread_local! {
            static SHARD: core::cell::Cell<usize> = const { core::cell::Cell::new(usize::MAX) };
        }
        SHARD
            .try_with(|shard| {
                if shard.get() == usize::MAX {
                    shard.set(NEXT.fetch_add(1, Ordering::Relaxed) % MEDIUM_SHARDS);
                }
                shard.get()
            })
            .unwrap_or(0)
    }

    /// A medium block of `size` bytes at `align` from shard `hint` (modulo
    /// `MEDIUM_SHARDS`), counted as a request of `requested` bytes
    /// (thread caches allocate whole bins).
    pub(crate) fn alloc_medium_as(
        &self,
        requested: usize,
        size: usize,
        align: usize,
        hint: usize,
    ) -> Option<RawBlock> {
        debug_assert!(Self::is_medium(size, align));
        let index = hint % MEDIUM_SHARDS;
        let mut shard = self.shards[index].0.lock();
        self.purge_spare_chunk(&mut shard);
        let (ptr, usable) = match shard.tlsf.allocate(size, align) {
            Some(found) => found,
            None => {
                let chunk = {
                    let mut core = self.core.lock();
                    let mapped = self.chunk_fits().then(|| {
                        self.map_chunk(&mut core, ChunkKind::Medium, MEDIUM_CHUNK_SIZE, CHUNK_SIZE)
                    });
                    let Some(chunk) = mapped.flatten() else {
                        drop((core, shard));
                        return self.alloc_medium_mapped(requested, size, align);
                    };
                    core.stats.medium_chunks += 1;
                    chunk
                };
                // SAFETY: the chunk was just mapped for the medium
                // allocator; no block of it exists yet.
                unsafe {
                    (*chunk.as_ptr()).shard = index as u8;
                    shard.tlsf.add_chunk(chunk.cast());
                }
                shard.tlsf.allocate(size, align)?
            }
        };
        if let Some(chunk) = shard.tlsf.take_took_empty() {
            self.purge_for_spill(&mut shard, chunk, size);
        }
        if usable > MARK_OFFSET {
            // SAFETY: the mark's word lies in the block, just allocated.
            unsafe { crate::harden::clear_mark(ptr.as_ptr().add(MARK_OFFSET).cast()) };
        }
        shard.bytes_in_use += usable;
        shard.requested = shard.requested.wrapping_add(requested);
        shard.blocks += 1;
        Some(RawBlock { ptr, zeroed: false })
    }

    /// Whether the heap maps medium chunks: not under a limit below two
    /// chunks, which one chunk's unused pages would mostly fill.
    fn chunk_fits(&self) -> bool {
        MEDIUM_CHUNK_SIZE <= self.limit() / 2
    }

    /// A medium request whose shard could not map a chunk: in a bounded
    /// heap, whose limit may hold the block but not a whole
    /// `MEDIUM_CHUNK_SIZE` chunk (or is under two, [`Self::chunk_fits`]),
    /// the block gets a mapping of its own, as a
    /// huge block (freed through its chunk's kind, never by size: a bounded
    /// heap's frees all read the block's chunk).
    #[cold]
    fn alloc_medium_mapped(&self, requested: usize, size: usize, align: usize) -> Option<RawBlock> {
        if self.limit() == usize::MAX {
            return None;
        }
        self.medium_alone.store(true, Ordering::SeqCst);
        self.sized_frees.store(false, Ordering::SeqCst);
        let block = self.alloc_huge(size, align)?;
        self.add_requested(requested.wrapping_sub(size));
        Some(block)
    }

    /// The shard of medium chunk `header`.
    ///
    /// # Safety
    ///
    /// `header` is a live medium chunk of this heap.
    unsafe fn shard_of(&self, header: NonNull<ChunkHeader>) -> &Mutex<ForkSafe<R>, MediumShard> {
        // SAFETY: caller's contract; the field is set before any block of
        // the chunk exists and never changes.
        let index = unsafe { (*header.as_ptr()).shard } as usize;
        // In bounds whatever the header says: no panic on `dealloc`.
        &self.shards[index % MEDIUM_SHARDS].0
    }

    /// Adds `delta` (wrapping) to the bytes requested by live blocks.
    pub(crate) fn add_requested(&self, delta: usize) {
        let mut core = self.core.lock();
        core.stats.bytes_requested = core.stats.bytes_requested.wrapping_add(delta);
    }

    /// Offset of a huge block from its mapping's base.
    fn huge_offset(align: usize) -> usize {
        CHUNK_HEADER_SIZE.max(align)
    }

    fn alloc_huge(&self, size: usize, align: usize) -> Option<RawBlock> {
        let offset = Self::huge_offset(align);
        let map_size =
            checked_align_up(offset.checked_add(size)?, page_size())?.checked_add(huge_guard())?;
        if map_size > isize::MAX as usize {
            return None;
        }
        let chunk_align = align.max(CHUNK_SIZE);
        let mut core = self.core.lock();
        // Taken before the purge: a mapping due to be purged is better
        // reused with its pages, and a pair that reuses the one mapping it
        // freed leaves none waiting, so the purge reads no clock.
        let cached = self.take_cached_huge(&mut core, map_size, chunk_align);
        self.purge_huge_cache(&mut core);
        let (header, zeroed) = match cached {
            Some(found) => found,
            None => (
                self.map_chunk(&mut core, ChunkKind::Huge, map_size, chunk_align)?,
                true,
            ),
        };
        // SAFETY: a live chunk header, ours.
        let usable = unsafe { (*header.as_ptr()).size } - offset - huge_guard();
        core.stats.bytes_in_use += usable;
        core.stats.bytes_requested = core.stats.bytes_requested.wrapping_add(size);
        core.stats.huge_blocks += 1;
        // SAFETY: `offset < map_size`, inside the mapping.
        let ptr = unsafe { header.cast::<u8>().add(offset) };
        Some(RawBlock { ptr, zeroed })
    }

    /// Takes the smallest cached huge mapping that holds `map_size` bytes
    /// aligned to `align` and is at most twice that (the waste a huge
    /// block may keep in place, as in `resize_in_place`), and makes it a
    /// chunk again: a fresh header, registered and linked. Returns the
    /// header and whether the block reads zero.
    fn take_cached_huge(
        &self,
        core: &mut RawCore,
        map_size: usize,
        align: usize,
    ) -> Option<(NonNull<ChunkHeader>, bool)> {
        let mut best: Option<usize> = None;
        for (i, c) in core.huge_cache[..core.huge_cached].iter().enumerate() {
            if c.size >= map_size
                && c.size / 2 <= map_size
                && c.base.addr() & (align - 1) == 0
                && best.is_none_or(|b| c.size < core.huge_cache[b].size)
            {
                best = Some(i);
            }
        }
        let c = Self::remove_cached(core, best?);
        // Cached entries are non-null mappings.
        let header = NonNull::new(c.base)?.cast::<ChunkHeader>();
        // SAFETY: the mapping is ours, mapped with `c.size` and `c.align`,
        // and nothing refers to it while cached.
        unsafe {
            header.write(ChunkHeader::new(
                ChunkKind::Huge,
                self.assign_id(),
                c.size,
                c.align,
            ))
        };
        if !ARENA_MAP.register(header, c.base.addr(), c.size) {
            self.release_cached(core, c);
            return None;
        }
        // SAFETY: a live chunk header, not on the list.
        unsafe { Self::link(core, header) };
        Some((header, c.zeroed))
    }

    /// Takes entry `i` out of the huge cache.
    fn remove_cached(core: &mut RawCore, i: usize) -> CachedMapping {
        let c = core.huge_cache[i];
        core.huge_cache.copy_within(i + 1..core.huge_cached, i);
        core.huge_cached -= 1;
        core.stats.huge_cached_bytes -= c.size;
        c
    }

    /// Unmaps a mapping taken out of the huge cache.
    fn release_cached(&self, core: &mut RawCore, c: CachedMapping) {
        core.stats.bytes_mapped -= c.size;
        // SAFETY: a cached mapping is a huge chunk's mapping that nothing
        // refers to; it was mapped with this size and alignment.
        unsafe {
            self.unmap_source(
                ChunkKind::Huge,
                NonNull::new_unchecked(c.base),
                c.size,
                c.align,
            )
        };
    }

    /// Unmaps every cached huge mapping.
    fn release_huge_cache(&self, core: &mut RawCore) {
        while core.huge_cached > 0 {
            let c = Self::remove_cached(core, core.huge_cached - 1);
            self.release_cached(core, c);
        }
    }

    /// Keeps the mapping of a freed huge chunk (unlinked and unregistered)
    /// for reuse, evicting the oldest ones to stay within the bounds, or
    /// unmaps it if it alone is over them.
    fn cache_huge(&self, core: &mut RawCore, base: NonNull<u8>, size: usize, align: usize) {
        let mut c = CachedMapping {
            base: base.as_ptr(),
            size,
            align,
            freed: Some(Stamp::now()),
            zeroed: false,
        };
        if size > HUGE_CACHE_BYTES {
            self.release_cached(core, c);
            return;
        }
        while core.huge_cached == HUGE_CACHE_MAPPINGS
            || core.stats.huge_cached_bytes + size > HUGE_CACHE_BYTES
        {
            let oldest = Self::remove_cached(core, 0);
            self.release_cached(core, oldest);
        }
        let resident: usize = core.huge_cache[..core.huge_cached]
            .iter()
            .filter(|c| c.freed.is_some())
            .map(|c| c.size)
            .sum();
        if resident + size > HUGE_CACHE_RESIDENT {
            // SAFETY: the whole of a mapping of this source, page-aligned
            // at both ends, whose contents nobody needs.
            c.zeroed = unsafe { self.source.purge(base, size) };
            c.freed = None;
        } else {
            self.huge_waiting.store(true, Ordering::Relaxed);
        }
        core.huge_cache[core.huge_cached] = c;
        core.huge_cached += 1;
        core.stats.huge_cached_bytes += size;
    }

    /// Purges the pages of cached huge mappings freed `PURGE_DELAY` ago or
    /// more. Checked on huge allocations and frees (no background thread);
    /// reads the clock only while some cached mapping waits.
    fn purge_huge_cache(&self, core: &mut RawCore) {
        let n = core.huge_cached;
        if !core.huge_cache[..n].iter().any(|c| c.freed.is_some()) {
            self.huge_waiting.store(false, Ordering::Relaxed);
            return;
        }
        let now = Stamp::now();
        for c in &mut core.huge_cache[..n] {
            if let Some(freed) = c.freed
                && now.since(freed) >= PURGE_DELAY
            {
                // SAFETY: the whole of a cached mapping of this source
                // (page-aligned at both ends), whose contents nobody needs.
                c.zeroed = unsafe { self.source.purge(NonNull::new_unchecked(c.base), c.size) };
                c.freed = None;
            }
        }
        let waiting = core.huge_cache[..n].iter().any(|c| c.freed.is_some());
        self.huge_waiting.store(waiting, Ordering::Relaxed);
    }

    /// Purges cached huge mappings whose delay has passed, and releases
    /// the spare medium chunks due, if any waits: called on layer 2's pool
    /// transitions too, so that a program that stops allocating large
    /// blocks does not keep their pages. Two relaxed loads when none waits.
    pub(crate) fn purge_expired(&self) {
        if self.huge_waiting.load(Ordering::Relaxed) {
            let mut core = self.core.lock();
            self.purge_huge_cache(&mut core);
        }
        // Cleared first: a shard that starts keeping chunks meanwhile sets
        // it again.
        if self.spares_waiting.swap(false, Ordering::Relaxed) {
            let mut waiting = false;
            for slot in &self.shards {
                // A busy shard checks for itself.
                let Some(mut shard) = slot.0.try_lock() else {
                    waiting = true;
                    continue;
                };
                self.release_spare_chunks(&mut shard);
                self.purge_large_free(&mut shard);
                waiting |= shard.spare_since.is_some() || shard.dirty_since.is_some();
            }
            if waiting {
                self.spares_waiting.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Frees a medium or huge block that was requested with `size` bytes.
    ///
    /// # Safety
    ///
    /// `ptr` is a live medium or huge block of this heap and `header` its
    /// chunk (from the arena map).
    pub(crate) unsafe fn free_block(
        &self,
        header: NonNull<ChunkHeader>,
        ptr: NonNull<u8>,
        size: usize,
    ) {
        // SAFETY: `header` is a live chunk of ours (caller).
        if unsafe { (*header.as_ptr()).kind } == ChunkKind::Medium {
            // SAFETY: as above.
            let mut shard = unsafe { self.shard_of(header) }.lock();
            // Wrapping: a block that went through a thread's medium cache
            // is counted there (see `PrivateHeap::stats`).
            shard.requested = shard.requested.wrapping_sub(size);
            // SAFETY: a medium block being freed (caller).
            let usable = unsafe { medium::freed_usable_size(ptr, header.as_ptr().cast()) };
            // Marked free, as a cached block is: the medium free's fast
            // path tells a double free by the mark alone ([ref:free-mark]).
            if usable > MARK_OFFSET {
                // SAFETY: the mark's word lies in the block, ours to write.
                unsafe {
                    crate::harden::put_mark(ptr.as_ptr().add(MARK_OFFSET).cast(), self.free_mark())
                };
            }
            shard.bytes_in_use -= usable;
            shard.blocks -= 1;
            // SAFETY: as above; freed once.
            if let Some(chunk) = unsafe { shard.tlsf.free(ptr) } {
                if shard.tlsf.empty_chunks > MEDIUM_SPARE_CHUNKS {
                    // SAFETY: the chunk is wholly free and registered.
                    unsafe {
                        shard.tlsf.take_empty_chunk(chunk);
                        self.unmap_medium_chunk(chunk.cast());
                    }
                } else if shard.spare_since.is_none() {
                    // The first chunk kept: an interval starts.
                    shard.spare_since = Some(Stamp::now());
                    shard.tlsf.reset_empty_low();
                    self.spares_waiting.store(true, Ordering::Relaxed);
                }
            }
            self.note_large_free(&mut shard);
            self.purge_spare_chunk(&mut shard);
            return;
        }
        let mut core = self.core.lock();
        core.stats.bytes_requested = core.stats.bytes_requested.wrapping_sub(size);
        // SAFETY: `header` is a live chunk of ours (caller).
        match unsafe { (*header.as_ptr()).kind } {
            ChunkKind::Huge => {
                // SAFETY: a live huge block (caller).
                core.stats.bytes_in_use -= unsafe { Self::block_usable_size(header, ptr) };
                core.stats.huge_blocks -= 1;
                // SAFETY: the block was the chunk's only content: nothing
                // refers to the chunk once unlinked and unregistered.
                let (size, align) = unsafe {
                    Self::unlink(&mut core, header);
                    ((*header.as_ptr()).size, (*header.as_ptr()).align)
                };
                ARENA_MAP.unregister(header.as_ptr().addr(), size);
                // Purged before this mapping joins the cache: a pair that
                // takes it again leaves no other waiting, so only
                // `cache_huge` reads the clock.
                self.purge_huge_cache(&mut core);
                self.cache_huge(&mut core, header.cast(), size, align);
            }
            // Medium blocks were freed above.
            ChunkKind::Arena | ChunkKind::Medium => {
                crate::fatal::bad_pointer("layer 1 free of a small block", ptr.as_ptr())
            }
        }
    }

    /// Usable size of a medium or huge block.
    ///
    /// # Safety
    ///
    /// As for [`RawHeap::free_block`].
    pub(crate) unsafe fn block_usable_size(
        header: NonNull<ChunkHeader>,
        ptr: NonNull<u8>,
    ) -> usize {
        // SAFETY: `header` is a live chunk and `ptr` a live block in it.
        // Fields are read through the raw pointer, never a `&ChunkHeader`:
        // its list links change under the lock meanwhile.
        unsafe {
            let h = header.as_ptr();
            match (*h).kind {
                ChunkKind::Medium => medium::usable_size(ptr),
                ChunkKind::Huge => h.addr() + (*h).size - huge_guard() - ptr.as_ptr().addr(),
                ChunkKind::Arena => {
                    crate::fatal::bad_pointer("layer 1 size of a small block", ptr.as_ptr())
                }
            }
        }
    }

    /// Resizes a medium or huge block in place for a request of `size`
    /// bytes, if it can stay where it is without wasting much; returns its
    /// new usable size. A medium block is fitted to hold exactly `fit`
    /// bytes (`size` or more: a request bin's bound, [ref:bin-bound]).
    ///
    /// # Safety
    ///
    /// As for [`RawHeap::free_block`].
    pub(crate) unsafe fn resize_in_place(
        &self,
        header: NonNull<ChunkHeader>,
        ptr: NonNull<u8>,
        old_size: usize,
        size: usize,
        fit: usize,
    ) -> Option<usize> {
        // SAFETY: `header` is a live chunk of ours (caller).
        match unsafe { (*header.as_ptr()).kind } {
            ChunkKind::Medium if size <= MEDIUM_MAX => {
                // SAFETY: a live medium chunk of ours (caller).
                let mut shard = unsafe { self.shard_of(header) }.lock();
                // SAFETY: a live medium block (caller).
                let old = unsafe { medium::usable_size(ptr) };
                debug_assert!(fit >= size);
                // SAFETY: as above.
                let new = unsafe { shard.tlsf.resize_in_place(ptr, fit) }?;
                self.note_large_free(&mut shard);
                shard.bytes_in_use = shard.bytes_in_use - old + new;
                shard.requested = shard.requested.wrapping_sub(old_size).wrapping_add(size);
                Some(new)
            }
            ChunkKind::Huge if size > MEDIUM_MAX => {
                // SAFETY: a live huge block (caller).
                let usable = unsafe { Self::block_usable_size(header, ptr) };
                let fits = size <= usable && size > usable / 2;
                if fits {
                    self.add_requested(size.wrapping_sub(old_size));
                }
                fits.then_some(usable)
            }
            _ => None,
        }
    }

    /// Grows live medium block `ptr` to hold `fit` bytes (for a request of
    /// `size`, as in [`Self::resize_in_place`]) by taking its free
    /// predecessor, and its free successor too if need be, moving the
    /// first `old_size` bytes down to the block's new start, which is
    /// returned with its usable size. A growing buffer then reuses the
    /// pages of a freed neighbour instead of touching new ones, for the
    /// same copy a move costs. `None`, the block untouched, when the
    /// block is not medium, `size` is not a medium size, or the
    /// predecessor is not free or too small.
    ///
    /// The bytes move outside the shard's lock: the claimed range is one
    /// used block meanwhile, the caller's alone. A later free of the old
    /// pointer (a double free) is still caught where the move left its
    /// header or mark's word alone: the header says free
    /// ([`medium::Tlsf::claim_backward`]) and the word holds the mark.
    ///
    /// # Safety
    ///
    /// As for [`RawHeap::free_block`]; `old_size <= size`. On success the
    /// old pointer must not be used again.
    pub(crate) unsafe fn grow_backward(
        &self,
        header: NonNull<ChunkHeader>,
        ptr: NonNull<u8>,
        old_size: usize,
        size: usize,
        fit: usize,
    ) -> Option<(NonNull<u8>, usize)> {
        debug_assert!(old_size <= size && size <= fit);
        // SAFETY: `header` is a live chunk of ours (caller).
        if unsafe { (*header.as_ptr()).kind } != ChunkKind::Medium || size > MEDIUM_MAX {
            return None;
        }
        // SAFETY: a live medium chunk of ours (caller).
        let shard = unsafe { self.shard_of(header) };
        let (new, old, claimed) = {
            let mut shard = shard.lock();
            // SAFETY: a live medium block (caller).
            let old = unsafe { medium::usable_size(ptr) };
            // SAFETY: as above.
            let new = unsafe { shard.tlsf.claim_backward(ptr, fit) }?;
            // Counted as it is meanwhile, for `validate`.
            // SAFETY: `new` is the claimed used block.
            let claimed = unsafe { medium::usable_size(new) };
            shard.bytes_in_use = shard.bytes_in_use - old + claimed;
            (new, old, claimed)
        };
        // SAFETY: both ranges lie in the claimed block, ours alone; they
        // may overlap, `copy` allows it. The word at `MARK_OFFSET` (the
        // predecessor's free mark, or the old header when the predecessor
        // is 32 bytes) lies below the old payload, so clearing it first
        // loses nothing; a short move would leave it set.
        unsafe {
            crate::harden::clear_mark(new.as_ptr().add(MARK_OFFSET).cast());
            core::ptr::copy(ptr.as_ptr(), new.as_ptr(), old_size);
        }
        let mut shard = shard.lock();
        // The old pointer's mark word, if the move did not reach it (the
        // sized free's fast path reads only it), as a freed block merged
        // into its predecessor keeps its mark; written before the fit,
        // whose split may put a header or links over it.
        if old > MARK_OFFSET && ptr.as_ptr().addr() + MARK_OFFSET >= new.as_ptr().addr() + old_size
        {
            // SAFETY: the word lay in the old block, so it lies in the
            // claimed one, past the bytes moved.
            unsafe {
                crate::harden::put_mark(ptr.as_ptr().add(MARK_OFFSET).cast(), self.free_mark())
            };
        }
        // SAFETY: claimed by `claim_backward(_, fit)`, contents moved.
        let usable = unsafe { shard.tlsf.fit_claimed(new, fit) };
        self.note_large_free(&mut shard);
        shard.bytes_in_use = shard.bytes_in_use - claimed + usable;
        shard.requested = shard.requested.wrapping_sub(old_size).wrapping_add(size);
        Some((new, usable))
    }

    /// Resizes live huge block `ptr` to `size` bytes, keeping its contents,
    /// by remapping its pages ([`PageSource::remap`]): in place when the
    /// mapping can grow or shrink where it is, else moved to a fresh
    /// mapping with no byte copied. Returns the block (at the same offset
    /// from its mapping's base) and its usable size, or `None` — the block
    /// untouched — when the source cannot remap, the heap's bound forbids
    /// the growth, `size` is not a huge size, or the block's offset does
    /// not suit `align`. Called by reallocation once resizing in place
    /// without the OS failed; memcheck is told of the resize or move.
    ///
    /// On success `header` and `ptr` are stale if the block moved.
    ///
    /// # Safety
    ///
    /// As for [`RawHeap::free_block`]; `old_size` is what the block was
    /// requested (or last resized) with.
    pub(crate) unsafe fn realloc_huge(
        &self,
        header: NonNull<ChunkHeader>,
        ptr: NonNull<u8>,
        old_size: usize,
        size: usize,
        align: usize,
    ) -> Option<(NonNull<u8>, usize)> {
        let h = header.as_ptr();
        // SAFETY: `header` is a live chunk of ours (caller); its fields do
        // not change while we hold the lock below or the block is live.
        let (kind, old_map, chunk_align) = unsafe { ((*h).kind, (*h).size, (*h).align) };
        let offset = ptr.as_ptr().addr() - header.as_ptr().addr();
        if kind != ChunkKind::Huge
            || size <= MEDIUM_MAX
            || align > chunk_align
            || !offset.is_multiple_of(align)
        {
            return None;
        }
        let new_map =
            checked_align_up(offset.checked_add(size)?, page_size())?.checked_add(huge_guard())?;
        if new_map > isize::MAX as usize {
            return None;
        }
        let mut core = self.core.lock();
        if new_map > old_map && !self.room_for(&mut core, new_map - old_map) {
            return None;
        }
        let base = header.cast::<u8>();
        // The guard page becomes ordinary memory for the remap (the kernel
        // moves one mapping of one protection), and is put back after.
        self.guard(base, old_map - huge_guard(), old_map, false);
        let (mut shrunk, mut unregistered) = (false, false);
        let moved = {
            let mut accept = |dest: NonNull<u8>| {
                if dest == base {
                    if new_map < old_map {
                        // Shrink: the tail leaves the map (and the header's
                        // range) before its pages go.
                        let keep = new_map.next_multiple_of(CHUNK_SIZE);
                        // SAFETY: our live header; only the block's owner
                        // looks its range up, and it is resizing.
                        unsafe { (*h).size = new_map };
                        if keep < old_map {
                            ARENA_MAP.unregister(base.as_ptr().addr() + keep, old_map - keep);
                        }
                        shrunk = true;
                        true
                    } else {
                        ARENA_MAP.prepare(base.as_ptr().addr(), new_map)
                    }
                } else if ARENA_MAP.prepare(dest.as_ptr().addr(), new_map) {
                    debug_assert!(dest.as_ptr().addr().is_multiple_of(chunk_align));
                    ARENA_MAP.unregister(base.as_ptr().addr(), old_map);
                    unregistered = true;
                    true
                } else {
                    false
                }
            };
            // SAFETY: the chunk's mapping is live and ours, mapped with
            // `old_map` and `chunk_align`; `new_map` is a non-zero multiple
            // of the page size; on a shrink, the bytes past `new_map` are
            // past the block's new end, unused.
            unsafe {
                self.source
                    .remap(base, old_map, new_map, chunk_align, &mut accept)
            }
        };
        let Some(dest) = moved else {
            // SAFETY: our live header, as before the attempt; its leaves
            // exist, so registering its range again cannot fail.
            unsafe { (*h).size = old_map };
            if shrunk || unregistered {
                ARENA_MAP.register(header, base.as_ptr().addr(), old_map);
            }
            self.guard(base, old_map - huge_guard(), old_map, true);
            return None;
        };
        self.guard(dest, new_map - huge_guard(), new_map, true);
        let new_header = dest.cast::<ChunkHeader>();
        // SAFETY: the chunk's pages, header and links included, are now at
        // `dest` (`remap`'s contract), its leaves prepared by `accept`.
        unsafe {
            (*new_header.as_ptr()).size = new_map;
            if dest != base {
                Self::relink_moved(&mut core, h, new_header);
            }
        }
        if new_map > old_map || dest != base {
            let done = ARENA_MAP.register(new_header, dest.as_ptr().addr(), new_map);
            debug_assert!(done, "leaves prepared");
        }
        let usable = new_map - offset - huge_guard();
        let s = &mut core.stats;
        s.bytes_mapped = s.bytes_mapped - old_map + new_map;
        s.bytes_in_use = s.bytes_in_use - (old_map - offset - huge_guard()) + usable;
        s.bytes_requested = s.bytes_requested.wrapping_sub(old_size).wrapping_add(size);
        drop(core);
        // SAFETY: `offset < new_map`, inside the chunk at `dest`.
        let block = unsafe { dest.add(offset) };
        if dest == base {
            crate::valgrind::resized(ptr.as_ptr(), old_size, size);
        } else {
            crate::valgrind::freelike(ptr.as_ptr());
            crate::valgrind::malloclike(block.as_ptr(), size, false);
            crate::valgrind::defined(block.as_ptr(), old_size.min(size));
        }
        Some((block, usable))
    }

    /// Checks every invariant of layer 1 — the chunk list, the arena map's
    /// entries for it, every medium block, the free lists, the counters —
    /// and panics with a description on the first violation. O(blocks); for
    /// tests.
    pub fn validate(&self) {
        // Shards first, in index order, then the core (the lock order).
        let shards: [_; MEDIUM_SHARDS] = core::array::from_fn(|i| self.shards[i].0.lock());
        let core = self.core.lock();
        let id = self.id.load(Ordering::Relaxed);
        let (mut mapped, mut arenas, mut medium_chunks, mut huge) = (0, 0, 0, 0);
        let (mut used, mut used_bytes, mut free) = (0, 0, 0);
        let mut prev = null_mut();
        let mut chunk = core.chunks;
        // SAFETY: under the lock, every chunk on the list is live and its
        // header valid.
        unsafe {
            while let Some(h) = NonNull::new(chunk) {
                let c = &*h.as_ptr();
                assert_eq!(c.prev, prev, "chunk list broken");
                assert_eq!(c.owner, id, "chunk of another heap on the list");
                assert_eq!(h.as_ptr().addr() % CHUNK_SIZE, 0);
                for offset in (0..c.size).step_by(CHUNK_SIZE).chain([c.size - 1]) {
                    assert_eq!(
                        ARENA_MAP.lookup(h.as_ptr().addr() + offset),
                        Some(h),
                        "arena map entry missing"
                    );
                }
                mapped += c.size;
                match c.kind {
                    ChunkKind::Arena => arenas += 1,
                    ChunkKind::Huge => huge += 1,
                    ChunkKind::Medium => {
                        assert!((c.shard as usize) < MEDIUM_SHARDS, "bad medium shard");
                        medium_chunks += 1;
                        let walk = Tlsf::validate_chunk(h.cast());
                        used += walk.used_blocks;
                        used_bytes += walk.used_bytes;
                        free += walk.free_blocks;
                    }
                }
                prev = chunk;
                chunk = c.next;
            }
            let listed: usize = shards.iter().map(|s| s.tlsf.validate_lists()).sum();
            assert_eq!(listed, free, "free blocks missing from the lists");
        }
        let mut cached = 0;
        for c in &core.huge_cache[..core.huge_cached] {
            assert!(!c.base.is_null() && c.base.addr() % CHUNK_SIZE == 0);
            assert_eq!(c.base.addr() % c.align, 0);
            assert!(c.size <= HUGE_CACHE_BYTES);
            assert_eq!(
                ARENA_MAP.lookup(c.base.addr()),
                None,
                "a cached mapping is still registered"
            );
            cached += c.size;
        }
        mapped += cached;
        let s = &core.stats;
        assert_eq!(s.huge_cached_bytes, cached);
        assert_eq!(s.bytes_mapped, mapped);
        assert_eq!(
            (s.arena_chunks, s.medium_chunks, s.huge_blocks),
            (arenas, medium_chunks, huge)
        );
        assert!(
            huge > 0 || s.bytes_in_use == 0,
            "huge bytes without huge blocks"
        );
        let medium_blocks: usize = shards.iter().map(|s| s.blocks).sum();
        let medium_bytes: usize = shards.iter().map(|s| s.bytes_in_use).sum();
        assert_eq!(medium_blocks, used);
        assert_eq!(medium_bytes, used_bytes);
    }

    /// Calls `f` with the header of every arena chunk, under the lock.
    pub(crate) fn for_each_arena(&self, mut f: impl FnMut(NonNull<ChunkHeader>)) {
        let core = self.core.lock();
        let mut chunk = core.chunks;
        while let Some(h) = NonNull::new(chunk) {
            // SAFETY: chunks on the list are live; we hold the lock.
            unsafe {
                if (*h.as_ptr()).kind == ChunkKind::Arena {
                    f(h);
                }
                chunk = (*h.as_ptr()).next;
            }
        }
    }

    /// Maps an arena chunk for layer 2.
    pub(crate) fn map_arena(&self) -> Option<NonNull<u8>> {
        let mut core = self.core.lock();
        let chunk = self.map_chunk(&mut core, ChunkKind::Arena, ARENA_SIZE, ARENA_SIZE)?;
        core.stats.arena_chunks += 1;
        Some(chunk.cast())
    }

    /// Unmaps an arena chunk from [`RawHeap::map_arena`].
    ///
    /// # Safety
    ///
    /// `arena` came from `map_arena` on this heap, and no block or list
    /// refers to it any more.
    pub(crate) unsafe fn unmap_arena(&self, arena: NonNull<ChunkHeader>) {
        let mut core = self.core.lock();
        // SAFETY: caller's contract.
        unsafe { self.unmap_chunk(&mut core, arena) };
        core.stats.arena_chunks -= 1;
    }

    /// Maps, registers and links a chunk. The one place memory enters the
    /// heap.
    fn map_chunk(
        &self,
        core: &mut RawCore,
        kind: ChunkKind,
        size: usize,
        align: usize,
    ) -> Option<NonNull<ChunkHeader>> {
        debug_assert!(align >= CHUNK_SIZE && align.is_power_of_two());
        if !self.room_for(core, size) {
            return None;
        }
        // Before the first block exists.
        if self.mark.load(Ordering::Relaxed) == 0 {
            crate::harden::init();
            self.mark
                .store(crate::harden::new_mark(), Ordering::Relaxed);
        }
        let map = || {
            if kind == ChunkKind::Arena {
                debug_assert!(size == ARENA_SIZE && align == ARENA_SIZE);
                self.source.map_arena()
            } else {
                self.source.map(size, align)
            }
        };
        let base = match map() {
            Some(base) => base,
            // The OS refuses: what the cache holds may be what it lacks.
            None if core.huge_cached > 0 => {
                self.release_huge_cache(core);
                map()?
            }
            None => return None,
        };
        let header = base.cast::<ChunkHeader>();
        let owner = self.assign_id();
        // SAFETY: the mapping is fresh, ours, and larger than a header.
        unsafe { header.write(ChunkHeader::new(kind, owner, size, align)) };
        if !ARENA_MAP.register(header, base.as_ptr().addr(), size) {
            // SAFETY: just mapped, never published.
            unsafe { self.unmap_source(kind, base, size, align) };
            return None;
        }
        // SAFETY: a fresh chunk header, not on the list.
        unsafe { Self::link(core, header) };
        core.stats.bytes_mapped += size;
        // `hardened`: an arena's last pool, a huge mapping's last page.
        match kind {
            ChunkKind::Arena => self.guard(
                base,
                ARENA_SIZE - crate::config::POOL_SIZE,
                ARENA_SIZE,
                true,
            ),
            ChunkKind::Huge => self.guard(base, size - huge_guard(), size, true),
            ChunkKind::Medium => {}
        }
        Some(header)
    }

    /// `hardened`: makes bytes `from..to` of the chunk at `base` a guard
    /// (`on`) or ordinary memory again. Nothing without the feature, or
    /// with a source that cannot protect pages.
    fn guard(&self, base: NonNull<u8>, from: usize, to: usize, on: bool) {
        if cfg!(feature = "hardened") && from < to {
            // SAFETY: a page-aligned range of a live chunk of ours that
            // nothing uses (a guard, or becoming one).
            unsafe { self.source.protect(base.add(from), to - from, on) };
        }
    }

    /// Whether `size` more bytes may be mapped under the heap's bound, once
    /// the cached huge mappings and the shards' spare medium chunks are
    /// given back if that is what it takes.
    fn room_for(&self, core: &mut RawCore, size: usize) -> bool {
        let limit = self.limit.load(Ordering::Relaxed);
        let fits = |core: &RawCore| {
            core.stats
                .bytes_mapped
                .checked_add(size)
                .is_some_and(|total| total <= limit)
        };
        if fits(core) {
            return true;
        }
        self.release_huge_cache(core);
        if fits(core) {
            return true;
        }
        // Against the lock order (shard, then core), so only shards free
        // at this moment: a shard whose lock the caller holds is mapping
        // because it has no free chunk.
        for slot in &self.shards {
            if let Some(mut shard) = slot.0.try_lock() {
                while let Some(chunk) = shard.tlsf.any_empty_chunk() {
                    // SAFETY: the chunk is wholly free and registered;
                    // nothing refers to it once taken out of the index.
                    unsafe {
                        shard.tlsf.take_empty_chunk(chunk);
                        self.unmap_chunk(core, chunk.cast());
                    }
                    core.stats.medium_chunks -= 1;
                }
            }
        }
        fits(core)
    }

    /// Puts a chunk at the head of the heap's chunk list.
    ///
    /// # Safety
    ///
    /// `header` is a live chunk header of this heap, not on the list.
    unsafe fn link(core: &mut RawCore, header: NonNull<ChunkHeader>) {
        // SAFETY: `header` and the current list head are live chunk headers,
        // and we hold the lock that guards the list.
        unsafe {
            (*header.as_ptr()).prev = null_mut();
            (*header.as_ptr()).next = core.chunks;
            if !core.chunks.is_null() {
                (*core.chunks).prev = header.as_ptr();
            }
        }
        core.chunks = header.as_ptr();
    }

    /// Takes a chunk off the heap's chunk list.
    ///
    /// # Safety
    ///
    /// `header` is a chunk of this heap, on `core.chunks`.
    unsafe fn unlink(core: &mut RawCore, header: NonNull<ChunkHeader>) {
        // SAFETY: `header` and its list neighbours are live chunk headers.
        unsafe {
            let h = header.as_ptr();
            let (next, prev) = ((*h).next, (*h).prev);
            if !next.is_null() {
                (*next).prev = prev;
            }
            if prev.is_null() {
                core.chunks = next;
            } else {
                (*prev).next = next;
            }
        }
    }

    /// Points the list neighbours of a chunk whose header moved from `old`
    /// to `new` (pages remapped, links and all) at its new place.
    ///
    /// # Safety
    ///
    /// `new` is the live header of a chunk on `core.chunks` that was at
    /// `old`; its links are those it had there.
    unsafe fn relink_moved(core: &mut RawCore, old: *mut ChunkHeader, new: NonNull<ChunkHeader>) {
        // SAFETY: the neighbours are live chunk headers of this heap.
        unsafe {
            let (next, prev) = ((*new.as_ptr()).next, (*new.as_ptr()).prev);
            debug_assert!(next != old && prev != old);
            if !next.is_null() {
                (*next).prev = new.as_ptr();
            }
            if prev.is_null() {
                debug_assert_eq!(core.chunks, old);
                core.chunks = new.as_ptr();
            } else {
                (*prev).next = new.as_ptr();
            }
        }
    }

    /// Unlinks, unregisters and unmaps a chunk.
    ///
    /// # Safety
    ///
    /// `header` is a chunk of this heap (on `core.chunks`) that nothing uses.
    unsafe fn unmap_chunk(&self, core: &mut RawCore, header: NonNull<ChunkHeader>) {
        // SAFETY: `header` is a live chunk header on the list (caller).
        let (kind, size, align) = unsafe {
            Self::unlink(core, header);
            let h = header.as_ptr();
            ((*h).kind, (*h).size, (*h).align)
        };
        ARENA_MAP.unregister(header.as_ptr().addr(), size);
        core.stats.bytes_mapped -= size;
        // SAFETY: the chunk was mapped by `self.source` as `kind` with this
        // size and alignment, and is no longer reachable.
        unsafe { self.unmap_source(kind, header.cast(), size, align) };
    }

    /// Gives a chunk back to the page source the way it was mapped.
    ///
    /// # Safety
    ///
    /// `base` was mapped by `map_chunk` as `kind` with `size` and `align`,
    /// and nothing uses it any more.
    unsafe fn unmap_source(&self, kind: ChunkKind, base: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: caller's contract.
        unsafe {
            if kind == ChunkKind::Arena {
                self.source.unmap_arena(base);
            } else {
                self.source.unmap(base, size, align);
            }
        }
    }
}

impl<S: PageSource, R: RawMutex> Drop for RawHeap<S, R> {
    fn drop(&mut self) {
        let source = &self.source;
        let core = self.core.get_mut();
        for c in &core.huge_cache[..core.huge_cached] {
            // SAFETY: a cached mapping of this source, mapped with this size
            // and alignment, that nothing refers to.
            unsafe { source.unmap(NonNull::new_unchecked(c.base), c.size, c.align) };
        }
        core.huge_cached = 0;
        let mut chunk = core.chunks;
        while let Some(h) = NonNull::new(chunk) {
            // SAFETY: every chunk on the list is live; with `&mut self`
            // nothing can use the heap's blocks any more.
            unsafe {
                chunk = (*h.as_ptr()).next;
                let (size, align) = ((*h.as_ptr()).size, (*h.as_ptr()).align);
                ARENA_MAP.unregister(h.as_ptr().addr(), size);
                source.unmap(h.cast(), size, align);
            }
        }
        core.chunks = null_mut();
    }
}

const _: () = assert!(ALIGNMENT <= CHUNK_HEADER_SIZE);

/// The time now, if an interval started at `since` and `length` has
/// passed since.
fn due(since: Option<Stamp>, length: core::time::Duration) -> Option<Stamp> {
    let since = since?;
    let now = Stamp::now();
    (now.since(since) >= length).then_some(now)
}

/// Bytes at the end of every huge mapping kept as a guard page (made
/// inaccessible where the page source can): one page with the `hardened`
/// feature, none without. Not part of the block's usable size.
#[inline]
fn huge_guard() -> usize {
    if cfg!(feature = "hardened") {
        page_size()
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medium_and_huge_blocks_are_counted_and_given_back() {
        let raw = RawHeap::new();
        let sizes = [600, 64 * 1024, MEDIUM_MAX + 1];
        let blocks: Vec<_> = sizes
            .iter()
            .map(|&n| (raw.alloc_block(n, ALIGNMENT).unwrap().ptr, n))
            .collect();
        let s = raw.stats();
        assert_eq!((s.medium_blocks, s.huge_blocks, s.medium_chunks), (2, 1, 1));
        assert_eq!(s.bytes_requested, sizes.iter().sum::<usize>());
        assert!(s.bytes_in_use >= s.bytes_requested);
        assert!(s.bytes_mapped > MEDIUM_CHUNK_SIZE + MEDIUM_MAX);
        for &(p, n) in &blocks {
            // SAFETY: live blocks of `raw`.
            let usable = unsafe { raw.usable_size(p) };
            assert!(
                usable >= n && usable - n < 2 * ALIGNMENT.max(page_size()),
                "{n}: {usable}"
            );
            assert_eq!(p.as_ptr().addr() % ALIGNMENT, 0);
        }
        raw.validate();
        for (p, n) in blocks {
            let (header, p) = raw.find_own_block(p, "test");
            // SAFETY: a live block of `raw` requested with `n` bytes.
            unsafe { raw.free_block(header, p, n) };
        }
        let s = raw.stats();
        assert_eq!(
            (s.bytes_requested, s.bytes_in_use, s.huge_blocks),
            (0, 0, 0)
        );
        assert!(
            s.huge_cached_bytes > MEDIUM_MAX
                && s.bytes_mapped <= MEDIUM_CHUNK_SIZE + s.huge_cached_bytes,
            "a huge block's mapping is kept for reuse: {s:?}"
        );
        raw.validate();
        raw.trim();
        assert_eq!(
            raw.stats().bytes_mapped,
            0,
            "trim unmaps the spare medium chunks and the cached mapping"
        );
        raw.validate();
    }

    #[test]
    fn medium_shards_carve_their_own_chunks_and_take_back_their_blocks() {
        let raw = RawHeap::new();
        // One block from each shard, then one from shard 1 again.
        let blocks: Vec<_> = [0, 1, 2, 3, 1 + MEDIUM_SHARDS]
            .iter()
            .map(|&shard| raw.alloc_block_in(3000, ALIGNMENT, shard).unwrap().ptr)
            .collect();
        let chunks: Vec<_> = blocks
            .iter()
            .map(|&p| raw.find_own_block(p, "test").0)
            .collect();
        for (i, &h) in chunks.iter().enumerate().take(MEDIUM_SHARDS) {
            // SAFETY: live medium chunks of `raw`.
            assert_eq!(unsafe { (*h.as_ptr()).shard } as usize, i);
        }
        assert_eq!(chunks[4], chunks[1], "shard 1's chunk serves it again");
        let s = raw.stats();
        assert_eq!((s.medium_chunks, s.medium_blocks), (MEDIUM_SHARDS, 5));
        raw.validate();
        // Freed from anywhere, each block goes back to its chunk's shard.
        for p in blocks {
            let (header, p) = raw.find_own_block(p, "test");
            // SAFETY: a live block of `raw` requested with 3000 bytes.
            unsafe { raw.free_block(header, p, 3000) };
            raw.validate();
        }
        let s = raw.stats();
        assert_eq!(
            (s.bytes_in_use, s.medium_blocks, s.bytes_requested),
            (0, 0, 0)
        );
        raw.trim();
        assert_eq!(raw.stats().bytes_mapped, 0);
    }

    #[test]
    fn a_bounded_heap_gives_back_spare_medium_chunks_before_it_fails() {
        let spares = MEDIUM_SPARE_CHUNKS;
        assert!(spares >= 1);
        let raw = RawHeap::<OsPages, SpinLock>::with_source_and_limit(
            OsPages,
            (spares + 1) * MEDIUM_CHUNK_SIZE + 2 * CHUNK_SIZE,
        );
        let size = MEDIUM_MAX;
        let fill = |shard: usize, chunks: usize| -> Vec<_> {
            (0..chunks * (MEDIUM_CHUNK_SIZE / size - 1))
                .map(|_| raw.alloc_block_in(size, ALIGNMENT, shard).unwrap().ptr)
                .collect()
        };
        let free = |blocks: Vec<NonNull<u8>>| {
            for p in blocks {
                let (header, p) = raw.find_own_block(p, "test");
                // SAFETY: a live block of `raw` requested with `size` bytes.
                unsafe { raw.free_block(header, p, size) };
            }
        };
        // Shard 0 fills as many chunks as it keeps and frees them: all
        // stay as spares.
        free(fill(0, spares));
        assert_eq!(raw.stats().medium_chunks, spares);
        // Shard 1 needs one more chunk than that: shard 0's spares go
        // first.
        let b = fill(1, spares + 1);
        let s = raw.stats();
        assert_eq!(s.medium_chunks, spares + 1, "{s:?}");
        assert!(s.bytes_mapped <= raw.limit());
        raw.validate();
        free(b);
        raw.trim();
        assert_eq!(raw.stats().bytes_mapped, 0);
    }

    #[test]
    fn a_medium_block_grows_into_its_free_neighbour() {
        let raw = RawHeap::new();
        let a = raw.alloc_block(1000, ALIGNMENT).unwrap().ptr;
        let b = raw.alloc_block(1000, ALIGNMENT).unwrap().ptr;
        let (ha, a) = raw.find_own_block(a, "test");
        let (hb, b) = raw.find_own_block(b, "test");
        // SAFETY: `b` is live, requested with 1000 bytes; `a` is live and
        // `b` (its neighbour) is freed first, so `a` can take its room.
        unsafe {
            raw.free_block(hb, b, 1000);
            let usable = raw
                .resize_in_place(ha, a, 1000, 1900, 1900)
                .expect("grows in place");
            assert!(usable >= 1900);
            assert_eq!(raw.stats().bytes_requested, 1900);
            // Shrinking in place always works for a medium block.
            assert!(raw.resize_in_place(ha, a, 1900, 700, 700).is_some());
            raw.validate();
            raw.free_block(ha, a, 700);
        }
        assert_eq!(raw.stats().bytes_in_use, 0);
    }

    #[test]
    fn a_medium_block_grows_backward_into_its_free_predecessor() {
        let raw = RawHeap::new();
        let [a, b, c, d] = [1000, 3000, 1000, 1000].map(|n| raw.alloc_block(n, ALIGNMENT).unwrap());
        let (hb, b_ptr) = raw.find_own_block(b.ptr, "test");
        let (_, c_ptr) = raw.find_own_block(c.ptr, "test");
        // SAFETY: each block is live and requested with the size given;
        // `b` and `d` are freed once; `c` is used at its new place only.
        unsafe {
            c_ptr.as_ptr().write_bytes(0xc5, 1000);
            raw.free_block(hb, b_ptr, 3000);
            // Too big for the free predecessor (3000) and `c` together,
            // with `d` used: no claim, nothing changed.
            assert!(raw.grow_backward(hb, c_ptr, 1000, 5000, 5000).is_none());
            raw.validate();
            // `b` and `c` hold 4000: `c` moves down onto `b`'s start.
            let (moved, usable) = raw
                .grow_backward(hb, c_ptr, 1000, 3900, 3900)
                .expect("takes the free predecessor");
            assert_eq!(moved, b_ptr);
            assert_eq!(usable, 3904, "fitted exactly, rounded to 16");
            assert!(
                core::slice::from_raw_parts(moved.as_ptr(), 1000)
                    .iter()
                    .all(|&x| x == 0xc5)
            );
            assert_eq!(raw.stats().bytes_requested, 1000 + 3900 + 1000);
            assert_eq!(raw.stats().medium_blocks, 3);
            raw.validate();
            // Free `a` and the moved block: `d`'s predecessor is free from
            // the chunk's start, its successor is the free tail; growing
            // `d` takes all three.
            let (hd, d_ptr) = raw.find_own_block(d.ptr, "test");
            let (ha, a_ptr) = raw.find_own_block(a.ptr, "test");
            raw.free_block(ha, a_ptr, 1000);
            raw.free_block(hb, moved, 3900);
            let (grown, usable) = raw
                .grow_backward(hd, d_ptr, 1000, 64 << 10, 64 << 10)
                .expect("takes predecessor and successor");
            assert_eq!(grown, a_ptr);
            assert_eq!(usable, 64 << 10);
            raw.validate();
            raw.free_block(hd, grown, 64 << 10);
        }
        let s = raw.stats();
        assert_eq!(
            (s.bytes_in_use, s.bytes_requested, s.medium_blocks),
            (0, 0, 0)
        );
    }

    #[test]
    #[cfg(not(feature = "valgrind"))] // no moves onto themselves there
    fn resize_moves_a_block_down_into_free_space_before_it() {
        let raw = RawHeap::new();
        // SAFETY: blocks from this heap's `malloc`, freed once, `q` used at
        // its new place only.
        unsafe {
            let p = raw.malloc(4000);
            let q = raw.malloc(2000);
            let r = raw.malloc(2000);
            for i in 0..2000 {
                q.add(i).write(i as u8);
            }
            raw.free(p);
            let moved = raw.resize(q, 5000);
            assert_eq!(moved, p, "the freed predecessor is reused");
            assert!((0..2000).all(|i| moved.add(i).read() == i as u8));
            assert_eq!(raw.usable_size(NonNull::new(moved).unwrap()), 5008);
            assert_eq!(raw.stats().bytes_requested, 5008 + 2000);
            raw.validate();
            raw.free(moved);
            raw.free(r);
        }
        assert_eq!(raw.stats().bytes_in_use, 0);
    }

    #[test]
    fn a_bounded_heap_refuses_cleanly() {
        let raw: RawHeap = RawHeap::with_source_and_limit(OsPages, 2 * MEDIUM_CHUNK_SIZE);
        assert!(raw.alloc_block(3 * MEDIUM_CHUNK_SIZE, ALIGNMENT).is_none());
        let p = raw.alloc_block(1000, ALIGNMENT).unwrap().ptr;
        assert!(
            raw.alloc_block(MEDIUM_CHUNK_SIZE + CHUNK_SIZE, ALIGNMENT)
                .is_none()
        );
        assert!(raw.stats().bytes_mapped <= 2 * MEDIUM_CHUNK_SIZE);
        raw.set_limit(usize::MAX);
        let q = raw
            .alloc_block(MEDIUM_CHUNK_SIZE + CHUNK_SIZE, ALIGNMENT)
            .unwrap()
            .ptr;
        for (p, n) in [(p, 1000), (q, MEDIUM_CHUNK_SIZE + CHUNK_SIZE)] {
            let (h, p) = raw.find_own_block(p, "test");
            // SAFETY: live blocks of `raw`, freed once.
            unsafe { raw.free_block(h, p, n) };
        }
        raw.validate();
    }

    /// Counts what a heap asks of its page source (the OS's pages).
    #[derive(Default)]
    struct Counting {
        maps: AtomicUsize,
        unmaps: AtomicUsize,
        purges: AtomicUsize,
        remaps: AtomicUsize,
    }

    impl Counting {
        fn counts(&self) -> [usize; 4] {
            [&self.maps, &self.unmaps, &self.purges, &self.remaps]
                .map(|c| c.load(Ordering::Relaxed))
        }
    }

    // SAFETY: forwards every call to `OsPages`, which upholds the contract.
    unsafe impl PageSource for &Counting {
        fn map(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
            self.maps.fetch_add(1, Ordering::Relaxed);
            OsPages.map(size, align)
        }
        unsafe fn unmap(&self, ptr: NonNull<u8>, size: usize, align: usize) {
            self.unmaps.fetch_add(1, Ordering::Relaxed);
            // SAFETY: forwarded contract.
            unsafe { OsPages.unmap(ptr, size, align) }
        }
        unsafe fn purge(&self, ptr: NonNull<u8>, size: usize) -> bool {
            self.purges.fetch_add(1, Ordering::Relaxed);
            // SAFETY: forwarded contract.
            unsafe { OsPages.purge(ptr, size) }
        }
        unsafe fn remap(
            &self,
            ptr: NonNull<u8>,
            old_size: usize,
            new_size: usize,
            align: usize,
            accept: &mut dyn FnMut(NonNull<u8>) -> bool,
        ) -> Option<NonNull<u8>> {
            self.remaps.fetch_add(1, Ordering::Relaxed);
            // SAFETY: forwarded contract.
            unsafe { OsPages.remap(ptr, old_size, new_size, align, accept) }
        }
    }

    /// Frees a block of `raw` requested with `size` bytes.
    fn free<S: PageSource>(raw: &RawHeap<S>, p: NonNull<u8>, size: usize) {
        let (h, p) = raw.find_own_block(p, "test");
        // SAFETY: a live block of `raw` requested with `size`, freed once
        // (the tests' own blocks).
        unsafe { raw.free_block(h, p, size) };
    }

    /// A huge request: a chunk past the medium range.
    const HUGE: usize = MEDIUM_MAX + CHUNK_SIZE;

    /// The byte a test pattern puts at `i`.
    fn mark(i: usize) -> u8 {
        (i as u8) ^ ((i >> 16) as u8) ^ 0x5A
    }

    #[test]
    fn large_free_medium_blocks_are_purged_once_free_over_a_delay() {
        let raw = RawHeap::new();
        let shard = 0;
        let alloc = |n| raw.alloc_block_in(n, ALIGNMENT, shard).unwrap().ptr;
        // `idle` is freed and left so, `reused` is freed and taken again
        // between the checks; small blocks keep them apart.
        let anchor = alloc(1000);
        let idle = alloc(MEDIUM_PURGE_MIN);
        let spacer = alloc(1000);
        let reused = alloc(2 * MEDIUM_PURGE_MIN);
        let guard = alloc(1000);
        // The checks' own calls reuse this hole, touching neither block.
        let hole = alloc(1000);
        let last = alloc(1000);
        free(&raw, hole, 1000);
        // A page well inside each: past the header, links and mark.
        let probe = MEDIUM_PURGE_MIN / 2;
        // SAFETY: live blocks of at least `probe + 1` bytes.
        unsafe {
            idle.as_ptr().add(probe).write(7);
            reused.as_ptr().add(probe).write(7);
        }
        free(&raw, idle, MEDIUM_PURGE_MIN);
        free(&raw, reused, 2 * MEDIUM_PURGE_MIN);
        // The shard reads its clock every `PURGE_CHECK_INTERVAL` calls
        // (and the clock lags by a tick or two).
        // Whether the calls took under half the delay: else two checks may
        // have fallen in one, and only the end state is checkable.
        let check = || {
            std::thread::sleep(PURGE_DELAY * 3);
            let started = std::time::Instant::now();
            for _ in 0..2 * PURGE_CHECK_INTERVAL {
                free(&raw, alloc(1000), 1000);
            }
            started.elapsed() < PURGE_DELAY / 2
        };
        // Both are aged at the first check...
        let quick = check();
        // SAFETY: inside a free block of a live chunk: mapped memory.
        let idle_byte = unsafe { idle.as_ptr().add(probe).read() };
        assert!(idle_byte == 7 || !quick, "aged only");
        // ... `reused` is taken again (the smallest list that fits holds
        // it), so it starts young...
        let again = alloc(3 * MEDIUM_PURGE_MIN / 2);
        assert_eq!(again, reused);
        // ... and the next check purges only `idle`.
        let quick = quick & check();
        // SAFETY: as above; `again` is live.
        unsafe {
            if cfg!(all(target_os = "linux", not(miri))) {
                assert_eq!(idle.as_ptr().add(probe).read(), 0, "purged");
            }
            let kept = again.as_ptr().add(probe).read();
            assert!(kept == 7 || !quick, "kept its pages");
        }
        raw.validate();
        free(&raw, again, 3 * MEDIUM_PURGE_MIN / 2);
        for p in [anchor, spacer, guard, last] {
            free(&raw, p, 1000);
        }
        assert_eq!(raw.stats().bytes_in_use, 0);
    }

    #[test]
    fn a_spill_into_an_empty_chunk_purges_free_blocks_it_could_not_use() {
        let pages = Counting::default();
        let raw = RawHeap::<&Counting>::with_source(&pages);
        let alloc = |n| raw.alloc_block_in(n, ALIGNMENT, 0).unwrap().ptr;
        const MIB: usize = 1 << 20;
        // One chunk: `x` (2 MiB), then 12 MiB in use, then a free tail of
        // just under 2 MiB. With `x` freed, no free block holds 3 MiB.
        let anchor = alloc(1000);
        let x = alloc(2 * MIB);
        let fillers = [(); 3].map(|_| alloc(MEDIUM_MAX));
        let probe = MIB;
        // SAFETY: a live block of 2 MiB.
        unsafe { x.as_ptr().add(probe).write(7) };
        free(&raw, x, 2 * MIB);
        let [maps, _, purges, _] = pages.counts();
        assert_eq!(purges, 0, "freed just now: not aged");
        // The spill: a new chunk, and the first chunk's free blocks (`x`
        // and the tail, the largest first, up to 3 MiB) give back their
        // pages; the new chunk's remainder, about to be used, does not.
        let big = alloc(3 * MIB);
        let [maps_after, _, purges_after, _] = pages.counts();
        assert_eq!(maps_after, maps + 1, "a new chunk");
        assert_eq!(purges_after, 2, "`x` and the first chunk's tail");
        if cfg!(all(target_os = "linux", not(miri))) {
            // SAFETY: inside a free block of a live chunk: mapped memory.
            assert_eq!(unsafe { x.as_ptr().add(probe).read() }, 0, "purged");
        }
        raw.validate();
        free(&raw, big, 3 * MIB);
        for p in fillers {
            free(&raw, p, MEDIUM_MAX);
        }
        free(&raw, anchor, 1000);
        assert_eq!(raw.stats().bytes_in_use, 0);
    }

    #[test]
    fn a_freed_huge_mapping_is_kept_and_reused_without_a_map() {
        let pages = Counting::default();
        let raw = RawHeap::<&Counting>::with_source(&pages);
        // Over twice the smallest huge request, which must not take it.
        let size = 3 * MEDIUM_MAX;
        let a = raw.alloc_block(size, ALIGNMENT).unwrap();
        assert!(a.zeroed);
        // SAFETY: a live block of `size` bytes.
        unsafe { a.ptr.as_ptr().write_bytes(0xAB, size) };
        free(&raw, a.ptr, size);
        let s = raw.stats();
        assert_eq!(pages.counts()[..2], [1, 0], "kept, not unmapped");
        assert!(
            s.huge_cached_bytes > size && s.bytes_mapped == s.huge_cached_bytes,
            "{s:?}"
        );
        assert_eq!((s.huge_blocks, s.bytes_in_use), (0, 0));
        raw.validate();
        // A smaller request that the mapping holds without wasting half of
        // it takes it: no new mapping.
        let smaller = size - CHUNK_SIZE / 2;
        let b = raw.alloc_block(smaller, ALIGNMENT).unwrap();
        assert_eq!(pages.counts()[..2], [1, 0]);
        assert_eq!(b.ptr, a.ptr, "the same mapping, at the same offset");
        assert!(!b.zeroed, "the old contents were not purged yet");
        let s = raw.stats();
        assert_eq!((s.huge_cached_bytes, s.huge_blocks), (0, 1));
        // SAFETY: a live block of `raw`.
        assert!(unsafe { raw.usable_size(b.ptr) } >= smaller);
        raw.validate();
        // A request more than twice as large maps anew.
        free(&raw, b.ptr, smaller);
        let c = raw.alloc_block(3 * size, ALIGNMENT).unwrap();
        assert_eq!(pages.counts()[..2], [2, 0]);
        free(&raw, c.ptr, 3 * size);
        // And a request less than half as large does not take it either.
        let d = raw.alloc_block(MEDIUM_MAX + 1, ALIGNMENT).unwrap();
        assert_eq!(pages.counts()[..2], [3, 0]);
        free(&raw, d.ptr, MEDIUM_MAX + 1);
        raw.validate();
        assert_eq!(raw.stats().huge_cached_bytes, raw.stats().bytes_mapped);
    }

    #[test]
    fn trim_unmaps_the_cached_huge_mappings() {
        let pages = Counting::default();
        let raw = RawHeap::<&Counting>::with_source(&pages);
        let sizes = [HUGE, 2 * HUGE];
        for size in sizes {
            let p = raw.alloc_block(size, ALIGNMENT).unwrap().ptr;
            free(&raw, p, size);
        }
        assert!(raw.stats().huge_cached_bytes > sizes.iter().sum());
        raw.trim();
        let s = raw.stats();
        assert_eq!((s.huge_cached_bytes, s.bytes_mapped), (0, 0));
        assert_eq!(pages.counts()[..2], [2, 2]);
        raw.validate();
    }

    #[test]
    fn the_huge_cache_is_bounded_in_mappings_and_bytes() {
        let pages = Counting::default();
        let raw = RawHeap::<&Counting>::with_source(&pages);
        let size = HUGE;
        let n = HUGE_CACHE_MAPPINGS + 2;
        let blocks: Vec<_> = (0..n)
            .map(|_| raw.alloc_block(size, ALIGNMENT).unwrap().ptr)
            .collect();
        for p in blocks {
            free(&raw, p, size);
        }
        let s = raw.stats();
        let map_size = (size + CHUNK_HEADER_SIZE).next_multiple_of(page_size()) + huge_guard();
        assert_eq!(s.huge_cached_bytes, HUGE_CACHE_MAPPINGS * map_size);
        assert_eq!(pages.counts()[..2], [n, 2], "the two oldest were unmapped");
        raw.validate();
        if cfg!(not(miri)) {
            // A mapping over the byte bound is unmapped at once.
            let big = HUGE_CACHE_BYTES + CHUNK_SIZE;
            let p = raw.alloc_block(big, ALIGNMENT).unwrap().ptr;
            free(&raw, p, big);
            assert_eq!(pages.counts()[..2], [n + 1, 3]);
            // Large ones evict the oldest to stay within the byte bound.
            let large = HUGE_CACHE_BYTES / 3;
            let blocks: Vec<_> = (0..3)
                .map(|_| raw.alloc_block(large, ALIGNMENT).unwrap().ptr)
                .collect();
            for p in blocks {
                free(&raw, p, large);
            }
            let s = raw.stats();
            assert!(s.huge_cached_bytes <= HUGE_CACHE_BYTES, "{s:?}");
            assert!(s.huge_cached_bytes >= 2 * large, "{s:?}");
            raw.validate();
        }
    }

    #[test]
    fn cached_huge_mappings_are_purged_after_the_delay() {
        let pages = Counting::default();
        let raw = RawHeap::<&Counting>::with_source(&pages);
        let size = HUGE;
        let a = raw.alloc_block(size, ALIGNMENT).unwrap().ptr;
        // SAFETY: a live block of `size` bytes.
        unsafe { a.as_ptr().write_bytes(0xAB, size) };
        free(&raw, a, size);
        assert_eq!(pages.counts()[2], 0, "not purged at once");
        // The purge clock lags by a tick or two (`Stamp`; 10 ms a tick at
        // most).
        std::thread::sleep(PURGE_DELAY * 3);
        // The next huge operation purges it (without taking it: too small).
        let big = raw.alloc_block(4 * size, ALIGNMENT).unwrap().ptr;
        assert_eq!(pages.counts()[2], 1, "purged once the delay passed");
        free(&raw, big, 4 * size);
        assert_eq!(pages.counts()[2], 1, "the fresh one waits");
        assert!(raw.stats().huge_cached_bytes > 5 * size, "both still kept");
        // The purged mapping is reused; where the source says purged pages
        // read zero (Linux), the block says so and does.
        let b = raw.alloc_block(size, ALIGNMENT).unwrap();
        assert_eq!(b.ptr, a, "the purged mapping is reused");
        assert_eq!(pages.counts()[0], 2);
        if cfg!(all(target_os = "linux", not(miri))) {
            assert!(b.zeroed);
        }
        if b.zeroed {
            // SAFETY: a live block of `size` bytes.
            let bytes = unsafe { core::slice::from_raw_parts(b.ptr.as_ptr(), size) };
            assert!(bytes.iter().step_by(4096).all(|&x| x == 0));
        }
        free(&raw, b.ptr, size);
        raw.validate();
    }

    #[test]
    fn cached_huge_mappings_keep_their_pages_up_to_a_resident_budget() {
        let pages = Counting::default();
        let raw = RawHeap::<&Counting>::with_source(&pages);
        // Two fit in HUGE_CACHE_RESIDENT, three do not.
        let size = (HUGE_CACHE_RESIDENT * 3 / 8).next_multiple_of(CHUNK_SIZE);
        assert!(2 * size <= HUGE_CACHE_RESIDENT && 3 * size <= HUGE_CACHE_BYTES);
        let blocks: Vec<_> = (0..3)
            .map(|_| raw.alloc_block(size, ALIGNMENT).unwrap().ptr)
            .collect();
        for (i, &b) in blocks.iter().enumerate() {
            free(&raw, b, size);
            // Cached mappings that still hold their pages stay within
            // HUGE_CACHE_RESIDENT: two fit, the third is purged as it is
            // cached (or earlier ones were, if the purge delay passed
            // meanwhile, as under Miri).
            let core = raw.core.lock();
            let resident: usize = core.huge_cache[..core.huge_cached]
                .iter()
                .filter(|c| c.freed.is_some())
                .map(|c| c.size)
                .sum();
            assert!(resident <= HUGE_CACHE_RESIDENT, "after {} frees", i + 1);
        }
        assert!(pages.counts()[2] >= 1, "one of the three was purged");
        assert!(raw.stats().huge_cached_bytes >= 3 * size, "all three kept");
        raw.validate();
    }

    #[test]
    fn a_bounded_heap_drops_its_cached_huge_mappings_before_failing() {
        let pages = Counting::default();
        let raw = RawHeap::<&Counting>::with_source_and_limit(&pages, HUGE + 3 * CHUNK_SIZE);
        let a = raw.alloc_block(HUGE, ALIGNMENT).unwrap().ptr;
        free(&raw, a, HUGE);
        assert!(raw.stats().huge_cached_bytes > HUGE);
        // Too large for the cached mapping, and the limit holds only one of
        // the two: the cached one goes.
        let b = raw
            .alloc_block(HUGE + CHUNK_SIZE, ALIGNMENT)
            .expect("the cached mapping makes room");
        let s = raw.stats();
        assert_eq!(s.huge_cached_bytes, 0);
        assert!(s.bytes_mapped <= HUGE + 3 * CHUNK_SIZE, "{s:?}");
        assert_eq!(pages.counts()[..2], [2, 1]);
        // Beyond the limit even without a cache: refused cleanly.
        assert!(raw.alloc_block(HUGE, ALIGNMENT).is_none());
        free(&raw, b.ptr, HUGE + CHUNK_SIZE);
        raw.validate();
    }

    #[test]
    fn a_huge_block_grows_and_shrinks_by_remapping_its_pages() {
        let pages = Counting::default();
        let raw = RawHeap::<&Counting>::with_source(&pages);
        let (small, large) = (HUGE, 10 * HUGE);
        let p = raw.alloc_block(small, 4096).unwrap().ptr;
        // SAFETY: a live block of `small` bytes.
        unsafe {
            (0..small)
                .step_by(512)
                .for_each(|i| p.as_ptr().add(i).write(mark(i)))
        };
        let (h, p) = raw.find_own_block(p, "test");
        // SAFETY: a live huge block of `raw` requested with `small` bytes.
        let grown = unsafe { raw.realloc_huge(h, p, small, large, 4096) };
        let remaps = pages.counts()[3];
        assert_eq!(remaps, 1);
        if cfg!(not(all(target_os = "linux", not(miri)))) {
            assert!(grown.is_none(), "no remap here: the block stays");
            free(&raw, p, small);
            return;
        }
        let (q, usable) = grown.expect("mremap grows the block");
        assert!(usable >= large && q.as_ptr().addr() % 4096 == 0);
        raw.validate();
        let s = raw.stats();
        assert!(s.bytes_mapped >= large && s.bytes_mapped < large + 2 * CHUNK_SIZE);
        assert_eq!((s.bytes_requested, s.bytes_in_use), (large, usable));
        // SAFETY: a live block of `large` bytes, whose first `small` were
        // kept and the rest read zero.
        unsafe {
            for i in (0..small).step_by(512) {
                assert_eq!(q.as_ptr().add(i).read(), mark(i));
            }
            for i in (small..large).step_by(4096) {
                assert_eq!(q.as_ptr().add(i).read(), 0);
            }
            q.as_ptr().add(large - 1).write(7);
        }
        // Shrinking by more than half drops the tail in place.
        let (h, q) = raw.find_own_block(q, "test");
        // SAFETY: a live huge block requested with `large` bytes.
        let (r, usable) = unsafe { raw.realloc_huge(h, q, large, small + 1, 16) }.unwrap();
        assert_eq!(r, q, "a shrink stays in place");
        assert!(usable > small && usable < small + 2 * page_size());
        raw.validate();
        assert!(raw.stats().bytes_mapped <= small + 3 * page_size());
        assert!(ARENA_MAP.lookup(q.as_ptr().addr() + large - 1).is_none());
        // SAFETY: the kept part of the block.
        unsafe {
            for i in (0..small).step_by(512) {
                assert_eq!(r.as_ptr().add(i).read(), mark(i));
            }
        }
        free(&raw, r, small + 1);
        raw.validate();
        assert_eq!(raw.stats().bytes_in_use, 0);
    }
}
