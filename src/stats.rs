//! Statistics: a snapshot of a heap's counters, printed in the spirit of
//! CPython's `sys._debugmallocstats()`.

use crate::config::{ARENA_SIZE, NB_SMALL_SIZE_CLASSES, POOL_SIZE, USABLE_POOLS_PER_ARENA};
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

/// Writes one line as CPython's `printone`: the label padded to 35
/// columns, `=`, the value right-aligned in 21 columns with thousands
/// separators. Returns the value, for totals.
fn printone(
    f: &mut fmt::Formatter<'_>,
    label: fmt::Arguments<'_>,
    value: usize,
) -> Result<usize, fmt::Error> {
    // The label is at most a few dozen bytes: pad it without allocating by
    // counting what was written.
    struct Counting<'a, 'b> {
        f: &'a mut fmt::Formatter<'b>,
        n: usize,
    }
    impl fmt::Write for Counting<'_, '_> {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.n += s.chars().count();
            self.f.write_str(s)
        }
    }
    let mut c = Counting { f, n: 0 };
    fmt::write(&mut c, label)?;
    let n = c.n;
    for _ in n..35 {
        f.write_str(" ")?;
    }
    f.write_str("=")?;
    // Digits with commas, right-aligned in 21 columns.
    let mut buf = [b' '; 32];
    let mut i = buf.len();
    let mut v = value;
    let mut k = 0;
    loop {
        if k == 3 {
            i -= 1;
            buf[i] = b',';
            k = 0;
        }
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        k += 1;
        if v == 0 {
            break;
        }
    }
    let digits = core::str::from_utf8(&buf[i..]).map_err(|_| fmt::Error)?;
    writeln!(f, "{digits:>21}")?;
    Ok(value)
}

impl Stats {
    /// Pools of all classes that hold blocks (used, full, or an owner's
    /// cached empty pool).
    fn pools_in_use(&self) -> usize {
        self.small.pools.iter().sum()
    }
}

/// CPython's `sys._debugmallocstats()` report (`_PyObject_DebugMallocStats`),
/// line for line: the size-class table, the arena lines, and the accounting
/// of every arena byte, whose `Total` adds up to the arenas' size; then
/// pymalloc's own lines (layer 1, purges, requested bytes).
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
        let (mut avail_bytes, mut quantization) = (0, 0);
        for class in 0..NB_SMALL_SIZE_CLASSES {
            let pools = self.small.pools[class];
            if pools == 0 && self.small.blocks_in_use[class] == 0 {
                continue;
            }
            let avail = self.blocks_available(class);
            avail_bytes += avail * block_size(class);
            // CPython's quantization: the tail of each pool that no block
            // of its class fits in.
            quantization += pools * (POOL_SIZE % block_size(class));
            writeln!(
                f,
                "{class:>5} {:>6} {:>11} {:>15} {:>13}",
                block_size(class),
                pools,
                self.small.blocks_in_use[class],
                avail
            )?;
        }
        writeln!(f)?;
        let arenas = self.raw.arena_chunks;
        printone(
            f,
            format_args!("# arenas allocated total"),
            self.small.arenas_allocated,
        )?;
        printone(
            f,
            format_args!("# arenas reclaimed"),
            self.small.arenas_reclaimed,
        )?;
        printone(
            f,
            format_args!("# arenas highwater mark"),
            self.small.arenas_high_water,
        )?;
        printone(f, format_args!("# arenas allocated current"), arenas)?;
        printone(
            f,
            format_args!("{arenas} arenas * {ARENA_SIZE} bytes/arena"),
            arenas * ARENA_SIZE,
        )?;
        writeln!(f)?;
        let unused = (arenas * USABLE_POOLS_PER_ARENA).saturating_sub(self.pools_in_use());
        let mut total = printone(
            f,
            format_args!("# bytes in allocated blocks"),
            self.small.bytes_in_use,
        )?;
        total += printone(f, format_args!("# bytes in available blocks"), avail_bytes)?;
        total += printone(
            f,
            format_args!("{unused} unused pools * {POOL_SIZE} bytes"),
            unused * POOL_SIZE,
        )?;
        // Pool headers live in each arena's first pool.
        total += printone(
            f,
            format_args!("# bytes lost to pool headers"),
            arenas * POOL_SIZE,
        )?;
        // `hardened`: each arena's last pool is a guard page run.
        let guard = arenas * (ARENA_SIZE - (1 + USABLE_POOLS_PER_ARENA) * POOL_SIZE);
        if guard > 0 {
            total += printone(f, format_args!("# bytes in guard pools"), guard)?;
        }
        total += printone(
            f,
            format_args!("# bytes lost to quantization"),
            quantization,
        )?;
        // Arenas are aligned to their size: nothing inside them is lost (an
        // installed arena allocator's extra room lies outside them).
        total += printone(f, format_args!("# bytes lost to arena alignment"), 0)?;
        printone(f, format_args!("Total"), total)?;
        writeln!(f)?;
        printone(
            f,
            format_args!("# empty pools purged (total)"),
            self.small.pools_purged,
        )?;
        printone(f, format_args!("# thread heaps"), self.small.thread_heaps)?;
        printone(
            f,
            format_args!("# medium blocks in use"),
            self.raw.medium_blocks,
        )?;
        printone(
            f,
            format_args!("# medium chunks mapped"),
            self.raw.medium_chunks,
        )?;
        printone(
            f,
            format_args!("# huge blocks in use"),
            self.raw.huge_blocks,
        )?;
        printone(
            f,
            format_args!("# bytes in medium and huge blocks"),
            self.raw.bytes_in_use,
        )?;
        printone(
            f,
            format_args!("# bytes in thread medium caches"),
            self.raw.bytes_cached,
        )?;
        printone(
            f,
            format_args!("# bytes in cached huge mappings"),
            self.raw.huge_cached_bytes,
        )?;
        printone(
            f,
            format_args!("# bytes requested (all blocks)"),
            self.bytes_requested,
        )?;
        printone(
            f,
            format_args!("# bytes lost to rounding up"),
            self.bytes_quantization(),
        )?;
        printone(
            f,
            format_args!("# bytes lost to block headers"),
            self.bytes_headers(),
        )?;
        printone(
            f,
            format_args!("# bytes mapped from the OS"),
            self.bytes_mapped,
        )?;
        Ok(())
    }
}

