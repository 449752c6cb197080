//! Tunables: the heap's geometry, in one place, with its rules checked at
//! compile time.
//!
//! The defaults are CPython's (3.11–3.13, 64-bit): 16-byte alignment, 32 size
//! classes up to 512 bytes, 16 KiB pools, 1 MiB arenas.

/// Alignment of every small block, and granularity of the size classes.
pub const ALIGNMENT: usize = 16;
/// `log2(ALIGNMENT)`.
pub const ALIGNMENT_SHIFT: u32 = ALIGNMENT.trailing_zeros();
/// Largest request served by the pools (layer 2); larger ones go to layer 1.
pub const SMALL_REQUEST_THRESHOLD: usize = 512;
/// Number of small size classes: 16, 32, …, 512.
pub const NB_SMALL_SIZE_CLASSES: usize = SMALL_REQUEST_THRESHOLD / ALIGNMENT;
/// Size of a pool: a run of blocks of one size class.
pub const POOL_SIZE: usize = 16 * 1024;
/// `log2(POOL_SIZE)`.
pub const POOL_SHIFT: u32 = POOL_SIZE.trailing_zeros();
/// Size of an arena: an `ARENA_SIZE`-aligned chunk carved into pools.
pub const ARENA_SIZE: usize = 1024 * 1024;
/// `log2(ARENA_SIZE)`.
pub const ARENA_SHIFT: u32 = ARENA_SIZE.trailing_zeros();
/// Pools per arena, counting the first one, which holds the arena's header
/// and every pool's header ([ref:arena-layout]).
pub const POOLS_PER_ARENA: usize = ARENA_SIZE / POOL_SIZE;
/// Pools per arena that serve blocks: all but the first, and with the
/// `hardened` feature all but the last too, which is a guard (made
/// inaccessible, so an overflow off the arena's end faults).
pub const USABLE_POOLS_PER_ARENA: usize = POOLS_PER_ARENA - 1 - HARDENED as usize;
/// Whether the `hardened` feature is on.
const HARDENED: bool = cfg!(feature = "hardened");

