//! Read-only copies of arenas and pools, for users looking at their heap
//! ([`PrivateHeap::arenas`](crate::PrivateHeap::arenas)).

use crate::config::USABLE_POOLS_PER_ARENA;
use crate::small::arena::Arena;
use crate::small::pool::{Pool, PoolState};
use crate::small::size_class::block_size;

/// One pool of an [`ArenaInfo`], as it was when the copy was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolInfo {
    /// Its size class while it has an owner (blocks of `16 * (class + 1)`
    /// bytes); `None` for a pool on its arena's free list or never used.
    /// An empty pool that a thread keeps as a spare (up to
    /// [`THREAD_SPARE_POOLS`](crate::config::THREAD_SPARE_POOLS) per
    /// thread) shows the class it was last given, with no block in use.
    pub class: Option<usize>,
    /// Empty, used or full.
    pub state: PoolState,
    /// Blocks allocated (blocks freed by another thread and not yet
    /// collected by the owner count as allocated).
    pub blocks_in_use: usize,
    /// Blocks the pool holds in all (0 when `class` is `None`).
    pub capacity: usize,
    /// Bytes per block (0 when `class` is `None`).
    pub block_size: usize,
}

impl PoolInfo {
    /// A pool that holds nothing and belongs to no one.
    pub const FREE: PoolInfo = PoolInfo {
        class: None,
        state: PoolState::Empty,
        blocks_in_use: 0,
        capacity: 0,
        block_size: 0,
    };

    /// Bytes of the pool in live blocks.
    pub fn bytes_in_use(&self) -> usize {
        self.block_size * self.blocks_in_use
    }
}

/// One arena of a heap and each of its pools, copied under the heap's lock
/// by [`PrivateHeap::arenas`](crate::PrivateHeap::arenas).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArenaInfo {
    /// Address of the arena's first byte (its header).
    pub address: usize,
    /// The arena's pools that serve blocks, in address order.
    pub pools: [PoolInfo; USABLE_POOLS_PER_ARENA],
    /// Pools with no owner (free or never used).
    pub free_pools: usize,
    /// Whether the arena is a spare: wholly empty, kept for reuse.
    pub spare: bool,
}

impl ArenaInfo {
    /// Bytes of the arena in live blocks.
    pub fn bytes_in_use(&self) -> usize {
        self.pools.iter().map(PoolInfo::bytes_in_use).sum()
    }

    /// Copies `arena`.
    ///
    /// # Safety
    ///
    /// `arena` is a live arena; the caller holds its heap's small-object
    /// lock (so no pool changes class or owner meanwhile; block counts are
    /// read atomically).
    pub(crate) unsafe fn copy(arena: *mut Arena, spare: bool) -> Self {
        let mut info = ArenaInfo {
            address: arena.addr(),
            pools: [PoolInfo::FREE; USABLE_POOLS_PER_ARENA],
            // SAFETY: caller's contract.
            free_pools: unsafe { Arena::free_pools(arena) },
            spare,
        };
        // SAFETY: caller's contract; pools `1..=carved` have headers.
        unsafe {
            for index in 1..=Arena::carved(arena) {
                let pool = Arena::pool(arena, index);
                let owned = !Pool::owner(pool).is_null();
                let in_use = Pool::in_use(pool);
                if owned || in_use > 0 {
                    info.pools[index - 1] = PoolInfo {
                        class: Some(Pool::class(pool)),
                        state: Pool::state(pool),
                        blocks_in_use: in_use,
                        capacity: Pool::capacity(pool),
                        block_size: block_size(Pool::class(pool)),
                    };
                }
            }
        }
        info
    }
}
