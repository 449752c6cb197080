//! Layer 1: the raw heap. Thread-safe; serves every request too large for
//! the pools, hands arena chunks to layer 2, and keeps the byte accounting.
//!
//! * **Medium** requests (up to `MEDIUM_MAX` bytes, alignment up to
//!   `MEDIUM_MAX_ALIGN`) come from a TLSF allocator ([`crate::raw::medium`]) over
//!   `MEDIUM_CHUNK_SIZE` chunks, so they cost no system call. One wholly free
//!   medium chunk is kept; further ones are unmapped.
//! * **Huge** requests get a mapping of their own, unmapped on free. The
//!   chunk header sits at the mapping's base; the block starts at the first
//!   suitably aligned offset after it.
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
    ALIGNMENT, ARENA_SIZE, CHUNK_SIZE, MEDIUM_CHUNK_SIZE, MEDIUM_MAX, MEDIUM_MAX_ALIGN,
};
use crate::lock::{ForkSafe, SpinLock};
use crate::os::{OsPages, PageSource, checked_align_up, page_size};
use crate::raw::chunk::{CHUNK_HEADER_SIZE, ChunkHeader, ChunkKind};
use crate::raw::map::ARENA_MAP;
use core::alloc::Layout;
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::{AtomicUsize, Ordering};
use medium::Tlsf;
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

