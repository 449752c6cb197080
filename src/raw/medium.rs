//! Layer 1's medium allocator: a two-level segregated fit (TLSF) over chunks
//! of `MEDIUM_CHUNK_SIZE` bytes.
//!
//! TLSF was chosen over size-classed page runs because medium blocks in Rust
//! are mostly `Vec`/`String` buffers whose sizes vary continuously: TLSF
//! wastes at most one block header per block (16 bytes) plus 1/16 of the size
//! in search rounding, finds a fit in O(1) with two bitmap scans, and coalesces
//! neighbours on free so a chunk whose blocks are all freed becomes one block
//! again and can be returned. Size classes would waste up to 12.5% per block
//! and need a page allocator underneath anyway.
//!
//! # Chunk layout
//!
//! ```text
//! | ChunkHeader (64 B) | block | block | ... | block | sentinel (16 B) |
//! ```
//!
//! Blocks are physically contiguous. Every block starts with a 16-byte
//! [`Block`] header (previous physical block, size, free flag and slack
//! flag); the payload follows it, so payloads are 16-aligned. A free block
//! also holds its free-list links in its first payload bytes, then its
//! heap's free mark. The sentinel is a used block of size 0 that ends the
//! chunk.
//!
//! Blocks of the default alignment are fitted exactly ([ref:exact-fit]):
//! a used block's usable size is its request rounded up to 16, the 16
//! bytes a split could not take kept as slack outside it.
//!
//! # Invariants
//!
//! * sizes are multiples of 16 and at least [`MIN_BLOCK`] (sentinel: 0);
//! * only used blocks carry the slack flag;
//! * `next_phys(b) == b + size(b)` and `prev_phys(next_phys(b)) == b`;
//! * no two physically adjacent blocks are both free (free coalesces);
//! * a block is in free list `(fl, sl) == mapping(size)` iff it is free, and
//!   bit `sl` of `sl_bitmap[fl]` (and bit `fl` of `fl_bitmap`) is set iff
//!   that list is non-empty.

use crate::config::{
    ALIGNMENT, MEDIUM_CACHE_BIN_STEPS, MEDIUM_CACHE_MAX, MEDIUM_CHUNK_SIZE, MEDIUM_PURGE_MIN,
    SMALL_REQUEST_THRESHOLD,
};
use crate::raw::chunk::CHUNK_HEADER_SIZE;
use core::ptr::{NonNull, null_mut};

const SL_BITS: u32 = 4;
const SL_COUNT: usize = 1 << SL_BITS;
/// Sizes below this are binned linearly in list 0.
const LINEAR_LIMIT: usize = SL_COUNT * ALIGNMENT;
const LINEAR_SHIFT: u32 = LINEAR_LIMIT.trailing_zeros();
const FL_COUNT: usize = (MEDIUM_CHUNK_SIZE.trailing_zeros() - LINEAR_SHIFT + 1) as usize;
const _: () = assert!(FL_COUNT <= 32 && SL_COUNT <= 32);

/// Block header size; payloads start this far after their header.
pub(crate) const HEADER: usize = 16;
/// Smallest block: header plus the two free-list links.
pub(crate) const MIN_BLOCK: usize = 2 * ALIGNMENT;
const _: () = assert!(HEADER + size_of::<FreeLinks>() <= MIN_BLOCK);
const FREE: usize = 1;
/// A used block whose last `ALIGNMENT` bytes are not part of its payload:
/// fitting it exactly left them over, too few to split off as a block
/// ([ref:exact-fit]).
const SLACK: usize = 2;
/// A free block that was free at the last aging of its list
/// ([`Tlsf::age_free_blocks`]).
const AGED: usize = 4;
/// A free block whose pages were purged since it was freed.
const PURGED: usize = 8;
const _: () = assert!(ALIGNMENT > PURGED);
const SIZE_MASK: usize = !(ALIGNMENT - 1);
const _: () = assert!(ALIGNMENT > SLACK && MIN_BLOCK == HEADER + ALIGNMENT);
/// Size of the single free block of an empty chunk.
pub(crate) const CHUNK_BLOCK: usize = MEDIUM_CHUNK_SIZE - CHUNK_HEADER_SIZE - HEADER;

const _: () = assert!(size_of::<Block>() <= HEADER && HEADER.is_multiple_of(ALIGNMENT));
const _: () = assert!(CHUNK_BLOCK < 1 << (FL_COUNT as u32 + LINEAR_SHIFT - 1 + 1));

/// A block header. Free blocks continue with [`FreeLinks`].
#[repr(C)]
pub(crate) struct Block {
    /// The physically previous block, or null for a chunk's first block.
    prev_phys: *mut Block,
    /// Block size in bytes (header included), ORed with `FREE` or `SLACK`.
    size_flags: usize,
}

#[repr(C)]
struct FreeLinks {
    next: *mut Block,
    prev: *mut Block,
}

/// `(fl, sl)` list of a free block of `size` bytes.
#[inline]
fn mapping(size: usize) -> (usize, usize) {
    if size < LINEAR_LIMIT {
        (0, size / ALIGNMENT)
    } else {
        let m = usize::BITS - 1 - size.leading_zeros();
        let fl = (m - LINEAR_SHIFT + 1) as usize;
        let sl = (size >> (m - SL_BITS)) & (SL_COUNT - 1);
        (fl, sl)
    }
}

/// The first list whose every block is at least `size` bytes.
#[inline]
fn mapping_search(size: usize) -> (usize, usize) {
    if size < LINEAR_LIMIT {
        return mapping(size.next_multiple_of(ALIGNMENT));
    }
    let m = usize::BITS - 1 - size.leading_zeros();
    mapping(size + (1 << (m - SL_BITS)) - 1)
}