/// Granularity (and alignment) of every chunk layer 1 takes from the OS, and of
/// the arena map. Equal to the arena size so arenas are chunks.
pub const CHUNK_SIZE: usize = ARENA_SIZE;
/// `log2(CHUNK_SIZE)`.
pub const CHUNK_SHIFT: u32 = CHUNK_SIZE.trailing_zeros();
/// Size of a chunk that layer 1 carves into medium blocks: over twice
/// `MEDIUM_MAX`, so that the largest medium blocks share a chunk. A heap
/// bounded below it maps its medium blocks one by one instead
/// (`RawHeap::alloc_medium_mapped`).
pub const MEDIUM_CHUNK_SIZE: usize = 16 * CHUNK_SIZE;
/// Largest request (after alignment padding) served by the medium allocator;
/// larger requests are mapped directly from the OS ("huge"). 4 MiB: freed
/// buffers of a few MiB are pages that the next medium requests reuse,
/// where a huge mapping kept for reuse serves only a request of about its
/// size. Eight vectors growing side by side to 4 MiB (`vec_growth_8x`)
/// peaked at 24.8 against 28.7 MB with 1 MiB and 4 MiB chunks, and two
/// threads building and dropping JSON documents (`json_2t`) took 171
/// against 182 ms, medians of 7 interleaved runs (`workloads peak` and
/// `workloads time` of each build).
pub const MEDIUM_MAX: usize = 4 * 1024 * 1024;
/// How long a pool stays empty before its pages are given back to the OS
/// (`madvise(MADV_DONTNEED)`): long enough that churn at a steady size reuses
/// pools without a system call, short enough that RSS follows frees. Also
/// how long a cached huge mapping keeps its pages; that delay, and the
/// spare medium chunks' `POOL_PURGE_INTERVAL`, are timed on a coarse clock
/// (the last scheduler tick, read without the timestamp counter), so they
/// may end a tick (1–10 ms) or more early or late (see `os::Stamp`).
pub const PURGE_DELAY: core::time::Duration = core::time::Duration::from_millis(10);
/// How often empty pools are purged, at most, and the window that decides
/// how many: a pass purges only as many pools (empty for `PURGE_DELAY`) as
/// stayed unused over the whole interval since the last pass, so a program
/// that drops and rebuilds a structure reuses its pools without page faults
/// or system calls, while pools it stopped needing go back one to two
/// intervals after they emptied.
pub const POOL_PURGE_INTERVAL: core::time::Duration = core::time::Duration::from_millis(50);
/// Wholly empty arenas kept mapped for reuse (their pages are still purged
/// after `PURGE_DELAY`): a structure of a few MiB that is built and dropped
/// again and again reuses its arenas instead of mapping and faulting them
/// in every time. Beyond this, empty arenas are unmapped at once.
pub const SPARE_ARENAS: usize = 4;
/// Freed huge mappings (blocks over `MEDIUM_MAX`) layer 1 keeps for reuse
/// instead of unmapping them: a later huge request that fits one (at most
/// twice its size, alignment compatible) takes it without a system call.
/// Eight covers a program that churns a handful of large buffers (the
/// growth of a few vectors side by side frees one mapping per doubling);
/// more would mostly hold address space nobody asks for again.
pub const HUGE_CACHE_MAPPINGS: usize = 8;
/// Most bytes of freed huge mappings kept at once (and the largest mapping
/// kept at all). Their pages are purged after `PURGE_DELAY` (checked on
/// layer 1's and layer 2's slow paths), or at once beyond
/// `HUGE_CACHE_RESIDENT`, so past that what they hold is address space,
/// not memory; still they count in
/// `bytes_mapped` and against a heap's limit (a bounded heap drops them
/// before refusing a mapping). 64 MiB: the cost a cache saves is a
/// `mmap`/`munmap` pair (microseconds); a mapping much larger than this
/// costs far more to fault in and fill than to map, so caching it saves
/// nothing worth the address space.
pub const HUGE_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Of the cached huge mappings, the bytes whose pages stay resident until
/// `PURGE_DELAY` has passed; a mapping freed beyond it is purged as it is
/// cached (its reuse still saves the `mmap`/`munmap` pair, not the page
/// faults). Keeps a program that frees and allocates large buffers from
/// holding tens of MiB more than it uses at its peak. 32 MiB (measured
/// when blocks over 1 MiB were huge): eight
/// vectors growing side by side to 4 MiB each (`vec_growth_8x`) refill
/// what the last round freed without faulting it in again (16 MiB took
/// 3.2x the page faults and 1.2x the time, by `/usr/bin/time` on
/// `workloads time =vec_growth_8x` with each value), with the same peak
/// RSS, since the cache empties as the vectors grow.
pub const HUGE_CACHE_RESIDENT: usize = 32 * 1024 * 1024;
/// Empty pools a thread heap keeps for reuse without the heap's lock, and
/// takes from the arenas at once when it needs a pool: threads that fill
/// and empty pools fast (building and dropping a tree) take the lock once
/// per this many pools instead of once per pool. What it pins is bounded:
/// `THREAD_SPARE_POOLS * POOL_SIZE` (128 KiB) per thread heap, of which
/// freshly taken pools are untouched address space.
pub const THREAD_SPARE_POOLS: usize = 8;
/// Shards of the medium allocator, each a TLSF allocator over its own
/// chunks under its own lock. A thread allocates from the shard of its
/// thread heap (thread heaps take shards in turn), and a block is freed to
/// its chunk's shard: threads that miss their medium caches at once do
/// not contend on one lock, nor bounce one set of free lists between
/// cores. Each shard keeps up to `MEDIUM_SPARE_CHUNKS` wholly free chunks.
pub const MEDIUM_SHARDS: usize = 4;
/// Wholly free medium chunks each shard keeps mapped for reuse: a program
/// that builds and drops medium structures of a few MiB reuses the chunks
/// (and their pages) instead of mapping and faulting them in again. Every
/// `POOL_PURGE_INTERVAL` a shard unmaps as many as stayed unused over the
/// whole interval; past this many, a chunk is unmapped as soon as it
/// empties. One (measured with 4 MiB chunks): with four, the growth of
/// eight vectors side by side (`vec_growth_8x`) peaked 3 MiB higher (31
/// against 28 MiB maxrss, by `/usr/bin/time` as for
/// `HUGE_CACHE_RESIDENT`) for no measurable speed there or in `json_2t`
/// (171 against 173 ms, medians of 9 interleaved runs); with none, every
/// chunk the growth empties is mapped and faulted in again (3.2x the page
/// faults, 1.2x the time).
pub const MEDIUM_SPARE_CHUNKS: usize = 1;
/// Smallest free medium block whose pages layer 1 purges once it stayed
/// free from one check of its shard to the next, `PURGE_DELAY` or more
/// apart (a block taken, split or merged meanwhile starts over; wholly
/// free chunks aside; checks on the shard's medium calls and on pool
/// transitions). Blocks this large were huge when
/// `MEDIUM_MAX` was 1 MiB, and their pages went back after the delay.
/// `python3 -m test test_dict test_list test_json` under `LD_PRELOAD`
/// peaked at 58.6 MB maxrss without it, 51.2 with it (51.4 when such
/// blocks were huge), by `/usr/bin/time`; `vec_growth_8x`, which reuses
/// its freed buffers within a millisecond, took no more page faults.
pub const MEDIUM_PURGE_MIN: usize = 1024 * 1024;
/// Largest alignment the medium allocator serves; larger alignments are
/// served by a direct, suitably aligned mapping.
pub const MEDIUM_MAX_ALIGN: usize = 64 * 1024;

