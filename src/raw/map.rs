//! The arena map: from any address to the chunk that contains it, in O(1),
//! without reading memory the heap does not own.
//!
//! Every chunk layer 1 takes from the OS starts on a `CHUNK_SIZE` boundary
//! ([ref:chunk-aligned]), so one slot per `CHUNK_SIZE` of address space is
//! enough: the slot of address `a` is `a >> CHUNK_SHIFT`. A slot holds a
//! pointer to the header of the chunk covering it, or null. Since chunks
//! start on slot boundaries, a slot is covered by at most one chunk: no two
//! live chunks share a slot. Like CPython's radix tree, the map is
//! process-wide (addresses are) and two-level: a static root of leaf
//! pointers, leaves mapped from the OS when first needed and never freed.
//!
//! `lookup` reads only the map itself and, for a non-null slot, the header of
//! a live chunk of ours, then checks the address lies inside that chunk's
//! mapping; an address from another allocator yields `None`.

use crate::config::CHUNK_SHIFT;
use crate::os::{OsPages, PageSource};
use crate::raw::chunk::ChunkHeader;
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::{AtomicPtr, Ordering};

/// Bits of address the map covers: 48 on 64-bit targets (every address a
/// user-space mapping gets on x86_64 and on aarch64 with 4-level tables),
/// all of them on 32-bit targets. Chunks mapped above are refused.
const ADDRESS_BITS: u32 = if usize::BITS > 48 { 48 } else { usize::BITS };
const KEY_BITS: u32 = ADDRESS_BITS - CHUNK_SHIFT;
const LEAF_BITS: u32 = if KEY_BITS > 14 { 14 } else { KEY_BITS };
const ROOT_BITS: u32 = KEY_BITS - LEAF_BITS;
const LEAF_LEN: usize = 1 << LEAF_BITS;
const ROOT_LEN: usize = 1 << ROOT_BITS;

type Leaf = [AtomicPtr<ChunkHeader>; LEAF_LEN];

/// The process-wide arena map.
pub(crate) static ARENA_MAP: ArenaMap = ArenaMap::new();

/// Radix tree from `CHUNK_SIZE` slots of the address space to chunk headers.
///
/// Invariant: slot `k` is non-null iff a live chunk of some heap covers
/// address range `k << CHUNK_SHIFT ..`, and then points to that chunk's
/// header.
pub(crate) struct ArenaMap {
    root: [AtomicPtr<Leaf>; ROOT_LEN],
}

impl ArenaMap {
    const fn new() -> Self {
        Self {
            root: [const { AtomicPtr::new(null_mut()) }; ROOT_LEN],
        }
    }

    /// Splits an address into (root index, leaf index), or `None` if it lies
    /// beyond the covered address bits.
    #[inline]
    fn split(addr: usize) -> Option<(usize, usize)> {
        let key = addr >> CHUNK_SHIFT;
        if ADDRESS_BITS < usize::BITS && key >> KEY_BITS != 0 {
            return None;
        }
        Some(Self::split_masked(addr))
    }

    /// As [`Self::split`], with the bits past the covered ones masked off.
    #[inline]
    fn split_masked(addr: usize) -> (usize, usize) {
        let key = addr >> CHUNK_SHIFT;
        ((key >> LEAF_BITS) & (ROOT_LEN - 1), key & (LEAF_LEN - 1))
    }

    /// The slot for `addr`, if its leaf exists. Bits of `addr` above the
    /// covered ones are masked off, not checked: a slot found for such an
    /// address names a chunk that cannot contain it, which `lookup`'s
    /// range check then refuses (one instruction less on every free).
    #[inline]
    fn slot(&self, addr: usize) -> Option<&AtomicPtr<ChunkHeader>> {
        let (hi, lo) = Self::split_masked(addr);
        let leaf = self.root[hi].load(Ordering::Acquire);
        if leaf.is_null() {
            return None;
        }
        // SAFETY: non-null leaves are live for the rest of the process: they
        // are created zeroed (all slots null) and never freed.
        Some(unsafe { &(*leaf)[lo] })
    }

    #[cold]
    fn new_leaf(root: &AtomicPtr<Leaf>) -> Option<*mut Leaf> {
        let size = size_of::<Leaf>();
        let fresh = OsPages
            .map(size, align_of::<Leaf>())?
            .cast::<Leaf>()
            .as_ptr();
        // A zeroed region is a valid leaf: every AtomicPtr null.
        match root.compare_exchange(null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => Some(fresh),
            Err(winner) => {
                // SAFETY: `fresh` was mapped just above and never published.
                unsafe {
                    OsPages.unmap(
                        NonNull::new_unchecked(fresh).cast(),
                        size,
                        align_of::<Leaf>(),
                    )
                };
                Some(winner)
            }
        }
    }

    /// Points every slot of `base..base + size` at `header`. Returns `false`
    /// (and registers nothing) if the range is not mappable.
    pub(crate) fn register(&self, header: NonNull<ChunkHeader>, base: usize, size: usize) -> bool {
        if !self.prepare(base, size) {
            return false;
        }
        self.for_each_slot(base, Self::slot_count(size), false, |s| {
            s.store(header.as_ptr(), Ordering::Release)
        });
        true
    }