// Request bins [tag:bin-bound]. A medium request of the default alignment
// up to `MEDIUM_CACHE_MAX` bytes is served by a block holding exactly its
// bin's bound: allocation asks layer 1 for the bound, resizing in place
// keeps it, and layer 1 fits blocks of the default alignment exactly
// ([ref:exact-fit]). So every block of a bin serves every request of it,
// and a block freed with its request's size is known to hold that size's
// bound: the threads' medium caches take it without reading its header.

const BIN_STEP_BITS: u32 = MEDIUM_CACHE_BIN_STEPS.trailing_zeros();
/// First doubling of the bins: requests just above the small threshold.
const BIN_BASE_LOG: u32 = SMALL_REQUEST_THRESHOLD.trailing_zeros();
/// Request bins: `MEDIUM_CACHE_BIN_STEPS` per doubling of size.
pub(crate) const MEDIUM_BINS: usize =
    ((MEDIUM_CACHE_MAX.trailing_zeros() - BIN_BASE_LOG) * MEDIUM_CACHE_BIN_STEPS) as usize;

/// Bytes at the start of a free block that purging leaves in place: its
/// header, links and free mark.
const KEPT_WHEN_PURGED: usize = HEADER + MARK_OFFSET + size_of::<usize>();
const _: () = assert!(KEPT_WHEN_PURGED <= 48 && KEPT_WHEN_PURGED > HEADER + size_of::<FreeLinks>());

/// Where a freed medium block holds its heap's free mark
/// ([ref:free-mark]), in bytes from its payload: after the two words that
/// hold layer 1's free-list links, or a medium cache's link and size.
pub(crate) const MARK_OFFSET: usize = 2 * size_of::<usize>();
const _: () = assert!(MARK_OFFSET >= size_of::<FreeLinks>());

/// The bin of a request of `size` bytes (above the small threshold, at most
/// `MEDIUM_CACHE_MAX`) and the size to allocate for it: the bin's bound
/// ([ref:bin-bound]).
#[inline]
pub(crate) fn medium_bin(size: usize) -> Option<(usize, usize)> {
    if size <= SMALL_REQUEST_THRESHOLD || size > MEDIUM_CACHE_MAX {
        return None;
    }
    let r = size - 1;
    let log = usize::BITS - 1 - r.leading_zeros();
    let shift = log - BIN_STEP_BITS;
    // `MEDIUM_CACHE_BIN_STEPS` plus the step: the top bits of `r`.
    let top = r >> shift;
    let bin = ((log - BIN_BASE_LOG) * MEDIUM_CACHE_BIN_STEPS) as usize + top
        - MEDIUM_CACHE_BIN_STEPS as usize;
    Some((bin, (top + 1) << shift))
}

/// The request size bin `bin` serves up to (its blocks hold at least this).
#[inline]
pub(crate) const fn bin_bound(bin: usize) -> usize {
    let steps = MEDIUM_CACHE_BIN_STEPS as usize;
    let log = BIN_BASE_LOG + (bin as u32 >> BIN_STEP_BITS);
    (steps + (bin & (steps - 1)) + 1) << (log - BIN_STEP_BITS)
}

// Raw accessors. All take pointers to block headers inside a live medium
// chunk; callers hold the layer-1 lock.

/// Size of block `b`, header included.
///
/// # Safety
///
/// `b` is a block header in a live chunk.
#[inline]
unsafe fn size_of_block(b: *mut Block) -> usize {
    // SAFETY: `b` is a block header in a live chunk (module contract).
    unsafe { (*b).size_flags & SIZE_MASK }
}

/// Payload bytes of used block `b`: its size less the header and any
/// slack.
///
/// # Safety
///
/// `b` is a block header in a live chunk.
#[inline]
unsafe fn usable_of(b: *mut Block) -> usize {
    // SAFETY: as above.
    let flags = unsafe { (*b).size_flags };
    (flags & SIZE_MASK) - HEADER - if flags & SLACK != 0 { ALIGNMENT } else { 0 }
}

/// Whether block `b` is free.
///
/// # Safety
///
/// `b` is a block header in a live chunk.
#[inline]
unsafe fn is_free(b: *mut Block) -> bool {
    // SAFETY: as above.
    unsafe { (*b).size_flags & FREE != 0 }
}

/// The block after `b` in its chunk.
///
/// # Safety
///
/// `b` is a block header in a live chunk, not the chunk's end sentinel.
#[inline]
unsafe fn next_phys(b: *mut Block) -> *mut Block {
    // SAFETY: `b` is a non-sentinel block, so `b + size` is the next header
    // within the same chunk.
    unsafe { b.byte_add(size_of_block(b)) }
}

/// The free-list links of free block `b`, in its payload.
///
/// # Safety
///
/// `b` is a free block header in a live chunk (at least `MIN_BLOCK`
/// bytes).
#[inline]
unsafe fn links(b: *mut Block) -> *mut FreeLinks {
    // SAFETY: free blocks are at least MIN_BLOCK bytes, so the links fit.
    let links: *mut FreeLinks = unsafe { b.byte_add(HEADER).cast() };
    // The links live in a freed payload: accessible to the heap only.
    crate::valgrind::defined(links.cast(), size_of::<FreeLinks>());
    links
}

/// Header of the block whose payload starts at `payload`.
#[inline]
pub(crate) fn block_of(payload: NonNull<u8>) -> *mut Block {
    payload.as_ptr().wrapping_sub(HEADER).cast()
}

#[inline]
fn payload_of(b: *mut Block) -> NonNull<u8> {
    // SAFETY: block headers are never at address 0 - HEADER.
    unsafe { NonNull::new_unchecked(b.cast::<u8>().wrapping_add(HEADER)) }
}

/// Usable bytes of the used block whose payload is `payload`.
///
/// # Safety
///
/// `payload` was returned by [`Tlsf::allocate`] and not freed since.
pub(crate) unsafe fn usable_size(payload: NonNull<u8>) -> usize {
    // SAFETY: a live payload is preceded by its block header.
    unsafe { usable_of(block_of(payload)) }
}