/// Whether `PYMALLOCSTATS` (CPython's `PYTHONMALLOCSTATS`) is set to a
/// non-empty value: then heaps print their statistics to standard error
/// each time they map a new arena, and the PyMem heap at exit. Read once,
/// without allocating.
pub(crate) fn stats_requested() -> bool {
    use core::sync::atomic::{AtomicU8, Ordering::Relaxed};
    static SETTING: AtomicU8 = AtomicU8::new(0);
    match SETTING.load(Relaxed) {
        1 => false,
        2 => true,
        _ => {
            #[cfg(all(unix, not(miri)))]
            // SAFETY: a NUL-terminated name; getenv returns null or a
            // NUL-terminated string that we only read, at once.
            let set = unsafe {
                let v = libc::getenv(c"PYMALLOCSTATS".as_ptr());
                !v.is_null() && *v != 0
            };
            #[cfg(not(all(unix, not(miri))))]
            let set = false;
            SETTING.store(if set { 2 } else { 1 }, Relaxed);
            set
        }
    }
}

impl Stats {
    /// Prints the report to standard error through a buffer on the stack:
    /// nothing is allocated, so it may run inside the global allocator.
    pub(crate) fn print_to_stderr(&self) {
        let mut out = crate::fatal::Message::new();
        let _ = fmt::write(&mut out, format_args!("{self}\n"));
        out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_reads_like_cpythons_and_adds_up() {
        let mut s = Stats::default();
        s.raw.arena_chunks = 2;
        s.small.arenas_allocated = 3;
        s.small.arenas_reclaimed = 1;
        s.small.arenas_high_water = 2;
        s.small.pools[0] = 3; // 16-byte blocks: 1024 per pool
        s.small.blocks_in_use[0] = 2500;
        s.small.pools[2] = 1; // 48-byte blocks: 341 per pool, 16 bytes of tail
        s.small.blocks_in_use[2] = 7;
        s.small.bytes_in_use = 2500 * 16 + 7 * 48;
        let text = s.to_string();
        let line = |label: &str| {
            text.lines()
                .find(|l| l.starts_with(label))
                .unwrap_or_else(|| panic!("no {label:?} in\n{text}"))
                .to_string()
        };
        assert_eq!(
            line("# arenas allocated total"),
            "# arenas allocated total           =                    3"
        );
        assert_eq!(
            line("2 arenas * 1048576 bytes/arena"),
            "2 arenas * 1048576 bytes/arena     =            2,097,152"
        );
        // With `hardened`, each arena's last pool is a guard, counted as
        // arena overhead.
        let (unused, line_text) = if cfg!(feature = "hardened") {
            (
                "120 unused pools * 16384 bytes",
                "120 unused pools * 16384 bytes     =            1,966,080",
            )
        } else {
            (
                "122 unused pools * 16384 bytes",
                "122 unused pools * 16384 bytes     =            1,998,848",
            )
        };
        assert_eq!(line(unused), line_text);
        assert_eq!(
            line("# bytes lost to quantization"),
            "# bytes lost to quantization       =                   16"
        );
        assert_eq!(
            line("Total"),
            "Total                              =            2,097,152"
        );
        assert!(
            text.contains("    0     16           3            2500           572\n"),
            "{text}"
        );
    }
}
