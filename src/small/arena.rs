//! Layer 2 geometry: arenas and the pool headers they hold.
//!
//! # Arena layout [tag:arena-layout]
//!
//! An arena is an `ARENA_SIZE` chunk, `ARENA_SIZE`-aligned, cut into
//! `POOLS_PER_ARENA` pools of `POOL_SIZE` bytes. Pool 0 holds metadata: the
//! [`ArenaHeader`] at the base, then one [`PoolHeader`] per pool. Pools
//! `1..POOLS_PER_ARENA` hold blocks only. Keeping headers out of the pools
//! means a pool's blocks start on a `POOL_SIZE` boundary
//! ([tag:pool-data-aligned]), so blocks of a class whose size is a multiple
//! of `a` are `a`-aligned, and a block's pool header is found from its
//! address alone: `arena = addr & !(ARENA_SIZE - 1)`, pool index
//! `(addr - arena) >> POOL_SHIFT`.
//!
//! ```text
//! | pool 0: ArenaHeader, PoolHeader[64] | pool 1 | pool 2 | ... | pool 63 |
//! ```

use crate::config::{ARENA_SIZE, POOL_SHIFT, POOL_SIZE, POOLS_PER_ARENA, USABLE_POOLS_PER_ARENA};
use crate::raw::chunk::{CHUNK_HEADER_SIZE, ChunkHeader, ChunkKind};
use crate::small::size_class::SizeClass;
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::{AtomicPtr, AtomicU32};

/// Header of an arena, at its base.
///
/// Invariants:
/// * `nfreepools == (pools on freepools) + (USABLE_POOLS_PER_ARENA - ncarved)`;
/// * pools `1..=ncarved` have been used at least once; pools past `ncarved`
///   were never touched and read zero;
/// * between heap operations, the arena is on the heap's usable-arenas list
///   iff `0 < nfreepools < USABLE_POOLS_PER_ARENA` ([ref:usable-arenas]);
///   an arena with every pool empty is a spare or already given back.
#[repr(C)]
pub(crate) struct ArenaHeader {
    pub(crate) chunk: ChunkHeader,
    pub(crate) nfreepools: usize,
    pub(crate) ncarved: usize,
    /// Empty pools that were used before, singly linked through `next`.
    pub(crate) freepools: *mut PoolHeader,
    /// Neighbours on the usable-arenas list.
    pub(crate) next: *mut ArenaHeader,
    pub(crate) prev: *mut ArenaHeader,
}

/// Header of a pool, kept in its arena's pool 0.
///
/// Invariants:
/// * `0 <= ref_count <= capacity`, and
///   `ref_count + len(freeblock list) + (capacity - bump) == capacity`
///   (blocks freed by other threads and not yet collected by the owner
///   count as allocated);
/// * a pool with a live block has one owner for as long as it has one:
///   `owner` is a thread heap ([`crate::thread`]) or null for the heap's
///   shared, locked lists; only the owner touches `freeblock`, `bump`,
///   `ref_count`, `next` and `prev`;
/// * a pool is *used* (on its owner's `usedpools[class]`) iff
///   `0 < ref_count < capacity`, or `ref_count == 0` and it is its class's
///   cached empty pool (see [`crate::small::pool`]); *full* (on no list) iff
///   `ref_count == capacity`; *empty* (on its arena's `freepools`, or never
///   carved, owner null) otherwise;
/// * `zeroed_tail` implies the never-used blocks `bump..capacity` read zero.
#[repr(C)]
pub(crate) struct PoolHeader {
    /// Head of the list of freed blocks, linked through their first word.
    pub(crate) freeblock: *mut u8,
    pub(crate) next: *mut PoolHeader,
    pub(crate) prev: *mut PoolHeader,
    /// First byte of the pool's blocks.
    pub(crate) base: *mut u8,
    /// Written by the owner only (a load and a store, no read-modify-write);
    /// atomic so that `stats()` may read it from any thread.
    pub(crate) ref_count: AtomicU32,
    pub(crate) capacity: u32,
    /// Index of the first never-used block.
    pub(crate) bump: u32,
    pub(crate) class: u8,
    pub(crate) zeroed_tail: bool,
    /// The thread heap that owns the pool, or null (see the invariants).
    /// Set under the small-object lock when the pool leaves or rejoins its
    /// arena; read by any thread freeing one of its blocks.
    pub(crate) owner: AtomicPtr<crate::thread::ThreadHeap>,
    /// Neighbours on the heap's purge queue of empty, not yet purged pools.
    pub(crate) purge_next: *mut PoolHeader,
    pub(crate) purge_prev: *mut PoolHeader,
    /// When the pool became empty, iff it is on the purge queue.
    pub(crate) emptied_at: Option<std::time::Instant>,
}