/// Usable bytes of the block whose payload `payload` is being freed, after
/// checking that it is a live block: a block already free (its header
/// says so) is a double free, reported before anything is written. With
/// the `hardened` feature, the header must also be the one its physical
/// successor points back to (a pointer into a block, or a header
/// overwritten by an overflow, fails this).
///
/// # Safety
///
/// `payload` is a pointer into the live medium chunk at `chunk`, at least
/// `HEADER` bytes past its start, that the caller is freeing.
#[inline]
pub(crate) unsafe fn freed_usable_size(payload: NonNull<u8>, chunk: *const u8) -> usize {
    let b = block_of(payload);
    let _ = chunk;
    // SAFETY: caller's contract: `b` lies in a live chunk; a used block's
    // successor's back link is not written while the block is used.
    unsafe {
        let size = size_of_block(b);
        if is_free(b) {
            crate::fatal::misuse(
                payload.as_ptr(),
                size - HEADER,
                "medium",
                "is already free (double free)",
            )
        }
        #[cfg(feature = "hardened")]
        if !(MIN_BLOCK..=CHUNK_BLOCK).contains(&size)
            || b.addr() + size > chunk.addr() + MEDIUM_CHUNK_SIZE - HEADER
            || (*next_phys(b)).prev_phys.addr() != b.addr()
        {
            crate::fatal::misuse(
                payload.as_ptr(),
                size.saturating_sub(HEADER),
                "medium",
                "is not the start of a live block (an interior pointer, or its header was overwritten)",
            )
        }
        usable_of(b)
    }
}

/// The TLSF index over every medium chunk of one heap.
pub(crate) struct Tlsf {
    fl_bitmap: u32,
    sl_bitmap: [u32; FL_COUNT],
    heads: [[*mut Block; SL_COUNT]; FL_COUNT],
    /// Number of chunks whose only block is free.
    pub(super) empty_chunks: usize,
    /// The fewest wholly free chunks since `reset_empty_low`.
    empty_low: usize,
    /// A free, merge or shrink made a free block of `MEDIUM_PURGE_MIN`
    /// bytes or more (not a whole chunk) since `take_large_freed`.
    large_freed: bool,
    /// The wholly free chunk an allocation took since `take_took_empty`,
    /// if one did: the good fit found no block of a partly used chunk for
    /// it (a block just big enough may be passed over: the search rounds
    /// up to a list).
    took_empty: Option<NonNull<u8>>,
}

impl core::fmt::Debug for Tlsf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Tlsf")
            .field("fl_bitmap", &self.fl_bitmap)
            .finish_non_exhaustive()
    }
}

impl Tlsf {
    pub(crate) const fn new() -> Self {
        Self {
            fl_bitmap: 0,
            sl_bitmap: [0; FL_COUNT],
            heads: [[null_mut(); SL_COUNT]; FL_COUNT],
            empty_chunks: 0,
            empty_low: 0,
            large_freed: false,
            took_empty: None,
        }
    }

    /// Makes a freshly mapped chunk one free block.
    ///
    /// # Safety
    ///
    /// `chunk` points to `MEDIUM_CHUNK_SIZE` writable bytes, owned by this
    /// allocator from now until [`Tlsf::take_empty_chunk`] gives them back.
    pub(crate) unsafe fn add_chunk(&mut self, chunk: NonNull<u8>) {
        let first: *mut Block = chunk.as_ptr().wrapping_add(CHUNK_HEADER_SIZE).cast();
        // SAFETY: the chunk is ours (caller), and both headers lie inside it.
        unsafe {
            first.write(Block {
                prev_phys: null_mut(),
                size_flags: CHUNK_BLOCK | FREE,
            });
            next_phys(first).write(Block {
                prev_phys: first,
                size_flags: 0,
            });
            self.insert(first);
        }
        self.empty_chunks += 1;
    }

    /// If `b` spans a whole chunk, the chunk's base pointer.
    ///
    /// # Safety
    ///
    /// `b` is a block header in a live chunk.
    #[inline]
    unsafe fn whole_chunk(b: *mut Block) -> Option<NonNull<u8>> {
        // SAFETY: caller's contract.
        let (first, size) = unsafe { ((*b).prev_phys.is_null(), size_of_block(b)) };
        (first && size == CHUNK_BLOCK)
            .then(|| NonNull::new(b.cast::<u8>().wrapping_sub(CHUNK_HEADER_SIZE)))
            .flatten()
    }

    /// Puts free block `b` at the head of its list.
    ///
    /// # Safety
    ///
    /// `b` is a free block of a chunk of this index, on no list.
    unsafe fn insert(&mut self, b: *mut Block) {
        // SAFETY: caller's contract.
        let (fl, sl) = mapping(unsafe { size_of_block(b) });
        let head = self.heads[fl][sl];
        // SAFETY: `b` is a free block (links fit); `head` is null or a free
        // block of the same list.
        unsafe {
            links(b).write(FreeLinks {
                next: head,
                prev: null_mut(),
            });
            if !head.is_null() {
                (*links(head)).prev = b;
            }
        }
        self.heads[fl][sl] = b;
        self.fl_bitmap |= 1 << fl;
        self.sl_bitmap[fl] |= 1 << sl;
    }

    /// Takes free block `b` off its list.
    ///
    /// # Safety
    ///
    /// `b` is a free block of a chunk of this index, on its list.
    unsafe fn remove(&mut self, b: *mut Block) {
        // SAFETY: caller's contract.
        let (fl, sl) = mapping(unsafe { size_of_block(b) });
        // SAFETY: `b` is a free block in list (fl, sl); its neighbours in the
        // list are free blocks too.
        unsafe {
            let FreeLinks { next, prev } = links(b).read();
            if !next.is_null() {
                (*links(next)).prev = prev;
            }
            if prev.is_null() {
                self.heads[fl][sl] = next;
                if next.is_null() {
                    self.sl_bitmap[fl] &= !(1 << sl);
                    if self.sl_bitmap[fl] == 0 {
                        self.fl_bitmap &= !(1 << fl);
                    }
                }
            } else {
                (*links(prev)).next = next;
            }
        }
    }

