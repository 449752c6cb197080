//! Statistics: a snapshot of a heap's counters, printed in the spirit of
//! CPython's `sys._debugmallocstats()`.

use crate::config::{NB_SMALL_SIZE_CLASSES, POOL_SIZE};
use crate::raw::RawStats;
use crate::small::SmallStats;
use crate::small::size_class::{block_size, blocks_per_pool};
use core::fmt;

/// A snapshot of a heap's counters, from [`crate::PrivateHeap::stats`].
/// Gathering it takes each layer's lock briefly and allocates nothing.
///
/// ```
/// let heap = pymalloc::PrivateHeap::new();
/// let b = allocator_api2::boxed::Box::new_in([0u8; 100], &heap);
/// let s = heap.stats();
/// assert_eq!(s.bytes_requested, 100);
/// assert_eq!(s.small.blocks_in_use[6], 1); // the 112-byte class
/// println!("{s}"); // a table like sys._debugmallocstats()
/// # drop(b);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Sum of the sizes asked for by live allocations.
    pub bytes_requested: usize,
    /// Usable bytes of live blocks (block sizes).
    pub bytes_in_use: usize,
    /// Bytes currently mapped from the OS.
    pub bytes_mapped: usize,
    /// Layer 2's counters.
    pub small: SmallStats,
    /// Layer 1's counters.
    pub raw: RawStats,
}

impl Stats {
    /// Free blocks of size class `class` in pools that serve it.
    pub fn blocks_available(&self, class: usize) -> usize {
        self.small.pools[class] * blocks_per_pool(class) - self.small.blocks_in_use[class]
    }

    /// Bytes lost to rounding requests up to a size class or block size
    /// (`bytes_in_use - bytes_requested`).
    pub fn bytes_quantization(&self) -> usize {
        self.bytes_in_use.saturating_sub(self.bytes_requested)
    }

    /// Bytes of metadata: each arena's header pool, each medium block's
    /// 16-byte header.
    pub fn bytes_headers(&self) -> usize {
        self.raw.arena_chunks * POOL_SIZE + self.raw.medium_blocks * crate::raw::medium::HEADER
    }
}

impl fmt::Display for Stats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "Small block threshold = {}, in {} size classes.",
            block_size(NB_SMALL_SIZE_CLASSES - 1),
            NB_SMALL_SIZE_CLASSES
        )?;
        writeln!(f)?;
        writeln!(f, "class   size   num pools   blocks in use  avail blocks")?;
        writeln!(f, "-----   ----   ---------   -------------  ------------")?;
        let mut avail_bytes = 0;
        for class in 0..NB_SMALL_SIZE_CLASSES {
            if self.small.pools[class] == 0 && self.small.blocks_in_use[class] == 0 {
                continue;
            }
            let avail = self.blocks_available(class);
            avail_bytes += avail * block_size(class);
            writeln!(
                f,
                "{class:>5} {:>6} {:>11} {:>15} {:>13}",
                block_size(class),
                self.small.pools[class],
                self.small.blocks_in_use[class],
                avail
            )?;
        }
        writeln!(f)?;
        let row = |f: &mut fmt::Formatter<'_>, label: &str, value: usize| {
            writeln!(f, "{label:<44}= {value:>15}")
        };
        row(f, "# arenas allocated total", self.small.arenas_allocated)?;
        row(f, "# arenas reclaimed", self.small.arenas_reclaimed)?;
        row(f, "# arenas highwater mark", self.small.arenas_high_water)?;
        row(f, "# arenas allocated current", self.raw.arena_chunks)?;
        row(f, "# empty pools purged (total)", self.small.pools_purged)?;
        row(f, "# medium blocks in use", self.raw.medium_blocks)?;
        row(f, "# medium chunks mapped", self.raw.medium_chunks)?;
        row(f, "# huge blocks in use", self.raw.huge_blocks)?;
        writeln!(f)?;
        row(
            f,
            "# bytes requested by live allocations",
            self.bytes_requested,
        )?;
        row(f, "# bytes in allocated blocks", self.bytes_in_use)?;
        row(f, "# bytes in available small blocks", avail_bytes)?;
        row(f, "# bytes lost to quantization", self.bytes_quantization())?;
        row(f, "# bytes lost to headers", self.bytes_headers())?;
        row(f, "# bytes mapped from the OS", self.bytes_mapped)?;
        Ok(())
    }
}
