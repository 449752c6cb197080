//! [`Arena`]: one `ARENA_SIZE` chunk carved into pools, and the pool moves
//! in and out of it.
//!
//! # Arena layout [tag:arena-layout]
//!
//! An arena is an `ARENA_SIZE` chunk, `ARENA_SIZE`-aligned, cut into
//! `POOLS_PER_ARENA` pools of `POOL_SIZE` bytes. Pool 0 holds metadata: the
//! [`Arena`] header at the base, then one [`Pool`] header per pool. Pools
//! `1..POOLS_PER_ARENA` hold blocks only. Keeping headers out of the pools
//! means a pool's blocks start on a `POOL_SIZE` boundary
//! ([tag:pool-data-aligned]), so blocks of a class whose size is a multiple
//! of `a` are `a`-aligned, and a block's pool header is found from its
//! address alone: `arena = addr & !(ARENA_SIZE - 1)`, pool index
//! `(addr - arena) >> POOL_SHIFT`.
//!
//! ```text
//! | pool 0: Arena, Pool[64] | pool 1 | pool 2 | ... | pool 63 |
//! ```

use crate::config::{ARENA_SIZE, POOL_SHIFT, POOL_SIZE, POOLS_PER_ARENA, USABLE_POOLS_PER_ARENA};
use crate::raw::chunk::{CHUNK_HEADER_SIZE, ChunkHeader, ChunkKind};
use crate::small::pool::Pool;
use core::ptr::{NonNull, null_mut};

/// Layer 2: one arena, an `ARENA_SIZE` (1 MiB) chunk taken from layer 1
/// ([`RawHeap`](crate::RawHeap)) and carved into `POOL_SIZE` [`Pool`]s.
/// The `Arena` value is the arena's header, at its base, followed by the
/// headers of its pools ([ref:arena-layout]).
///
/// An arena owns its pools while they are empty: a list of pools that were
/// used before (`freepools`) and the never-used ones past `ncarved`. It
/// gives a pool out on the `empty -> used` transition
/// (`Arena::take_pool`) and gets it back on `used -> empty`
/// (`Arena::return_pool`); the heap keeps its arenas ordered by how many
/// pools they have free, so new pools come from the fullest arena and
/// nearly empty arenas drain and go back to the OS (`src/small/arenas.rs`).
///
/// Arenas are never created by users: a heap's arenas are shown, copied
/// under the heap's lock, by [`PrivateHeap::arenas`](crate::PrivateHeap::arenas)
/// as [`ArenaInfo`](crate::ArenaInfo) values.
///
/// Invariants:
/// * `nfreepools == (pools on freepools) + (USABLE_POOLS_PER_ARENA - ncarved)`;
/// * pools `1..=ncarved` have been used at least once; pools past `ncarved`
///   were never touched and read zero;
/// * between heap operations, the arena is on the heap's usable-arenas list
///   iff `0 < nfreepools < USABLE_POOLS_PER_ARENA` ([ref:usable-arenas]);
///   an arena with every pool empty is a spare or already given back;
/// * every field but the chunk header is touched only under the heap's
///   small-object lock.
#[repr(C)]
pub struct Arena {
    pub(super) chunk: ChunkHeader,
    pub(super) nfreepools: usize,
    pub(super) ncarved: usize,
    /// Empty pools that were used before, singly linked through `next`.
    pub(super) freepools: *mut Pool,
    /// Neighbours on the usable-arenas list, or the next spare.
    pub(super) next: *mut Arena,
    pub(super) prev: *mut Arena,
}

const POOL_HEADERS_OFFSET: usize = CHUNK_HEADER_SIZE * 4;
const _: () = assert!(POOL_HEADERS_OFFSET.is_multiple_of(align_of::<Pool>()));
const _: () = assert!(size_of::<Arena>() <= POOL_HEADERS_OFFSET);
const _: () = assert!(
    POOL_HEADERS_OFFSET + POOLS_PER_ARENA * size_of::<Pool>() <= POOL_SIZE - crate::os::ARENA_SPARE
);
const _: () = assert!(crate::config::NB_SMALL_SIZE_CLASSES <= u8::MAX as usize);

impl Arena {
    /// Bytes per arena.
    pub const SIZE: usize = ARENA_SIZE;
    /// Pools per arena that serve blocks (the first pool's room holds the
    /// headers; with the `hardened` feature the last pool is a guard).
    pub const POOLS: usize = USABLE_POOLS_PER_ARENA;