    /// A free block of at least `size` bytes, removed from its list.
    fn take_fit(&mut self, size: usize) -> Option<*mut Block> {
        let (mut fl, sl) = mapping_search(size);
        if fl >= FL_COUNT {
            return None;
        }
        let mut sl_map = self.sl_bitmap[fl] & (u32::MAX << sl);
        if sl_map == 0 {
            let fl_map = self.fl_bitmap & u32::MAX.checked_shl(fl as u32 + 1).unwrap_or(0);
            if fl_map == 0 {
                return None;
            }
            fl = fl_map.trailing_zeros() as usize;
            sl_map = self.sl_bitmap[fl];
        }
        let mut b = self.heads[fl][sl_map.trailing_zeros() as usize];
        debug_assert!(!b.is_null());
        // A wholly free chunk shares the last list with the large remainders
        // of chunks in use: one of those is taken first, so that the empty
        // chunk can go back to the OS. Empty chunks are few (the spares).
        // SAFETY: list members are free blocks of live chunks, with valid
        // links.
        unsafe {
            let mut c = b;
            while !c.is_null() && Self::whole_chunk(c).is_some() {
                c = (*links(c)).next;
            }
            if !c.is_null() {
                b = c;
            }
        }
        // SAFETY: list heads are free blocks in that list; once removed, the
        // block is used.
        unsafe {
            self.remove(b);
            (*b).size_flags &= !(FREE | AGED | PURGED);
        }
        // SAFETY: `b` is a live block header.
        if let Some(chunk) = unsafe { Self::whole_chunk(b) } {
            self.took_empty = Some(chunk);
            self.empty_chunks -= 1;
            self.empty_low = self.empty_low.min(self.empty_chunks);
        }
        Some(b)
    }

    /// Allocates `size` bytes aligned to `align`; returns the payload and its
    /// usable size: at the default alignment, exactly `size` rounded up to
    /// `ALIGNMENT` ([ref:exact-fit]).
    pub(crate) fn allocate(&mut self, size: usize, align: usize) -> Option<(NonNull<u8>, usize)> {
        let need = Self::block_size_for(size);
        let search = if align <= ALIGNMENT {
            need
        } else {
            need + align + KEPT_WHEN_PURGED.next_multiple_of(ALIGNMENT)
        };
        let mut b = self.take_fit(search)?;
        if align <= ALIGNMENT {
            // SAFETY: `b` is a used (just taken) block of at least `need`
            // bytes.
            unsafe { self.fit_exactly(b, need) };
            return Some((payload_of(b), need - HEADER));
        }
        let payload = payload_of(b).as_ptr();
        let mut gap = payload.align_offset(align);
        // The leading block put back keeps `b`'s free mark: the new header
        // must not land on it ([ref:free-mark]).
        if gap != 0 && gap < KEPT_WHEN_PURGED {
            gap += align;
        }
        if gap != 0 {
            // SAFETY: `b` is a used (just taken) block of at least
            // `need + align + 48 > gap + need` bytes (`gap` is a multiple
            // of 16 below `align + 40`), and `gap >= 48 >= MIN_BLOCK`: the
            // split point lies inside it.
            unsafe {
                let rest = self.split(b, gap);
                self.release(b);
                b = rest;
            }
        }
        // SAFETY: `b` is a used block of at least `need` bytes.
        unsafe { self.shrink_block(b, need) };
        // SAFETY: `b` is a used block.
        Some((payload_of(b), unsafe { size_of_block(b) } - HEADER))
    }

    /// Block size serving a payload of `size` bytes.
    #[inline]
    fn block_size_for(size: usize) -> usize {
        (size.next_multiple_of(ALIGNMENT) + HEADER).max(MIN_BLOCK)
    }

    /// Splits used block `b` at `at` bytes; both halves are used blocks.
    /// Returns the second half.
    ///
    /// # Safety
    ///
    /// `b` is a used block of a chunk of this index, and
    /// `MIN_BLOCK <= at <= size(b) - MIN_BLOCK`.
    unsafe fn split(&mut self, b: *mut Block, at: usize) -> *mut Block {
        // SAFETY: `MIN_BLOCK <= at <= size(b) - MIN_BLOCK` (callers), so both
        // halves are valid blocks inside `b`.
        unsafe {
            let total = size_of_block(b);
            let next = next_phys(b);
            let rest: *mut Block = b.byte_add(at);
            // The new header may lie in a freed payload.
            crate::valgrind::defined(rest.cast(), HEADER);
            rest.write(Block {
                prev_phys: b,
                size_flags: total - at,
            });
            (*b).size_flags = at;
            (*next).prev_phys = rest;
            rest
        }
    }

    /// Makes used block `b` hold exactly `keep - HEADER` bytes
    /// [tag:exact-fit]: the excess is split off and freed if it makes a
    /// block; a header's worth (too little for a block) goes to the next
    /// block if that one is free, else stays as the block's slack, not
    /// counted in its usable size. So a block of the default alignment
    /// holds exactly its request rounded up to `ALIGNMENT`, and one
    /// allocated for a request bin's bound exactly the bound
    /// ([ref:bin-bound]).
    ///
    /// # Safety
    ///
    /// `b` is a used block of a chunk of this index, of at least `keep`
    /// bytes, `keep >= MIN_BLOCK`.
    unsafe fn fit_exactly(&mut self, b: *mut Block, keep: usize) {
        // SAFETY: `b` is a used block (caller); its next neighbour is a
        // valid block, in its list if free.
        unsafe {
            (*b).size_flags &= !SLACK;
            let excess = size_of_block(b) - keep;
            if excess == 0 || excess >= MIN_BLOCK {
                self.shrink_block(b, keep);
                return;
            }
            let next = next_phys(b);
            if !is_free(next) {
                (*b).size_flags = size_of_block(b) | SLACK;
                return;
            }
            self.remove(next);
            let grown = size_of_block(next) + excess;
            let moved: *mut Block = b.byte_add(keep);
            // The new header lies in `b`'s payload, which it leaves.
            crate::valgrind::defined(moved.cast(), HEADER);
            moved.write(Block {
                prev_phys: b,
                size_flags: grown | FREE,
            });
            (*next_phys(moved)).prev_phys = moved;
            (*b).size_flags = keep;
            self.insert(moved);
        }
    }

