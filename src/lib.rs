//! # pymalloc
//!
//! CPython's layered memory manager for Rust: a private heap that serves as
//! the `#[global_allocator]`, as the allocator of a collection
//! (`Vec::new_in(&heap)`), or through CPython's `PyMem_*` functions
//! ([`pymem`], with debug hooks in [`pymem_debug`]).
//!
//! ```text
//!     ObjectPool<T>: object-specific allocators (layer 3)
//!     PyMem_* / PyObject_* (Rust and C), debug hooks
//!   +----------------------------------------------------+
//!   |  PrivateHeap: GlobalAlloc + Allocator, routes by   |
//!   |  size: <= 512 B -> pools, larger -> RawHeap        |
//!   +---------------------------+------------------------+
//!   | Arena / Pool  (layer 2)   |                        |
//!   | 1 MiB arenas, 16 KiB      |  RawHeap (layer 1)     |
//!   | pools, 32 size classes    |  medium: TLSF in 16 MiB|
//!   |         arena chunks <----+  chunks; huge: mapped  |
//!   +---------------------------+------------------------+
//!   |       OS pages (layer 0): mmap / VirtualAlloc       |
//!   +----------------------------------------------------+
//! ```
//!
//! ## The layers as types
//!
//! | layer | type | owns |
//! |---|---|---|
//! | 0 | [`OsPages`] ([`PageSource`]) | nothing: maps, unmaps and purges pages |
//! | 1 | [`RawHeap`] | every chunk the heap maps; medium and huge blocks; byte accounting and the bound |
//! | 2 | [`Arena`] | one 1 MiB chunk from layer 1 and its empty pools |
//! | 2 | [`Pool`] | 16 KiB of an arena: blocks of one size class, their free list |
//! | 3 | [`ObjectPool`] | typed objects of one type over a heap |
//! | top | [`PrivateHeap`] | a `RawHeap`, the arenas, the thread heaps; `GlobalAlloc` and `Allocator` |
//!
//! [`PrivateHeap::for_each_arena`] shows the arenas and pools of a heap
//! ([`ArenaInfo`], [`PoolInfo`]).
//!
//! ## Strategy
//!
//! Small requests (at most 512 bytes) are rounded to one of 32 size classes
//! of 16-byte steps and served from *pools*: 16 KiB runs of equal blocks with
//! a free list and a bump pointer over never-used blocks. Pools are carved
//! from 1 MiB *arenas*; arenas with free pools are used fullest first so that
//! nearly empty ones drain and go back to the OS. Larger requests go to the
//! raw heap: a TLSF allocator for medium sizes (up to 4 MiB), a mapping of
//! their own for huge ones. A process-wide *arena map* finds any block's
//! chunk, hence its size, from its address alone.
//!
//! CPython's pymalloc runs under one lock (the GIL); a Rust global allocator
//! is called from every thread at once. So each thread owns pools through
//! a *thread heap*: it allocates and frees its own blocks with no lock and
//! no atomic read-modify-write, a block freed by another thread reaches its
//! owner with one compare-and-swap, and the pools of exited threads are
//! adopted by new ones. Freed medium blocks (up to 4 MiB) stay in a small
//! per-thread cache; the medium allocator behind it is sharded, a lock per
//! shard. Other locks are taken only to move pools, arenas and chunks.
//!
//! ## Glossary
//!
//! * **OS page**: the unit the OS maps (4 KiB here).
//! * **chunk**: a `CHUNK_SIZE`-aligned region layer 1 maps: an arena, a
//!   medium chunk, or one huge block.
//! * **arena**: a 1 MiB chunk carved into pools. (Not mimalloc's "arena",
//!   which is a large OS reservation.)
//! * **pool**: 16 KiB of one arena, serving blocks of one size class.
//! * **block**: the memory handed to the user.
//! * **size class**: a block size; class `i` serves `16 * (i + 1)` bytes.
//! * **used / full / empty pool**: some / all / none of its blocks allocated.
//! * **thread heap**: one thread's used pools and medium cache, for one heap.
//! * **remote free**: a free by a thread that does not own the block's pool.
//! * **orphan**: a thread heap whose thread has exited, waiting for adoption.
//!
//! | size class | block size | blocks per pool |
//! |-----------:|-----------:|----------------:|
//! | 0          | 16         | 1024            |
//! | 1          | 32         | 512             |
//! | 7          | 128        | 128             |
//! | 15         | 256        | 64              |
//! | 31         | 512        | 32              |
#![deny(unsafe_op_in_unsafe_fn)]

// Tunables: the heap's geometry, with compile-time checks.
pub mod config;
// The lock-free protocols of remote frees and thread-heap ownership,
// model-checked with loom.
mod protocol;
// Layer 0: OS pages.
pub mod os;
// Locks that never allocate.
pub mod lock;
// Fatal error reports that do not allocate.
mod fatal;
// Spin-then-yield waiting, shared by the locks and the fork gate.
mod backoff;
// fork() without deadlocks: the gate every crate lock passes.
mod fork;
// The free mark (double frees), and the `hardened` feature's secrets.
mod harden;
// Valgrind client requests (feature `valgrind`).
mod valgrind;
// Layer 1: the raw heap (chunks, the arena map, medium and huge blocks).
mod raw;
// Layer 2: arenas and pools of small blocks.
mod small;
// Layer 2, per thread: thread heaps, remote frees, adoption, medium cache.
mod thread;
// The whole heap: GlobalAlloc, Allocator, the C-style interface, fork.
mod heap;
// Statistics, printed like sys._debugmallocstats().
mod stats;
// Layer 3: object-specific allocators (typed pools with reuse policies).
pub mod objects;
// CPython's memory interface: PyMem_* / PyObject_*, domains, hooks, debug
// hooks.
pub mod pymem;
// tracemalloc: tracebacks of live blocks, snapshots, sampling, flame graphs
// (feature `trace`).
#[cfg(feature = "trace")]
pub mod trace;
// Without the feature, the hooks the heap's entry points call are empty.
#[cfg(not(feature = "trace"))]
mod trace {
    pub(crate) mod hook {
        #[inline(always)]
        pub(crate) fn allocated(_ptr: *mut u8, _size: usize) {}

        #[inline(always)]
        pub(crate) fn freeing(_ptr: *mut u8) {}

        #[inline(always)]
        pub(crate) fn realloc(
            _old: *mut u8,
            _new_size: usize,
            resize: impl FnOnce() -> *mut u8,
        ) -> *mut u8 {
            resize()
        }
    }

    #[cfg_attr(not(unix), allow(dead_code))]
    pub(crate) fn dump_traceback(_m: &mut crate::fatal::Message, _addr: usize) {}
}

pub use heap::PrivateHeap;
pub use lock::SpinLock;
pub use objects::{Obj, ObjectPolicy, ObjectPool, ObjectStats};
pub use os::{OsPages, PageSource};
/// The debug hooks' module under its former path.
pub use pymem::debug as pymem_debug;
pub use pymem::debug::{PyMem_DebugCheckAll, debug_hooks_installed};
pub use pymem::*;
pub use raw::{RawHeap, RawStats};
pub use small::{Arena, ArenaInfo, Pool, PoolInfo, PoolState, SmallStats};
pub use stats::Stats;

/// The README's examples, compiled and run as doctests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