    /// Writes a fresh arena header into a newly mapped arena chunk (all
    /// pools empty, none carved). The chunk header must already be written
    /// by layer 1.
    ///
    /// # Safety
    ///
    /// `base` is a live, zero-filled arena chunk of `ARENA_SIZE` bytes that
    /// nothing else uses.
    pub(crate) unsafe fn init(base: NonNull<u8>) -> *mut Arena {
        let arena = base.as_ptr().cast::<Arena>();
        // `of_freed_block` recovers the arena's provenance from a block's
        // address alone.
        let _ = base.as_ptr().expose_provenance();
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

    /// The arena holding pool header `pool`.
    #[inline]
    pub(crate) fn of_pool(pool: *mut Pool) -> *mut Arena {
        pool.map_addr(|a| a & !(ARENA_SIZE - 1)).cast()
    }

    /// The arena a small block lies in, by masking its address (the block
    /// must carry its arena chunk's provenance for the result to be used).
    #[cfg(test)]
    pub(crate) fn of_block(ptr: *const u8) -> *mut Arena {
        ptr.cast_mut().map_addr(|a| a & !(ARENA_SIZE - 1)).cast()
    }

    /// The arena of small block `ptr`, found by masking its address, and
    /// `ptr` with the arena's provenance. For `dealloc`, whose pointer may
    /// carry only the block's own provenance (a `Box`'s, retagged to the
    /// block): the arena's was exposed by [`Self::init`]. Under Miri (strict
    /// provenance) the caller looks the chunk up in the arena map instead.
    ///
    /// # Safety
    ///
    /// `ptr` is a live small block of some arena.
    #[cfg(not(any(miri, feature = "hardened")))]
    #[inline(always)]
    pub(crate) unsafe fn of_freed_block(ptr: NonNull<u8>) -> (*mut Arena, NonNull<u8>) {
        let arena: *mut Arena =
            core::ptr::with_exposed_provenance_mut(ptr.as_ptr().addr() & !(ARENA_SIZE - 1));
        // SAFETY: non-null: `ptr` is.
        let ptr =
            unsafe { NonNull::new_unchecked(arena.cast::<u8>().with_addr(ptr.as_ptr().addr())) };
        (arena, ptr)
    }

    /// Index of the pool containing `addr` within `arena`.
    #[inline]
    fn pool_index(arena: *const Arena, addr: usize) -> usize {
        (addr - arena.addr()) >> POOL_SHIFT
    }

    /// The header of pool `index` (`1..POOLS_PER_ARENA`) of `arena`.
    #[inline]
    pub(crate) fn pool(arena: *mut Arena, index: usize) -> *mut Pool {
        debug_assert!(index > 0 && index < POOLS_PER_ARENA);
        arena
            .wrapping_byte_add(POOL_HEADERS_OFFSET)
            .cast::<Pool>()
            .wrapping_add(index)
    }

    /// First byte of pool `index`'s blocks.
    #[inline]
    fn pool_data(arena: *mut Arena, index: usize) -> *mut u8 {
        arena.cast::<u8>().wrapping_add(index * POOL_SIZE)
    }

    /// The header of the pool holding small block `ptr` of `arena`.
    #[inline]
    pub(crate) fn pool_of(arena: *mut Arena, ptr: *const u8) -> *mut Pool {
        Self::pool(arena, Self::pool_index(arena, ptr.addr()))
    }

    /// Pools of `arena` that are empty (free or never carved).
    ///
    /// # Safety
    ///
    /// `arena` is live; the caller holds the small-object lock.
    pub(crate) unsafe fn free_pools(arena: *const Arena) -> usize {
        // SAFETY: caller's contract.
        unsafe { (*arena).nfreepools }
    }

    /// Pools of `arena` carved so far: `1..=carved` may have headers.
    ///
    /// # Safety
    ///
    /// As for `free_pools`.
    pub(crate) unsafe fn carved(arena: *const Arena) -> usize {
        // SAFETY: caller's contract.
        unsafe { (*arena).ncarved }
    }

    /// empty -> used, the arena's half: takes one empty pool, a used one
    /// from `freepools` before carving a fresh one. Returns its header
    /// (not yet initialised for a class), where its blocks start, and
    /// whether the pool was used before (only such a
    /// pool may be on the purge queue: a fresh header is all zero bytes,
    /// which is not a valid "not queued").
    ///
    /// # Safety
    ///
    /// `arena` is live with `nfreepools > 0`; the caller holds the
    /// small-object lock, and takes the pool off the purge queue.
    pub(super) unsafe fn take_pool(arena: *mut Arena) -> (*mut Pool, *mut u8, bool) {
        // SAFETY: caller's contract; the header of a pool on `freepools`
        // is live and its `next` links the rest.
        unsafe {
            debug_assert!((*arena).nfreepools > 0);
            (*arena).nfreepools -= 1;
            if (*arena).freepools.is_null() {
                let index = (*arena).ncarved + 1;
                (*arena).ncarved = index;
                (
                    Self::pool(arena, index),
                    Self::pool_data(arena, index),
                    false,
                )
            } else {
                let pool = (*arena).freepools;
                (*arena).freepools = (*pool).next;
                (pool, (*pool).base, true)
            }
        }
    }

    /// used -> empty, the arena's half: `pool` goes back on `freepools`.
    ///
    /// # Safety
    ///
    /// `pool` is an empty pool of live `arena`, on no list; the caller
    /// holds the small-object lock.
    pub(super) unsafe fn return_pool(arena: *mut Arena, pool: *mut Pool) {
        // SAFETY: caller's contract.
        unsafe {
            debug_assert_eq!(Self::of_pool(pool), arena);
            (*pool).next = (*arena).freepools;
            (*arena).freepools = pool;
            (*arena).nfreepools += 1;
        }
    }

    /// Calls `f` with every pool on `freepools`.
    ///
    /// # Safety
    ///
    /// `arena` is live; the caller holds the small-object lock.
    pub(super) unsafe fn for_each_free_pool(arena: *mut Arena, mut f: impl FnMut(*mut Pool)) {
        // SAFETY: caller's contract.
        let mut pool = unsafe { (*arena).freepools };
        while !pool.is_null() {
            f(pool);
            // SAFETY: pools on `freepools` are live, linked through `next`.
            pool = unsafe { (*pool).next };
        }
    }

    /// Checks `nfreepools` against the free and never-carved pools; panics
    /// on a violation. Returns how many of its free pools say they are on
    /// the purge queue.
    ///
    /// # Safety
    ///
    /// As for `for_each_free_pool`.
    pub(super) unsafe fn validate(arena: *mut Arena) -> usize {
        let mut on_list = 0;
        let mut queued = 0;
        // SAFETY: caller's contract.
        unsafe {
            Self::for_each_free_pool(arena, |pool| {
                assert_eq!(
                    Pool::in_use(pool),
                    0,
                    "pool {pool:p} on free pools is not empty"
                );
                assert_eq!(
                    Self::of_pool(pool),
                    arena,
                    "pool {pool:p} on another arena's list"
                );
                on_list += 1;
                assert!(
                    on_list <= USABLE_POOLS_PER_ARENA,
                    "free pools of {arena:p} loop"
                );
                if (*pool).emptied_at.is_some() {
                    queued += 1;
                }
            });
            assert_eq!(
                (*arena).nfreepools,
                on_list + USABLE_POOLS_PER_ARENA - (*arena).ncarved,
                "arena {arena:p}: nfreepools wrong"
            );
        }
        queued
    }
}

impl core::fmt::Debug for Arena {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Arena")
            .field("base", &format_args!("{:#x}", self.chunk.base_addr()))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_map_to_their_pool() {
        // A fake arena base: only address arithmetic is exercised here.
        let arena = core::ptr::without_provenance_mut::<Arena>(7 * ARENA_SIZE);
        for index in 1..POOLS_PER_ARENA {
            let data = Arena::pool_data(arena, index);
            assert_eq!(data.addr() % POOL_SIZE, 0);
            for offset in [0, 1, POOL_SIZE / 2, POOL_SIZE - 1] {
                let p = data.wrapping_add(offset);
                assert_eq!(Arena::pool_index(arena, p.addr()), index);
                assert_eq!(Arena::pool_of(arena, p), Arena::pool(arena, index));
                assert_eq!(Arena::of_block(p), arena);
            }
            let h = Arena::pool(arena, index);
            assert_eq!(Arena::of_pool(h), arena);
            assert!(h.addr() + size_of::<Pool>() <= arena.addr() + POOL_SIZE);
        }
    }
}