    /// Shrinks used block `b` to `keep` bytes if the excess makes a block,
    /// freeing the excess.
    ///
    /// # Safety
    ///
    /// `b` is a used block of a chunk of this index, of at least `keep`
    /// bytes, `keep >= MIN_BLOCK`.
    unsafe fn shrink_block(&mut self, b: *mut Block, keep: usize) {
        // SAFETY: `b` is a used block (callers).
        unsafe {
            if size_of_block(b) - keep >= MIN_BLOCK {
                let tail = self.split(b, keep);
                self.release(tail);
            }
        }
    }

    /// Frees used block `b`, coalescing with free neighbours; returns a chunk
    /// base if the chunk became entirely free.
    ///
    /// # Safety
    ///
    /// `b` is a used block of a chunk of this index, not used afterwards.
    unsafe fn release(&mut self, mut b: *mut Block) -> Option<NonNull<u8>> {
        // SAFETY: `b` is a used block of a live chunk; its physical
        // neighbours are valid blocks (invariants), and free ones are in
        // their lists.
        unsafe {
            // A block merged into its predecessor keeps a header that says
            // free, so a second free of it is still caught.
            (*b).size_flags |= FREE;
            let next = next_phys(b);
            if is_free(next) {
                self.remove(next);
                (*b).size_flags = (size_of_block(b) + size_of_block(next)) | FREE;
                (*next_phys(b)).prev_phys = b;
            }
            let prev = (*b).prev_phys;
            if !prev.is_null() && is_free(prev) {
                self.remove(prev);
                (*prev).size_flags = size_of_block(prev) + size_of_block(b);
                (*next_phys(prev)).prev_phys = prev;
                b = prev;
            }
            (*b).size_flags = size_of_block(b) | FREE;
            self.insert(b);
        }
        // SAFETY: `b` is a live block header.
        let chunk = unsafe { Self::whole_chunk(b) };
        if chunk.is_some() {
            self.empty_chunks += 1;
        // SAFETY: as above.
        } else if unsafe { size_of_block(b) } >= MEDIUM_PURGE_MIN {
            self.large_freed = true;
        }
        chunk
    }

    /// Whether a free block of `MEDIUM_PURGE_MIN` bytes or more was made
    /// since the last call.
    pub(crate) fn take_large_freed(&mut self) -> bool {
        core::mem::take(&mut self.large_freed)
    }

    /// Frees the block whose payload is `payload`. Returns the chunk's base
    /// if the chunk is now entirely free.
    ///
    /// # Safety
    ///
    /// `payload` came from [`Tlsf::allocate`] on `self` and is not yet freed.
    pub(crate) unsafe fn free(&mut self, payload: NonNull<u8>) -> Option<NonNull<u8>> {
        // SAFETY: caller's contract.
        unsafe { self.release(block_of(payload)) }
    }

    /// Removes an entirely free chunk (as returned by [`Tlsf::free`]) from
    /// the index so it can be unmapped.
    ///
    /// # Safety
    ///
    /// `chunk` was returned by `free` and nothing was allocated since.
    pub(crate) unsafe fn take_empty_chunk(&mut self, chunk: NonNull<u8>) {
        let b: *mut Block = chunk.as_ptr().wrapping_add(CHUNK_HEADER_SIZE).cast();
        // SAFETY: the chunk's only block is free and in its list.
        unsafe { self.remove(b) };
        self.empty_chunks -= 1;
        self.empty_low = self.empty_low.min(self.empty_chunks);
    }

    /// The fewest wholly free chunks held at once since the last
    /// [`Self::reset_empty_low`]: that many stayed unused all along.
    pub(crate) fn empty_low(&self) -> usize {
        self.empty_low
    }

    /// Starts a new interval for [`Self::empty_low`].
    pub(crate) fn reset_empty_low(&mut self) {
        self.empty_low = self.empty_chunks;
    }

    /// Tries to resize the used block at `payload` in place to hold exactly
    /// `size` bytes rounded up to `ALIGNMENT` ([ref:exact-fit]), growing
    /// into a free next neighbour or trimming the tail. Returns the new
    /// usable size on success.
    ///
    /// # Safety
    ///
    /// `payload` came from [`Tlsf::allocate`] on `self` and is not yet freed.
    pub(crate) unsafe fn resize_in_place(
        &mut self,
        payload: NonNull<u8>,
        size: usize,
    ) -> Option<usize> {
        let b = block_of(payload);
        let need = Self::block_size_for(size);
        // SAFETY: `b` is a live used block (caller); its next neighbour is a
        // valid block.
        unsafe {
            let have = size_of_block(b);
            if need > have {
                let next = next_phys(b);
                if !is_free(next) || have + size_of_block(next) < need {
                    return None;
                }
                self.remove(next);
                (*b).size_flags = have + size_of_block(next);
                (*next_phys(b)).prev_phys = b;
            }
            self.fit_exactly(b, need);
            Some(need - HEADER)
        }
    }

