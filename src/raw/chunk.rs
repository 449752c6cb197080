//! Chunks: the `CHUNK_SIZE`-aligned regions layer 1 maps from the OS, and the
//! header each starts with.
//!
//! [tag:chunk-aligned] Every chunk starts on a `CHUNK_SIZE` boundary and
//! begins with a [`ChunkHeader`]; the arena map relies on both.

use core::ptr::null_mut;

/// What a chunk is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum ChunkKind {
    /// A pymalloc arena carved into pools (layer 2).
    Arena,
    /// A region carved into medium blocks by layer 1's TLSF allocator.
    Medium,
    /// One huge block, mapped for it alone.
    Huge,
}

/// Bytes reserved at the start of every chunk for its header; a multiple of
/// the block alignment so that what follows stays aligned.
pub(crate) const CHUNK_HEADER_SIZE: usize = 64;
const _: () = assert!(size_of::<ChunkHeader>() <= CHUNK_HEADER_SIZE);
const _: () = assert!(CHUNK_HEADER_SIZE.is_multiple_of(crate::config::ALIGNMENT));

/// The header at the base of every chunk.
///
/// Invariants: `size` and `align` are those the chunk was mapped with, and do
/// not change while the chunk is registered in the arena map; `next`/`prev`
/// link every chunk of one heap (null-terminated), and are only touched under
/// that heap's layer-1 lock.
#[repr(C)]
pub(crate) struct ChunkHeader {
    pub(crate) kind: ChunkKind,
    /// A medium chunk's shard of the medium allocator (set once, before
    /// the chunk's first block exists); 0 for other kinds.
    pub(super) shard: u8,
    /// Identity of the heap that mapped the chunk ([`crate::RawHeap`]'s id).
    pub(super) owner: usize,
    /// Bytes mapped, starting at the header.
    pub(super) size: usize,
    /// Alignment the chunk was mapped with.
    pub(super) align: usize,
    pub(super) next: *mut ChunkHeader,
    pub(super) prev: *mut ChunkHeader,
}

impl ChunkHeader {
    pub(crate) const fn new(kind: ChunkKind, owner: usize, size: usize, align: usize) -> Self {
        Self {
            kind,
            shard: 0,
            owner,
            size,
            align,
            next: null_mut(),
            prev: null_mut(),
        }
    }

    /// Address of the chunk's first byte (the header itself).
    #[inline]
    pub(crate) fn base_addr(&self) -> usize {
        (self as *const Self).addr()
    }
}
