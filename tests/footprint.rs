//! Footprint: memory goes back to the OS after a peak, bounded heaps fail
//! cleanly at their limit, statistics match a workload with known live bytes.

use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec;
use core::alloc::Layout;
use pymalloc::PrivateHeap;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::Relaxed;

/// A purge interval and the lag of the clock that times spare chunks (a
/// coarse one: about a scheduler tick, 10 ms at most, behind; two ticks
/// allowed for a busy machine).
const INTERVAL_AND_TICK: std::time::Duration = pymalloc::config::POOL_PURGE_INTERVAL
    .checked_add(std::time::Duration::from_millis(20))
    .unwrap();

/// The tests run one at a time, so that RSS readings see only their own.
static RSS_LOCK: Mutex<()> = Mutex::new(());

/// Resident bytes of this process, from `/proc/self/statm`; `None` under
/// Miri, or when `PYMALLOC_TEST_NO_RSS` is set (under valgrind, whose own
/// shadow memory does not shrink when ours does).
fn rss() -> Option<usize> {
    if cfg!(miri) || std::env::var_os("PYMALLOC_TEST_NO_RSS").is_some() {
        return None;
    }
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

fn scale(n: usize) -> usize {
    if cfg!(miri) { n / 200 } else { n }
}

#[test]
fn a_peak_of_small_and_medium_blocks_goes_back_to_the_os() {
    let _guard = RSS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let heap = PrivateHeap::new();
    let before = rss();
    {
        let small: std::vec::Vec<Box<[u8; 96], &PrivateHeap>> = (0..scale(1_000_000))
            .map(|i| Box::new_in([i as u8; 96], &heap))
            .collect();
        let medium: std::vec::Vec<Vec<u8, &PrivateHeap>> = (0..scale(2_000))
            .map(|i| {
                let mut v = Vec::with_capacity_in(20_000 + i, &heap);
                v.resize(20_000 + i, 1);
                v
            })
            .collect();
        let peak = heap.stats();
        assert!(peak.bytes_mapped >= scale(96_000_000) + scale(40_000_000));
        if let (Some(b), Some(p)) = (before, rss()) {
            assert!(p >= b + scale(120_000_000), "rss {b} -> {p}");
        }
        assert!(small.iter().enumerate().all(|(i, b)| b[95] == i as u8));
        assert!(medium.iter().all(|v| v[19_999] == 1));
    }
    // Freeing everything empties every arena: all but the spares and the
    // one pinned by the class's cached pool are unmapped at once, and the
    // medium chunks but the shard's spares and one that the thread's medium
    // cache (at most 256 KiB of blocks) may pin.
    let after = heap.stats();
    assert_eq!(after.bytes_in_use, 0);
    assert!(after.raw.bytes_cached <= 256 << 10, "{after:?}");
    let arenas = pymalloc::config::SPARE_ARENAS + 1;
    let chunk = pymalloc::config::MEDIUM_CHUNK_SIZE;
    let spares = pymalloc::config::MEDIUM_SPARE_CHUNKS;
    assert!(
        after.bytes_mapped <= arenas * (1 << 20) + (spares + 1) * chunk,
        "{after:?}"
    );
    // The spare chunks stayed unused for two intervals: the next pool
    // transitions (a new size class each) give them back.
    let mut probes = std::vec::Vec::new();
    for round in 0..2 {
        std::thread::sleep(INTERVAL_AND_TICK);
        for k in 0..3 {
            let mut probe = Vec::with_capacity_in(200 + 48 * (3 * round + k), &heap);
            probe.push(1u8);
            probes.push(probe);
        }
    }
    let later = heap.stats();
    assert!(
        later.bytes_mapped <= arenas * (1 << 20) + 2 * chunk,
        "{later:?}"
    );
    if let (Some(b), Some(a)) = (before, rss()) {
        assert!(a < b + scale(16_000_000), "rss before {b}, after free {a}");
    }
    drop(probes);
    heap.trim();
    let trimmed = heap.stats();
    assert_eq!(trimmed.bytes_mapped, 0, "{trimmed:?}");
    heap.validate();
}

#[test]
fn empty_pools_are_purged_after_the_delay() {
    let _guard = RSS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let heap = PrivateHeap::new();
    let layout_a = Layout::from_size_align(64, 8).unwrap();
    let layout_b = Layout::from_size_align(128, 8).unwrap();
    let a = &heap;
    use allocator_api2::alloc::Allocator;
    // Interleave two classes so their pools share arenas; freeing one class
    // empties its pools without emptying the arenas.
    let mut xs = std::vec::Vec::new();
    let mut ys = std::vec::Vec::new();
    for _ in 0..scale(200_000) {
        xs.push(a.allocate(layout_a).unwrap().cast::<u8>());
        ys.push(a.allocate(layout_b).unwrap().cast::<u8>());
    }
    for p in xs.drain(..) {
        // SAFETY: each block freed once with its layout.
        unsafe { a.deallocate(p, layout_a) };
    }
    let before = heap.stats();
    assert!(before.small.arenas_allocated > 0);
    let emptied = (scale(200_000) * 64 / pymalloc::config::POOL_SIZE) - 1;
    // Any pool transition checks the purge queue: each round starts a new
    // class. Unused over a whole interval, the pools go back within two.
    let mut probes = std::vec::Vec::new();
    for round in 0..3 {
        std::thread::sleep(pymalloc::config::POOL_PURGE_INTERVAL + pymalloc::config::PURGE_DELAY);
        let probe = Layout::from_size_align(300 + 16 * round, 8).unwrap();
        probes.push((a.allocate(probe).unwrap(), probe));
    }
    let after = heap.stats();
    // All but the thread's spare pools (and the ones the probes took).
    let spares = pymalloc::config::THREAD_SPARE_POOLS + 3;
    assert!(
        after.small.pools_purged - before.small.pools_purged + spares >= emptied,
        "{} pools emptied, {} -> {} purged",
        emptied,
        before.small.pools_purged,
        after.small.pools_purged
    );
    heap.validate();
    // Purged pools are reused (and read zero where the OS zeroed them).
    for _ in 0..scale(200_000) {
        let p = a.allocate_zeroed(layout_a).unwrap().cast::<u8>();
        // SAFETY: a live 64-byte block.
        let bytes = unsafe { core::slice::from_raw_parts(p.as_ptr(), 64) };
        assert!(bytes.iter().all(|&b| b == 0));
        xs.push(p);
    }
    heap.validate();
    for p in xs {
        // SAFETY: each block freed once with its layout.
        unsafe { a.deallocate(p, layout_a) };
    }
    for p in ys {
        // SAFETY: each block freed once with its layout.
        unsafe { a.deallocate(p, layout_b) };
    }
    for (p, layout) in probes {
        // SAFETY: freed once with its layout.
        unsafe { a.deallocate(p.cast(), layout) };
    }
    assert_eq!(heap.stats().bytes_in_use, 0);
}

#[test]
fn a_bounded_heap_allows_exactly_its_limit() {
    let _guard = RSS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // A huge block of `map` - 64 bytes maps exactly `map` (64-byte header),
    // plus its guard page with `hardened`.
    let map = pymalloc::config::MEDIUM_MAX + (1 << 20);
    let size = map - 64;
    let guard = if cfg!(feature = "hardened") {
        pymalloc::os::page_size()
    } else {
        0
    };
    let layout = Layout::from_size_align(size, 8).unwrap();
    use allocator_api2::alloc::Allocator;

    let exact = PrivateHeap::with_limit(map + guard);
    let p = (&exact).allocate(layout).expect("exactly at the limit");
    assert_eq!(exact.stats().bytes_mapped, map + guard);
    // Nothing more fits, not even one small block.
    assert!((&exact).allocate(Layout::new::<u64>()).is_err());
    // SAFETY: live block with this layout.
    unsafe { (&exact).deallocate(p.cast(), layout) };
    // Freed below the limit: usable again.
    assert!((&exact).allocate(Layout::new::<u64>()).is_ok());

    let over = PrivateHeap::with_limit(map + guard - 1);
    assert!((&over).allocate(layout).is_err(), "one byte over the limit");
    assert_eq!(over.stats().bytes_mapped, 0);
    assert_eq!(over.limit(), map + guard - 1);
}

#[test]
fn a_heap_bounded_below_a_medium_chunk_maps_medium_blocks_alone() {
    use allocator_api2::alloc::Allocator;
    let chunk = pymalloc::config::MEDIUM_CHUNK_SIZE;
    let heap = PrivateHeap::with_limit(chunk / 2);
    let a = &heap;
    // No room for a medium chunk: each medium block gets a mapping of its
    // own, reads and writes like any other, grows and is freed by size.
    let sizes = [600, 5000, 70_000, 1 << 20];
    let mut blocks = std::vec::Vec::new();
    for (i, &n) in sizes.iter().enumerate() {
        let layout = Layout::from_size_align(n, 8).unwrap();
        let p = a
            .allocate(layout)
            .expect("served without a chunk")
            .cast::<u8>();
        // SAFETY: a fresh block of `n` bytes.
        unsafe { p.as_ptr().write_bytes(i as u8 + 1, n) };
        blocks.push((p, layout));
    }
    let s = heap.stats();
    assert_eq!(s.raw.medium_chunks, 0, "{s:?}");
    assert_eq!(s.raw.huge_blocks, sizes.len(), "{s:?}");
    assert!(s.bytes_mapped <= heap.limit(), "{s:?}");
    let (p, old) = blocks.pop().unwrap();
    let new = Layout::from_size_align(old.size() + 300_000, 8).unwrap();
    // SAFETY: live with `old`; `new` is larger.
    let q = unsafe { a.grow(p, old, new) }.expect("grows").cast::<u8>();
    // SAFETY: the first `old.size()` bytes were kept.
    unsafe {
        assert!(
            (0..old.size())
                .step_by(4096)
                .all(|i| q.as_ptr().add(i).read() == 4)
        );
    }
    blocks.push((q, new));
    for (i, (p, layout)) in blocks.into_iter().enumerate() {
        // SAFETY: live with `layout`; its bytes were written above.
        unsafe {
            assert_eq!(p.as_ptr().read(), i as u8 + 1);
            a.deallocate(p, layout);
        }
    }
    let s = heap.stats();
    assert_eq!(
        (s.bytes_in_use, s.bytes_requested, s.raw.huge_blocks),
        (0, 0, 0),
        "{s:?}"
    );
    heap.validate();
    // The C interface too: counted as what the mapping holds, freed by it.
    let p = heap.malloc(1000);
    assert!(!p.is_null());
    // SAFETY: a live block of at least 1000 bytes, freed once.
    unsafe {
        p.write_bytes(9, 1000);
        assert!(heap.usable_size(core::ptr::NonNull::new(p).unwrap()) >= 1000);
        heap.free(p);
    }
    assert_eq!(heap.stats().bytes_requested, 0);
    // A block mapped alone outlives the bound: once lifted, its free by
    // size still goes by its chunk, not into a thread's medium cache.
    let layout = Layout::from_size_align(3000, 8).unwrap();
    let p = a.allocate(layout).unwrap();
    heap.set_limit(usize::MAX);
    // SAFETY: live with `layout`, freed once.
    unsafe { a.deallocate(p.cast(), layout) };
    let s = heap.stats();
    assert_eq!(
        (s.bytes_in_use, s.raw.huge_blocks, s.raw.medium_blocks),
        (0, 0, 0),
        "{s:?}"
    );
    heap.validate();
}

#[test]
fn realloc_across_the_limit_keeps_the_old_block() {
    let _guard = RSS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let heap = PrivateHeap::with_limit(8 << 20);
    let mut v: Vec<u64, &PrivateHeap> = Vec::new_in(&heap);
    v.extend(0..scale(100_000) as u64);
    let cap = v.capacity();
    // Growing to 16 MiB needs a mapping past the limit: reported, not fatal.
    assert!(v.try_reserve_exact(2 << 20).is_err());
    assert_eq!(v.capacity(), cap);
    assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
    // GlobalAlloc::realloc: null, and the old block still valid.
    use std::alloc::GlobalAlloc;
    let layout = Layout::from_size_align(1 << 20, 8).unwrap();
    // SAFETY: non-zero layout; freed below with the layout it has then.
    unsafe {
        let p = heap.alloc(layout);
        assert!(!p.is_null());
        p.write_bytes(7, 1 << 20);
        assert!(heap.realloc(p, layout, 64 << 20).is_null());
        assert_eq!(*p.add((1 << 20) - 1), 7);
        heap.dealloc(p, layout);
    }
    heap.set_limit(usize::MAX);
    assert!(v.try_reserve_exact(2 << 20).is_ok());
    heap.validate();
}

#[test]
fn threads_racing_to_the_limit_never_pass_it() {
    let _guard = RSS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let limit = 64 << 20;
    let heap = PrivateHeap::with_limit(limit);
    let threads = if cfg!(miri) { 2 } else { 8 };
    let layout = Layout::from_size_align(if cfg!(miri) { 8 << 10 } else { 300 << 10 }, 8).unwrap();
    use allocator_api2::alloc::Allocator;
    let held: std::vec::Vec<std::vec::Vec<usize>> = std::thread::scope(|s| {
        let handles: std::vec::Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = std::vec::Vec::new();
                    while let Ok(p) = (&heap).allocate(layout) {
                        assert!(heap.stats().bytes_mapped <= limit);
                        mine.push(p.cast::<u8>().as_ptr() as usize);
                        if cfg!(miri) && mine.len() > 4 {
                            break;
                        }
                    }
                    mine
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(heap.stats().bytes_mapped <= limit);
    let total: usize = held.iter().map(std::vec::Vec::len).sum();
    if !cfg!(miri) {
        // The limit was reached: most of it is in use.
        assert!(total * layout.size() > limit / 2, "{total} blocks");
    }
    heap.validate();
    for p in held.into_iter().flatten() {
        // SAFETY: each block was allocated with `layout` and is freed once.
        unsafe { (&heap).deallocate(core::ptr::NonNull::new(p as *mut u8).unwrap(), layout) };
    }
    assert_eq!(heap.stats().bytes_in_use, 0);
    assert!((&heap).allocate(layout).is_ok());
}

#[test]
fn stats_match_a_workload_with_known_live_bytes() {
    let _guard = RSS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let heap = PrivateHeap::new();
    let n = scale(10_000);
    let mut keep = std::vec::Vec::new();
    for size in [8usize, 16, 17, 100, 512] {
        for _ in 0..n {
            let mut v: Vec<u8, &PrivateHeap> = Vec::with_capacity_in(size, &heap);
            v.push(1);
            keep.push(v);
        }
    }
    let medium: Vec<u8, &PrivateHeap> = Vec::with_capacity_in(10_000, &heap);
    let s = heap.stats();
    assert_eq!(s.bytes_requested, n * (8 + 16 + 17 + 100 + 512) + 10_000);
    // Classes: 8 and 16 -> 16 B (class 0), 17 -> 32 B, 100 -> 112 B, 512.
    assert_eq!(s.small.blocks_in_use[0], 2 * n);
    assert_eq!(s.small.blocks_in_use[1], n);
    assert_eq!(s.small.blocks_in_use[6], n);
    assert_eq!(s.small.blocks_in_use[31], n);
    assert_eq!(s.small.bytes_in_use, n * (16 + 16 + 32 + 112 + 512));
    for (class, blocks) in [(0, 2 * n), (1, n), (6, n), (31, n)] {
        let per_pool = pymalloc::config::POOL_SIZE / (16 * (class + 1));
        assert_eq!(
            s.small.pools[class],
            blocks.div_ceil(per_pool),
            "class {class}"
        );
        assert_eq!(
            s.blocks_available(class),
            s.small.pools[class] * per_pool - blocks
        );
    }
    assert_eq!(s.raw.medium_blocks, 1);
    // Medium requests are rounded up by at most 1/8, to the bin of the
    // per-thread medium cache.
    assert!(s.raw.bytes_in_use >= 10_000 && s.raw.bytes_in_use < 10_000 * 9 / 8 + 64);
    assert_eq!(s.bytes_quantization(), s.bytes_in_use - s.bytes_requested);
    let text = s.to_string();
    assert!(text.contains("# bytes in allocated blocks"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.split_whitespace().take(2).eq(["31", "512"])),
        "{text}"
    );
    drop((keep, medium));
    let s = heap.stats();
    assert_eq!((s.bytes_requested, s.bytes_in_use), (0, 0));
}

#[test]
fn spare_medium_chunks_stay_while_reused_and_go_once_unused() {
    let _guard = RSS_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // Layer 1 alone: a `PrivateHeap`'s per-thread medium cache would serve
    // the churn below without reaching it. One thread: one shard.
    let pages = CountingPages::default();
    let heap = pymalloc::RawHeap::<&CountingPages>::with_source(&pages);
    let chunk = pymalloc::config::MEDIUM_CHUNK_SIZE;
    let big = Layout::from_size_align(200_000, 8).unwrap();
    let medium = Layout::from_size_align(2000, 8).unwrap();
    // A block that stays: its chunk is never wholly free, and serves the
    // small probes at the end.
    let anchor = heap.allocate(big).unwrap();
    // As many chunks' worth of blocks as a shard keeps, built and dropped
    // five times within an interval: the chunks are kept and reused, never
    // unmapped and mapped again.
    let spares = pymalloc::config::MEDIUM_SPARE_CHUNKS;
    let build = || -> std::vec::Vec<_> {
        (0..spares * chunk / 200_000)
            .map(|_| {
                let p = heap.allocate(big).unwrap();
                // SAFETY: a live block of 200_000 bytes.
                unsafe { p.as_ptr().write_bytes(3, 200_000) };
                p
            })
            .collect()
    };
    let drop_all = |blocks: std::vec::Vec<core::ptr::NonNull<u8>>| {
        for p in blocks {
            // SAFETY: allocated with `big`, freed once.
            unsafe { heap.deallocate(p, big) };
        }
    };
    drop_all(build());
    let chunks = heap.stats().medium_chunks;
    assert!((2..=spares + 1).contains(&chunks), "{chunks} chunks");
    let started = std::time::Instant::now();
    let maps = pages.maps.load(Relaxed);
    for _ in 0..5 {
        drop_all(build());
    }
    // (Only checkable if this thread was not descheduled meanwhile.)
    if started.elapsed() < pymalloc::config::POOL_PURGE_INTERVAL {
        assert_eq!(pages.maps.load(Relaxed), maps, "chunks mapped again");
        assert_eq!(heap.stats().medium_chunks, chunks, "released while reused");
    }
    // Unused for two whole intervals, the spares go back: the clock is
    // checked every few dozen medium calls (served by the anchor's chunk,
    // the best fit).
    let unmaps = pages.unmaps.load(Relaxed);
    for _ in 0..2 {
        std::thread::sleep(INTERVAL_AND_TICK);
        for _ in 0..200 {
            let p = heap.allocate(medium).unwrap();
            // SAFETY: live block with this layout.
            unsafe { heap.deallocate(p, medium) };
        }
    }
    let s = heap.stats();
    assert_eq!(pages.unmaps.load(Relaxed), unmaps + chunks - 1, "{s:?}");
    assert_eq!(s.medium_chunks, 1, "{s:?}");
    assert!(s.bytes_mapped <= chunk, "{s:?}");
    // SAFETY: allocated with `big`, freed once.
    unsafe { heap.deallocate(anchor, big) };
    heap.validate();
}

/// The OS's pages, counting the chunks mapped and unmapped.
#[derive(Default)]
struct CountingPages {
    maps: AtomicUsize,
    unmaps: AtomicUsize,
}

// SAFETY: forwards every call to `OsPages`, which upholds the contract.
unsafe impl pymalloc::PageSource for &CountingPages {
    fn map(&self, size: usize, align: usize) -> Option<core::ptr::NonNull<u8>> {
        self.maps.fetch_add(1, Relaxed);
        pymalloc::OsPages.map(size, align)
    }
    unsafe fn unmap(&self, ptr: core::ptr::NonNull<u8>, size: usize, align: usize) {
        self.unmaps.fetch_add(1, Relaxed);
        // SAFETY: forwarded contract.
        unsafe { pymalloc::OsPages.unmap(ptr, size, align) }
    }
    unsafe fn purge(&self, ptr: core::ptr::NonNull<u8>, size: usize) -> bool {
        // SAFETY: forwarded contract.
        unsafe { pymalloc::OsPages.purge(ptr, size) }
    }
}

#[test]
fn large_zeroed_blocks_read_zero_after_dirty_reuse() {
    use core::alloc::GlobalAlloc;
    let heap = PrivateHeap::new();
    // Medium (purged whole pages, written ends), huge, and just under the
    // purge threshold (written); odd sizes leave partial pages at the end.
    let sizes = [
        pymalloc::config::ZERO_BY_PURGE - 16,
        pymalloc::config::ZERO_BY_PURGE + 4096 * 3 + 17,
        (1 << 20) - 8,
        (3 << 20) + 5,
    ];
    for size in sizes {
        let layout = Layout::from_size_align(size, 8).unwrap();
        for round in 0..3 {
            // SAFETY: non-zero layout; each block freed once with it.
            unsafe {
                let p = heap.alloc_zeroed(layout);
                assert!(!p.is_null());
                let bytes = core::slice::from_raw_parts(p, size);
                assert!(
                    bytes.iter().all(|&b| b == 0),
                    "size {size} round {round}: a non-zero byte"
                );
                // Dirty it all, so the next round reuses a dirty block.
                p.write_bytes(0xAB, size);
                heap.dealloc(p, layout);
            }
        }
    }
    heap.validate();
}