    /// Claims the free predecessor of the used block at `payload` (and its
    /// successor too, if free and needed) for a block of `size` bytes: they
    /// become one used block, whose payload starts at the predecessor's
    /// and is returned. The contents stay where they were: the caller moves
    /// them down (the ranges overlap), then calls [`Self::fit_claimed`].
    /// The old header, now inside the claimed block, says free, as a block
    /// merged into its predecessor does: a later free of the old pointer is
    /// caught if the move has not overwritten it. Returns `None`, changing
    /// nothing, when the predecessor is not free or the blocks together are
    /// too small.
    ///
    /// # Safety
    ///
    /// `payload` came from [`Tlsf::allocate`] on `self` and is not yet freed.
    pub(crate) unsafe fn claim_backward(
        &mut self,
        payload: NonNull<u8>,
        size: usize,
    ) -> Option<NonNull<u8>> {
        let b = block_of(payload);
        let need = Self::block_size_for(size);
        // SAFETY: `b` is a live used block (caller); its physical neighbours
        // are valid blocks, in their lists if free.
        unsafe {
            let prev = (*b).prev_phys;
            if prev.is_null() || !is_free(prev) {
                return None;
            }
            let next = next_phys(b);
            let both = size_of_block(prev) + size_of_block(b);
            // The successor only if the two fall short: it keeps its aging.
            let after = if both < need && is_free(next) {
                size_of_block(next)
            } else {
                0
            };
            if both + after < need {
                return None;
            }
            self.remove(prev);
            if after != 0 {
                self.remove(next);
            }
            (*b).size_flags |= FREE;
            // Used, flags cleared; not a whole chunk, since `b` was used.
            (*prev).size_flags = both + after;
            (*next_phys(prev)).prev_phys = prev;
            Some(payload_of(prev))
        }
    }

    /// Fits a block claimed by [`Self::claim_backward`], whose contents the
    /// caller has moved, to hold exactly `size` bytes ([ref:exact-fit]);
    /// returns its usable size.
    ///
    /// # Safety
    ///
    /// `payload` was returned by `claim_backward(_, size)` on `self` and
    /// is not yet freed.
    pub(crate) unsafe fn fit_claimed(&mut self, payload: NonNull<u8>, size: usize) -> usize {
        let need = Self::block_size_for(size);
        // SAFETY: a used block of at least `need` bytes (caller).
        unsafe { self.fit_exactly(block_of(payload), need) };
        need - HEADER
    }
}

impl Tlsf {
    /// Some wholly free chunk, if any.
    pub(crate) fn any_empty_chunk(&self) -> Option<NonNull<u8>> {
        if self.empty_chunks == 0 {
            return None;
        }
        // Whole-chunk blocks are the largest and sit on the last lists.
        let (fl, sl) = mapping(CHUNK_BLOCK);
        let mut b = self.heads[fl][sl];
        while !b.is_null() {
            // SAFETY: list members are free blocks of live chunks, with
            // valid links.
            unsafe {
                if let Some(chunk) = Self::whole_chunk(b) {
                    return Some(chunk);
                }
                b = (*links(b)).next;
            }
        }
        None
    }

    /// Calls `f(start, end)` for the part of every free block past its
    /// header, links and free mark ([ref:free-mark]: a purge must not wipe
    /// the mark, which the sized free's fast path reads alone), as a
    /// pointer and an end address.
    pub(crate) fn for_each_free_block(&self, mut f: impl FnMut(*mut u8, usize)) {
        for lists in &self.heads {
            for &head in lists {
                let mut b = head;
                while !b.is_null() {
                    // SAFETY: list members are free blocks of live chunks.
                    unsafe {
                        let start = b.cast::<u8>().add(KEPT_WHEN_PURGED);
                        f(start, b.addr() + size_of_block(b));
                        b = (*links(b)).next;
                    }
                }
            }
        }
    }

    /// Calls `f` on each free block of at least `min` bytes that is not
    /// purged and not a wholly free chunk (the spares have their own
    /// interval), largest lists first, while `f` returns `true`: the
    /// blocks the purges of large free blocks choose from.
    fn for_each_purgeable(&mut self, min: usize, mut f: impl FnMut(*mut Block) -> bool) {
        let (first, _) = mapping(min.max(MIN_BLOCK));
        for lists in self.heads.iter().skip(first).rev() {
            for &head in lists.iter().rev() {
                let mut b = head;
                while !b.is_null() {
                    // SAFETY: list members are free blocks of live chunks,
                    // with valid links; `f` changes their flags only.
                    unsafe {
                        if size_of_block(b) >= min
                            && (*b).size_flags & PURGED == 0
                            && Self::whole_chunk(b).is_none()
                            && !f(b)
                        {
                            return;
                        }
                        b = (*links(b)).next;
                    }
                }
            }
        }
    }

    /// Passes the part of free block `b` past its header, links and mark
    /// to `purge`, and marks `b` purged.
    ///
    /// # Safety
    ///
    /// `b` is a free block of a live chunk, whose flags the caller may
    /// change (it holds the index).
    unsafe fn purge_block(b: *mut Block, purge: &mut impl FnMut(*mut u8, usize)) {
        // SAFETY: caller's contract.
        unsafe {
            purge(
                b.cast::<u8>().add(KEPT_WHEN_PURGED),
                b.addr() + size_of_block(b),
            );
            (*b).size_flags |= PURGED;
        }
    }

    /// Purges free blocks of at least `min` bytes outside `skip`, largest
    /// lists first, wholly free chunks and purged blocks aside, until
    /// `budget` bytes are purged or none is left ([`Self::purge_block`]).
    pub(crate) fn purge_largest(
        &mut self,
        min: usize,
        mut budget: usize,
        skip: core::ops::Range<usize>,
        mut purge: impl FnMut(*mut u8, usize),
    ) {
        self.for_each_purgeable(min, |b| {
            if !skip.contains(&b.addr()) {
                // SAFETY: a free block of this index, held by `&mut self`.
                unsafe {
                    budget = budget.saturating_sub(size_of_block(b));
                    Self::purge_block(b, &mut purge);
                }
            }
            budget > 0
        });
    }

    /// The wholly free chunk an allocation took since the last call, if
    /// one did.
    pub(crate) fn take_took_empty(&mut self) -> Option<NonNull<u8>> {
        self.took_empty.take()
    }