/// Layer-1 state, under the raw heap's lock.
pub(crate) struct RawCore {
    tlsf: Tlsf,
    /// Every chunk of this heap, doubly linked through the chunk headers.
    chunks: *mut ChunkHeader,
    /// Since when some medium chunk has been kept wholly free without its
    /// pages being purged (`None`: since the last purge, none has been).
    spare_since: Option<std::time::Instant>,
    /// Medium operations so far (wrapping); the clock is read on every
    /// `PURGE_CHECK_INTERVAL`-th only.
    ops: u32,
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
    /// This heap's identity, stamped on every chunk it maps and used by
    /// [`PrivateHeap`](crate::PrivateHeap) as its key in threads' caches of
    /// thread heaps: 0 until first needed, then unique in the process and
    /// never changed (a value, so the heap may move before that).
    id: AtomicUsize,
    /// Most bytes the heap may have mapped from the OS at once
    /// (`usize::MAX`: unbounded). Invariant, under the lock:
    /// `stats.bytes_mapped <= limit` after every `map_chunk`.
    limit: AtomicUsize,
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
                    tlsf: Tlsf::new(),
                    chunks: null_mut(),
                    spare_since: None,
                    ops: 0,
                    stats: RawStats {
                        bytes_requested: 0,
                        bytes_mapped: 0,
                        bytes_in_use: 0,
                        medium_blocks: 0,
                        huge_blocks: 0,
                        medium_chunks: 0,
                        arena_chunks: 0,
                        bytes_cached: 0,
                    },
                },
            ),
            id: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
        }
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
    }

    /// Gives back to the OS what layer 1 holds but does not use: the spare
    /// wholly free medium chunk is unmapped, and the whole pages inside
    /// free medium blocks are purged.
    pub fn trim(&self) {
        let mut core = self.core.lock();
        while let Some(chunk) = core.tlsf.any_empty_chunk() {
            // SAFETY: the chunk is wholly free and registered; nothing refers
            // to it once taken out of the index.
            unsafe {
                core.tlsf.take_empty_chunk(chunk);
                self.unmap_chunk(&mut core, chunk.cast());
            }
            core.stats.medium_chunks -= 1;
        }
        core.tlsf
            .for_each_free_block(|start, end| self.purge_free_range(start, end));
        core.spare_since = None;
    }

    /// Purges the whole pages of `start..end`, the part of a free medium
    /// block past its header and links.
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

    /// Purges the pages of the kept wholly free medium chunk once one has
    /// been kept for `PURGE_DELAY`. Checked on medium allocations and frees,
    /// reading the clock on one call in `PURGE_CHECK_INTERVAL` while a chunk
    /// waits, so steady churn pays neither a clock read per call nor a purge
    /// per pair.
    #[inline]
    fn purge_spare_chunk(&self, core: &mut RawCore) {
        core.ops = core.ops.wrapping_add(1);
        if core.spare_since.is_some() && core.ops.is_multiple_of(PURGE_CHECK_INTERVAL) {
            self.purge_spare_chunk_slow(core);
        }
    }

    #[cold]
    fn purge_spare_chunk_slow(&self, core: &mut RawCore) {
        let Some(since) = core.spare_since else {
            return;
        };
        if since.elapsed() < crate::config::PURGE_DELAY {
            return;
        }
        core.spare_since = None;
        if let Some(chunk) = core.tlsf.any_empty_chunk() {
            let start = chunk
                .as_ptr()
                .wrapping_add(CHUNK_HEADER_SIZE + medium::MIN_BLOCK);
            self.purge_free_range(
                start,
                chunk.as_ptr().addr() + MEDIUM_CHUNK_SIZE - medium::HEADER,
            );
        }
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
        self.core.lock().stats
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
        if Self::is_medium(size, align) {
            self.alloc_medium(size, align)
        } else {
            self.alloc_huge(size, align)
        }
    }

    fn alloc_medium(&self, size: usize, align: usize) -> Option<RawBlock> {
        self.alloc_medium_as(size, size, align)
    }

    /// A medium block of `size` bytes at `align`, counted as a request of
    /// `requested` bytes (thread caches allocate whole bins).
    pub(crate) fn alloc_medium_as(
        &self,
        requested: usize,
        size: usize,
        align: usize,
    ) -> Option<RawBlock> {
        debug_assert!(Self::is_medium(size, align));
        let mut core = self.core.lock();
        self.purge_spare_chunk(&mut core);
        let (ptr, usable) = match core.tlsf.allocate(size, align) {
            Some(found) => found,
            None => {
                let chunk =
                    self.map_chunk(&mut core, ChunkKind::Medium, MEDIUM_CHUNK_SIZE, CHUNK_SIZE)?;
                core.stats.medium_chunks += 1;
                // SAFETY: the chunk was just mapped for the medium allocator.
                unsafe { core.tlsf.add_chunk(chunk.cast()) };
                core.tlsf.allocate(size, align)?
            }
        };
        core.stats.bytes_in_use += usable;
        core.stats.bytes_requested = core.stats.bytes_requested.wrapping_add(requested);
        core.stats.medium_blocks += 1;
        Some(RawBlock { ptr, zeroed: false })
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
        let map_size = checked_align_up(offset.checked_add(size)?, page_size())?;
        if map_size > isize::MAX as usize {
            return None;
        }
        let mut core = self.core.lock();
        let header = self.map_chunk(&mut core, ChunkKind::Huge, map_size, align.max(CHUNK_SIZE))?;
        let usable = map_size - offset;
        core.stats.bytes_in_use += usable;
        core.stats.bytes_requested = core.stats.bytes_requested.wrapping_add(size);
        core.stats.huge_blocks += 1;
        // SAFETY: `offset < map_size`, inside the mapping.
        let ptr = unsafe { header.cast::<u8>().add(offset) };
        Some(RawBlock { ptr, zeroed: true })
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
        let mut core = self.core.lock();
        // Wrapping: a block that went through a thread's medium cache is
        // counted there (see `PrivateHeap::stats`).
        core.stats.bytes_requested = core.stats.bytes_requested.wrapping_sub(size);
        // SAFETY: `header` is a live chunk of ours (caller).
        match unsafe { (*header.as_ptr()).kind } {
            ChunkKind::Medium => {
                // SAFETY: a live medium block (caller).
                let usable = unsafe { medium::usable_size(ptr) };
                core.stats.bytes_in_use -= usable;
                core.stats.medium_blocks -= 1;
                // SAFETY: as above; freed once.
                if let Some(chunk) = unsafe { core.tlsf.free(ptr) } {
                    if core.tlsf.empty_chunks > 1 {
                        // SAFETY: the chunk is wholly free and registered.
                        unsafe {
                            core.tlsf.take_empty_chunk(chunk);
                            self.unmap_chunk(&mut core, chunk.cast());
                        }
                        core.stats.medium_chunks -= 1;
                    } else if core.spare_since.is_none() {
                        core.spare_since = Some(std::time::Instant::now());
                    }
                }
                self.purge_spare_chunk(&mut core);
            }
            ChunkKind::Huge => {
                // SAFETY: a live huge block (caller).
                core.stats.bytes_in_use -= unsafe { Self::block_usable_size(header, ptr) };
                core.stats.huge_blocks -= 1;
                // SAFETY: the block was the chunk's only content.
                unsafe { self.unmap_chunk(&mut core, header) };
            }
            ChunkKind::Arena => {
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
        unsafe {
            let h = &*header.as_ptr();
            match h.kind {
                ChunkKind::Medium => medium::usable_size(ptr),
                ChunkKind::Huge => h.base_addr() + h.size - ptr.as_ptr().addr(),
                ChunkKind::Arena => {
                    crate::fatal::bad_pointer("layer 1 size of a small block", ptr.as_ptr())
                }
            }
        }
    }

    /// Resizes a medium or huge block in place to hold `size` bytes, if it
    /// can stay where it is without wasting much; returns its new usable
    /// size.
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
    ) -> Option<usize> {
        // SAFETY: `header` is a live chunk of ours (caller).
        match unsafe { (*header.as_ptr()).kind } {
            ChunkKind::Medium if size <= MEDIUM_MAX => {
                let mut core = self.core.lock();
                // SAFETY: a live medium block (caller).
                let old = unsafe { medium::usable_size(ptr) };
                // SAFETY: as above.
                let new = unsafe { core.tlsf.resize_in_place(ptr, size) }?;
                core.stats.bytes_in_use = core.stats.bytes_in_use - old + new;
                core.stats.bytes_requested = core
                    .stats
                    .bytes_requested
                    .wrapping_sub(old_size)
                    .wrapping_add(size);
                Some(new)
            }
            ChunkKind::Huge if size > MEDIUM_MAX => {
                // SAFETY: a live huge block (caller).
                let usable = unsafe { Self::block_usable_size(header, ptr) };
                let fits = size <= usable && size > usable / 2;
                if fits {
                    let mut core = self.core.lock();
                    core.stats.bytes_requested = core
                        .stats
                        .bytes_requested
                        .wrapping_sub(old_size)
                        .wrapping_add(size);
                }
                fits.then_some(usable)
            }
            _ => None,
        }
    }

    /// Checks every invariant of layer 1 — the chunk list, the arena map's
    /// entries for it, every medium block, the free lists, the counters —
    /// and panics with a description on the first violation. O(blocks); for
    /// tests.
    pub fn validate(&self) {
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
            assert_eq!(
                core.tlsf.validate_lists(),
                free,
                "free blocks missing from the lists"
            );
        }
        let s = &core.stats;
        assert_eq!(s.bytes_mapped, mapped);
        assert_eq!(
            (s.arena_chunks, s.medium_chunks, s.huge_blocks),
            (arenas, medium_chunks, huge)
        );
        assert_eq!(s.medium_blocks, used);
        assert!(s.bytes_in_use >= used_bytes && (huge > 0 || s.bytes_in_use == used_bytes));
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
        let total = core.stats.bytes_mapped.checked_add(size)?;
        if total > self.limit.load(Ordering::Relaxed) {
            return None;
        }
        let base = if kind == ChunkKind::Arena {
            debug_assert!(size == ARENA_SIZE && align == ARENA_SIZE);
            self.source.map_arena()?
        } else {
            self.source.map(size, align)?
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
        // SAFETY: `header` and the current list head are live chunk headers,
        // and we hold the lock that guards the list.
        unsafe {
            (*header.as_ptr()).next = core.chunks;
            if !core.chunks.is_null() {
                (*core.chunks).prev = header.as_ptr();
            }
        }
        core.chunks = header.as_ptr();
        core.stats.bytes_mapped += size;
        Some(header)
    }

    /// Unlinks, unregisters and unmaps a chunk.
    ///
    /// # Safety
    ///
    /// `header` is a chunk of this heap (on `core.chunks`) that nothing uses.
    unsafe fn unmap_chunk(&self, core: &mut RawCore, header: NonNull<ChunkHeader>) {
        // SAFETY: `header` and its list neighbours are live chunk headers.
        let (kind, size, align) = unsafe {
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
            s.bytes_mapped <= MEDIUM_CHUNK_SIZE,
            "a huge block is unmapped at once"
        );
        raw.trim();
        assert_eq!(
            raw.stats().bytes_mapped,
            0,
            "trim unmaps the spare medium chunk"
        );
        raw.validate();
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
                .resize_in_place(ha, a, 1000, 1900)
                .expect("grows in place");
            assert!(usable >= 1900);
            assert_eq!(raw.stats().bytes_requested, 1900);
            // Shrinking in place always works for a medium block.
            assert!(raw.resize_in_place(ha, a, 1900, 700).is_some());
            raw.validate();
            raw.free_block(ha, a, 700);
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
}