const POOL_HEADERS_OFFSET: usize = CHUNK_HEADER_SIZE * 4;
const _: () = assert!(size_of::<ArenaHeader>() <= POOL_HEADERS_OFFSET);
const _: () = assert!(POOL_HEADERS_OFFSET + POOLS_PER_ARENA * size_of::<PoolHeader>() <= POOL_SIZE);
const _: () = assert!(crate::config::NB_SMALL_SIZE_CLASSES <= u8::MAX as usize);

/// Writes a fresh arena header into a newly mapped arena chunk. The chunk
/// header must already be written by layer 1.
///
/// # Safety
///
/// `base` is a live, zero-filled arena chunk of `ARENA_SIZE` bytes that
/// nothing else uses.
pub(crate) unsafe fn init_arena(base: NonNull<u8>) -> *mut ArenaHeader {
    let arena = base.as_ptr().cast::<ArenaHeader>();
    // SAFETY: the header fits in pool 0 of a live chunk (caller).
    unsafe {
        debug_assert!((*arena).chunk.kind == ChunkKind::Arena);
        (*arena).nfreepools = USABLE_POOLS_PER_ARENA;
        (*arena).ncarved = 0;
        (*arena).freepools = null_mut();
        (*arena).next = null_mut();
        (*arena).prev = null_mut();
    }
    arena
}

/// The arena containing pool header `pool`.
#[inline]
pub(crate) fn arena_of_pool(pool: *mut PoolHeader) -> *mut ArenaHeader {
    pool.map_addr(|a| a & !(ARENA_SIZE - 1)).cast()
}

/// Index of the pool containing `addr` within arena `arena`.
#[inline]
pub(crate) fn pool_index(arena: *const ArenaHeader, addr: usize) -> usize {
    (addr - arena.addr()) >> POOL_SHIFT
}

/// The header of pool `index` of `arena`.
#[inline]
pub(crate) fn pool_header(arena: *mut ArenaHeader, index: usize) -> *mut PoolHeader {
    debug_assert!(index > 0 && index < POOLS_PER_ARENA);
    arena
        .wrapping_byte_add(POOL_HEADERS_OFFSET)
        .cast::<PoolHeader>()
        .wrapping_add(index)
}

/// First byte of pool `index`'s blocks.
#[inline]
pub(crate) fn pool_data(arena: *mut ArenaHeader, index: usize) -> *mut u8 {
    arena.cast::<u8>().wrapping_add(index * POOL_SIZE)
}

/// The header of the pool holding small block `ptr` of arena `arena`.
#[inline]
pub(crate) fn pool_of(arena: *mut ArenaHeader, ptr: *const u8) -> *mut PoolHeader {
    pool_header(arena, pool_index(arena, ptr.addr()))
}

/// Size class of a pool.
///
/// # Safety
///
/// `pool` is the header of a pool in a live arena.
#[inline]
pub(crate) unsafe fn class_of_pool(pool: *mut PoolHeader) -> SizeClass {
    // SAFETY: caller's contract.
    unsafe { (*pool).class as SizeClass }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_map_to_their_pool() {
        // A fake arena base: only address arithmetic is exercised here.
        let arena = core::ptr::without_provenance_mut::<ArenaHeader>(7 * ARENA_SIZE);
        for index in 1..POOLS_PER_ARENA {
            let data = pool_data(arena, index);
            assert_eq!(data.addr() % POOL_SIZE, 0);
            for offset in [0, 1, POOL_SIZE / 2, POOL_SIZE - 1] {
                let p = data.wrapping_add(offset);
                assert_eq!(pool_index(arena, p.addr()), index);
                assert_eq!(pool_of(arena, p), pool_header(arena, index));
            }
            let h = pool_header(arena, index);
            assert_eq!(arena_of_pool(h), arena);
            assert!(h.addr() + size_of::<PoolHeader>() <= arena.addr() + POOL_SIZE);
        }
    }
}