    /// Ages the free blocks of at least `min` bytes, wholly free chunks
    /// aside: one already aged by the previous call (free ever since: a
    /// block taken, split or merged starts young again) and not purged yet
    /// is purged ([`Self::purge_block`]); the others are marked aged.
    /// Returns whether some block was left aged and unpurged, for the next
    /// call.
    pub(crate) fn age_free_blocks(
        &mut self,
        min: usize,
        mut purge: impl FnMut(*mut u8, usize),
    ) -> bool {
        let mut pending = false;
        self.for_each_purgeable(min, |b| {
            // SAFETY: a free block of this index, held by `&mut self`.
            unsafe {
                if (*b).size_flags & AGED != 0 {
                    Self::purge_block(b, &mut purge);
                } else {
                    (*b).size_flags |= AGED;
                    pending = true;
                }
            }
            true
        });
        pending
    }
}

/// What a walk of one medium chunk found.
#[derive(Debug, Default)]
pub(crate) struct ChunkWalk {
    pub(super) used_blocks: usize,
    pub(super) used_bytes: usize,
    pub(super) free_blocks: usize,
}

impl Tlsf {
    /// Walks a medium chunk's blocks, checking the physical invariants;
    /// panics on a violation.
    ///
    /// # Safety
    ///
    /// `chunk` is a live medium chunk of this allocator and the caller holds
    /// the lock that guards it.
    pub(crate) unsafe fn validate_chunk(chunk: NonNull<u8>) -> ChunkWalk {
        let mut walk = ChunkWalk::default();
        let end = chunk.as_ptr().addr() + MEDIUM_CHUNK_SIZE - HEADER;
        let mut prev: *mut Block = null_mut();
        let mut b: *mut Block = chunk.as_ptr().wrapping_add(CHUNK_HEADER_SIZE).cast();
        let mut prev_free = false;
        // SAFETY: following sizes from the first block stays inside the chunk
        // as long as the invariants hold, which each step checks first.
        unsafe {
            while b.addr() < end {
                assert_eq!((*b).prev_phys, prev, "prev_phys broken at {:#x}", b.addr());
                let size = size_of_block(b);
                assert!(
                    size >= MIN_BLOCK && size.is_multiple_of(ALIGNMENT),
                    "bad block size {size}"
                );
                assert!(b.addr() + size <= end, "block overruns its chunk");
                let free = is_free(b);
                assert!(
                    !(free && prev_free),
                    "two adjacent free blocks at {:#x}",
                    b.addr()
                );
                if free {
                    walk.free_blocks += 1;
                } else {
                    walk.used_blocks += 1;
                    walk.used_bytes += usable_of(b);
                }
                prev_free = free;
                prev = b;
                b = next_phys(b);
            }
            assert_eq!(b.addr(), end, "sentinel misplaced");
            assert_eq!((*b).size_flags, 0, "sentinel overwritten");
            assert_eq!((*b).prev_phys, prev);
        }
        walk
    }