    /// Creates the leaves that slots of `base..base + size` live in (so
    /// that registering that range cannot fail afterwards), changing no
    /// slot. `false` if the range is not mappable.
    pub(crate) fn prepare(&self, base: usize, size: usize) -> bool {
        self.for_each_slot(base, Self::slot_count(size), true, |_| {})
    }

    /// Clears the slots of a chunk `base..base + size` that `register`
    /// filled.
    pub(crate) fn unregister(&self, base: usize, size: usize) {
        self.unregister_slots(base, Self::slot_count(size));
    }

    fn unregister_slots(&self, base: usize, slots: usize) {
        self.for_each_slot(base, slots, false, |s| {
            s.store(null_mut(), Ordering::Release)
        });
    }

    /// Calls `f` on the `slots` consecutive slots from `base`'s, a leaf at
    /// a time (one root load per leaf, not per slot: a 4 MiB block has
    /// five slots, registered and cleared on every huge alloc and free).
    /// A missing leaf is created if `create`, else its slots are skipped
    /// (nothing registered there). `false` if the range runs past the
    /// address space or a leaf cannot be created.
    fn for_each_slot(
        &self,
        base: usize,
        slots: usize,
        create: bool,
        mut f: impl FnMut(&AtomicPtr<ChunkHeader>),
    ) -> bool {
        let Some((mut hi, mut lo)) = Self::split(base) else {
            return false;
        };
        let mut left = slots;
        while left > 0 {
            let Some(root) = self.root.get(hi) else {
                return false;
            };
            let take = left.min(LEAF_LEN - lo);
            let mut leaf = root.load(Ordering::Acquire);
            if leaf.is_null() && create {
                // Stop before mapping leaves for the rest of a range that
                // cannot be prepared.
                let Some(fresh) = Self::new_leaf(root) else {
                    return false;
                };
                leaf = fresh;
            }
            if !leaf.is_null() {
                // SAFETY: a published leaf is never freed; `lo + take` is
                // at most `LEAF_LEN`.
                unsafe { (&(*leaf))[lo..lo + take].iter().for_each(&mut f) };
            }
            left -= take;
            (hi, lo) = (hi + 1, 0);
        }
        true
    }

    fn slot_count(size: usize) -> usize {
        size.div_ceil(1 << CHUNK_SHIFT)
    }

    /// The header of the live chunk whose mapping contains `addr`, if any.
    #[inline]
    pub(crate) fn lookup(&self, addr: usize) -> Option<NonNull<ChunkHeader>> {
        let header = NonNull::new(self.slot(addr)?.load(Ordering::Acquire))?;
        // SAFETY: a non-null slot points at the header of a live chunk (map
        // invariant); its size is immutable while the chunk is registered.
        // Only that field is read: a `&ChunkHeader` would also read the
        // list links, which other threads change under the heap's lock.
        let (start, size) = (header.as_ptr().addr(), unsafe { (*header.as_ptr()).size });
        (addr.wrapping_sub(start) < size).then_some(header)
    }
}

impl ArenaMap {
    /// The chunk holding the live block `ptr`, and `ptr` re-derived from the
    /// chunk's provenance. [tag:rebase] The heap works on the re-derived
    /// pointer only: the caller's copy may carry a narrower provenance (a
    /// `Box<u32>` grants 4 bytes), while the heap reads headers around the
    /// block and re-issues the block later at full size.
    ///
    /// A pointer no live chunk holds is reported (`what` names the caller)
    /// and the process aborts.
    #[inline]
    pub(crate) fn find_block(
        &self,
        ptr: NonNull<u8>,
        what: &str,
    ) -> (NonNull<ChunkHeader>, NonNull<u8>) {
        let Some(header) = self.lookup(ptr.as_ptr().addr()) else {
            crate::fatal::bad_pointer(what, ptr.as_ptr())
        };
        let rebased = header.cast::<u8>().as_ptr().with_addr(ptr.as_ptr().addr());
        // SAFETY: same address as `ptr`, which is non-null.
        (header, unsafe { NonNull::new_unchecked(rebased) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_the_address_space() {
        assert_eq!(ArenaMap::split(0), Some((0, 0)));
        let one = 1usize << CHUNK_SHIFT;
        assert_eq!(ArenaMap::split(one - 1), Some((0, 0)));
        assert_eq!(ArenaMap::split(one), Some((0, 1)));
        if usize::BITS == 64 {
            assert_eq!(ArenaMap::split(1 << 47), Some((ROOT_LEN / 2, 0)));
            assert_eq!(ArenaMap::split(usize::MAX), None);
        }
        assert_eq!(KEY_BITS, ROOT_BITS + LEAF_BITS);
    }

    /// An address past the covered bits finds the slot of the address
    /// with those bits cleared, and is refused by the range check.
    #[test]
    fn addresses_past_the_covered_bits_are_not_found() {
        let raw = crate::raw::RawHeap::new();
        let block = raw.alloc_block(4096, 16).unwrap().ptr;
        let addr = block.as_ptr().addr();
        assert!(ARENA_MAP.lookup(addr).is_some());
        for bit in ADDRESS_BITS..usize::BITS {
            assert_eq!(ARENA_MAP.lookup(addr | 1 << bit), None, "bit {bit}");
        }
        let (h, p) = raw.find_own_block(block, "test");
        // SAFETY: a live block of `raw` requested with 4096 bytes.
        unsafe { raw.free_block(h, p, 4096) };
    }
}