/// Largest request the per-thread medium cache serves (the cache keeps
/// freed medium blocks for reuse by the thread that freed them, with no
/// lock): every medium request, so a buffer of up to 4 MiB that a thread
/// allocates and frees again and again costs no lock.
pub const MEDIUM_CACHE_MAX: usize = MEDIUM_MAX;
/// Most usable bytes one thread keeps in its medium cache, per heap: enough
/// for steady churn (a few 64 KiB buffers, hundreds of 1 KiB ones), small
/// enough that what it pins is minor. An empty cache takes one block
/// whatever its size, so a thread pins at most `MEDIUM_CACHE_MAX` (4 MiB)
/// when its last medium free was of a large block.
pub const MEDIUM_CACHE_BYTES: usize = 256 * 1024;
/// Smallest `alloc_zeroed` request whose whole pages are zeroed by purging
/// them (`madvise(MADV_DONTNEED)`: they read zero from the OS, faulted in
/// only where touched) rather than by writing them, when the block is not
/// known to read zero already. jemalloc zeroes its large extents the same
/// way. Below this, writing is cheaper than the system call and the faults.
pub const ZERO_BY_PURGE: usize = 256 * 1024;
/// Bins of the medium cache per doubling of size: a cached request is
/// rounded up by at most `1 / MEDIUM_CACHE_BIN_STEPS` (12.5%).
pub const MEDIUM_CACHE_BIN_STEPS: u32 = 8;

const _: () = assert!(ALIGNMENT.is_power_of_two() && ALIGNMENT >= 2 * size_of::<usize>());
const _: () = assert!(SMALL_REQUEST_THRESHOLD.is_multiple_of(ALIGNMENT));
const _: () = assert!(NB_SMALL_SIZE_CLASSES <= 64);
const _: () = assert!(POOL_SIZE.is_power_of_two() && ARENA_SIZE.is_power_of_two());
const _: () = assert!(ARENA_SIZE.is_multiple_of(POOL_SIZE) && POOLS_PER_ARENA >= 2);
const _: () = assert!(POOL_SIZE >= SMALL_REQUEST_THRESHOLD * 2);
const _: () = assert!(MEDIUM_CHUNK_SIZE.is_multiple_of(CHUNK_SIZE));
const _: () = assert!(MEDIUM_MAX + MEDIUM_MAX_ALIGN < MEDIUM_CHUNK_SIZE / 2);
const _: () = assert!(MEDIUM_MAX_ALIGN.is_power_of_two() && MEDIUM_MAX_ALIGN <= CHUNK_SIZE);
const _: () = assert!(SMALL_REQUEST_THRESHOLD.is_power_of_two());
const _: () = assert!(MEDIUM_CACHE_MAX.is_power_of_two() && MEDIUM_CACHE_MAX <= MEDIUM_MAX);
const _: () = assert!(MEDIUM_CACHE_BIN_STEPS.is_power_of_two());
const _: () = assert!(HUGE_CACHE_MAPPINGS > 0 && HUGE_CACHE_BYTES > MEDIUM_MAX);