    /// Checks the free lists and bitmaps; returns the number of free blocks
    /// on the lists. Panics on a violation.
    ///
    /// # Safety
    ///
    /// The caller holds the lock that guards `self`.
    pub(crate) unsafe fn validate_lists(&self) -> usize {
        let mut count = 0;
        for fl in 0..FL_COUNT {
            assert_eq!(self.fl_bitmap & (1 << fl) != 0, self.sl_bitmap[fl] != 0);
            for sl in 0..SL_COUNT {
                let head = self.heads[fl][sl];
                assert_eq!(self.sl_bitmap[fl] & (1 << sl) != 0, !head.is_null());
                let mut prev = null_mut();
                let mut b = head;
                // SAFETY: list members are free blocks of live chunks.
                unsafe {
                    while !b.is_null() {
                        assert!(is_free(b), "used block on a free list");
                        assert_eq!(
                            mapping(size_of_block(b)),
                            (fl, sl),
                            "block on the wrong list"
                        );
                        assert_eq!((*links(b)).prev, prev);
                        count += 1;
                        prev = b;
                        b = (*links(b)).next;
                    }
                }
            }
        }
        count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHUNK_LAYOUT: core::alloc::Layout =
        match core::alloc::Layout::from_size_align(MEDIUM_CHUNK_SIZE, 4096) {
            Ok(layout) => layout,
            Err(_) => panic!("chunk layout"),
        };

    /// A fresh index over one chunk from the system allocator (given back
    /// with `dealloc(chunk, CHUNK_LAYOUT)`).
    fn index_with_a_chunk() -> (Tlsf, NonNull<u8>) {
        // SAFETY: non-zero size.
        let chunk = NonNull::new(unsafe { std::alloc::alloc(CHUNK_LAYOUT) }).unwrap();
        let mut t = Tlsf::new();
        // SAFETY: the chunk is ours and big enough.
        unsafe { t.add_chunk(chunk) };
        (t, chunk)
    }

    /// Takes the wholly free chunk of [`index_with_a_chunk`] out of `t`,
    /// which must then be empty, and frees it.
    ///
    /// # Safety
    ///
    /// `chunk` is `t`'s only chunk, wholly free.
    unsafe fn give_back(mut t: Tlsf, chunk: NonNull<u8>) {
        // SAFETY: caller's contract.
        unsafe {
            t.take_empty_chunk(chunk);
            std::alloc::dealloc(chunk.as_ptr(), CHUNK_LAYOUT);
        }
        assert_eq!(t.fl_bitmap, 0);
    }

    /// Smallest block size that maps to list `(fl, sl)`.
    fn list_min(fl: usize, sl: usize) -> usize {
        if fl == 0 {
            sl * ALIGNMENT
        } else {
            let base = 1usize << (fl as u32 + LINEAR_SHIFT - 1);
            base + sl * (base >> SL_BITS)
        }
    }

    #[test]
    fn mapping_is_monotonic_and_search_rounds_up() {
        let step = if cfg!(miri) {
            4096 + ALIGNMENT
        } else {
            ALIGNMENT
        };
        let mut last = (0, 0);
        for size in (MIN_BLOCK..=CHUNK_BLOCK).step_by(step) {
            let m = mapping(size);
            assert!(m >= last, "mapping not monotonic at {size}");
            last = m;
            assert!(list_min(m.0, m.1) <= size);
            let (fl, sl) = mapping_search(size);
            if fl < FL_COUNT {
                // Every block in the list the search lands on is big enough.
                assert!(
                    list_min(fl, sl) >= size,
                    "search for {size} lands on ({fl}, {sl})"
                );
            }
        }
        assert!(mapping(CHUNK_BLOCK).0 < FL_COUNT);
    }

    #[test]
    fn allocates_aligns_coalesces_and_empties() {
        let (mut t, chunk) = index_with_a_chunk();
        assert_eq!(t.empty_chunks, 1);
        let (a, ua) = t.allocate(1000, 16).unwrap();
        assert_eq!(t.empty_chunks, 0);
        assert!((1000..1000 + MIN_BLOCK).contains(&ua));
        let (b, _) = t.allocate(5000, 4096).unwrap();
        assert_eq!(b.as_ptr().addr() % 4096, 0);
        let (c, _) = t.allocate(700, 64).unwrap();
        assert_eq!(c.as_ptr().addr() % 64, 0);
        // SAFETY: `a` is live.
        let grown = unsafe { t.resize_in_place(a, 1500) };
        // `a` may be followed by b's alignment gap (free) or by b itself.
        if let Some(g) = grown {
            assert!(g >= 1500);
        }
        // SAFETY: all three are live; freed once each.
        unsafe {
            assert!(t.free(b).is_none());
            assert!(t.free(a).is_none());
            assert_eq!(t.free(c), Some(chunk));
            give_back(t, chunk);
        }
    }

    /// Blocks of the default alignment hold exactly their request rounded
    /// up to 16 ([ref:exact-fit]), also where a resize leaves a header's
    /// worth over, too little for a block: given to a free next block, or
    /// kept as slack that the block's usable size leaves out.
    #[test]
    fn default_alignment_fits_exactly() {
        let (mut t, chunk) = index_with_a_chunk();
        let blocks = [1000, 2000, 3000, 4000, 5000].map(|size| t.allocate(size, 8).unwrap());
        assert_eq!(blocks.map(|(_, u)| u), [1008, 2000, 3008, 4000, 5008]);
        let [a, y, z, w, v] = blocks.map(|(p, _)| p);
        // SAFETY: blocks of `t`, each freed once.
        unsafe {
            let used = || Tlsf::validate_chunk(chunk).used_bytes;
            // `a` (1024 bytes with its header) grows into `y`'s 2016 and
            // keeps the 16 left over as slack.
            assert!(t.free(y).is_none());
            assert_eq!(t.resize_in_place(a, 3008), Some(3008));
            assert_eq!(usable_size(a), 3008);
            assert_eq!(used(), 3008 + 3008 + 4000 + 5008);
            // With `z` freed, shrinking by 32 splits a block off, and by
            // 16 more gives them to that free block.
            assert!(t.free(z).is_none());
            assert_eq!(t.resize_in_place(a, 2992), Some(2992));
            assert_eq!(t.resize_in_place(a, 2976), Some(2976));
            assert_eq!(usable_size(a), 2976);
            assert_eq!(next_phys(block_of(a)), block_of(a).byte_add(2992));
            // `w`, followed by `v`, keeps 16 as slack, and takes them back.
            assert_eq!(t.resize_in_place(w, 3984), Some(3984));
            assert_eq!(usable_size(w), 3984);
            assert_eq!(size_of_block(block_of(w)), 4016);
            assert_eq!(used(), 2976 + 3984 + 5008);
            assert_eq!(t.resize_in_place(w, 4000), Some(4000));
            assert_eq!(usable_size(w), 4000);
            assert_eq!(used(), 2976 + 4000 + 5008);
            for p in [a, w] {
                assert!(t.free(p).is_none());
            }
            assert_eq!(t.free(v), Some(chunk));
            give_back(t, chunk);
        }
    }

    /// A free block keeps its free mark ([ref:free-mark]) through what
    /// layer 1 does to it: purging skips it, and an over-aligned
    /// allocation that takes the block and puts its front back does not
    /// write the new block's header over it.
    #[test]
    fn free_blocks_keep_their_mark() {
        let (mut t, chunk) = index_with_a_chunk();
        // The chunk's first header is at +64; after a block of 1040 bytes
        // the free rest starts at +1104, its payload 32 bytes short of a
        // 64-byte boundary: an aligned request's split would fall on the
        // mark's word.
        let (a, _) = t.allocate(1024, 8).unwrap();
        let rest = block_of(a).addr() + 1040;
        assert_eq!((rest + HEADER) % 64, 32);
        let mark: *mut usize = a.as_ptr().wrapping_add(1024 + HEADER + MARK_OFFSET).cast();
        // SAFETY: the free rest's mark word, inside the chunk.
        unsafe { mark.write(0x5eed) };
        t.for_each_free_block(|start, _| {
            assert!(
                start.addr() >= mark.addr() + size_of::<usize>(),
                "purge spares the mark"
            );
        });
        let (b, _) = t.allocate(100, 64).unwrap();
        assert_eq!(b.as_ptr().addr() % 64, 0);
        assert!(block_of(b).addr() >= rest + KEPT_WHEN_PURGED);
        // SAFETY: as above; the word is in the free block put back.
        assert_eq!(unsafe { mark.read() }, 0x5eed);
        // SAFETY: blocks of `t`, freed once each.
        unsafe {
            assert!(t.free(a).is_none());
            assert_eq!(t.free(b), Some(chunk));
            give_back(t, chunk);
        }
    }
}
