//! `tracemalloc` for Rust: where live memory was allocated.
//!
//! As CPython's `tracemalloc`, on top of the heap's entry points: every
//! traced block keeps the call stack that allocated it, live memory is
//! grouped by `file:line` or by whole traceback, snapshots are taken and
//! compared, and the debug hooks' reports say where a bad block was made.
//! Every [`PrivateHeap`](crate::PrivateHeap) is traced (the global
//! allocator and per-collection heaps alike) while tracing is on, which is
//! process-wide, as in Python.
//!
//! Two modes:
//!
//! * **exact** ([`start`]): every allocation is traced, as Python's
//!   `tracemalloc.start(nframe)`. Each one costs a stack walk (a few
//!   microseconds): for tests and debugging.
//! * **sampling** ([`start_sampling`]): on average one allocation per
//!   `mean` bytes allocated is traced, the sample points a Poisson process
//!   over the bytes each thread allocates (exponential gaps, as tcmalloc
//!   and jemalloc draw them); a block of `s` bytes is sampled with
//!   probability `p = 1 - exp(-s / mean)` and counts as `s / p` bytes and
//!   `1 / p` blocks, so sums over many blocks are unbiased estimates. The
//!   default mean is [`DEFAULT_SAMPLE_MEAN`] (512 KiB, jemalloc's
//!   `lg_prof_sample = 19`): cheap enough for production.
//!
//! ```
//! use allocator_api2::boxed::Box;
//! use pymalloc::trace::{self, Key};
//!
//! let heap = pymalloc::PrivateHeap::new();
//! # let _serial = trace::tests_serial();
//! trace::start(1);
//! let blocks: Vec<_> = (0..100).map(|_| Box::new_in([0u8; 100], &heap)).collect();
//! let snapshot = trace::take_snapshot();
//! trace::stop();
//! let stats = snapshot.statistics(Key::Lineno);
//! // One line of this file made all of them.
//! let top = stats.iter().find(|s| s.count == 100).unwrap();
//! assert_eq!(top.size, 100 * 100);
//! println!("{}", trace::top(&stats, 10));
//! # drop(blocks);
//! ```
//!
//! Environment: `PYMALLOC_TRACE=N` (as `PYTHONTRACEMALLOC`) starts exact
//! tracing with `N` frames at the first allocation; `PYMALLOC_TRACE_SAMPLE=B`
//! starts sampling with a mean of `B` bytes instead (with `N` frames if
//! `PYMALLOC_TRACE` is set too, else 32).
//!
//! ## How it stays out of the allocator's way
//!
//! * **Off**: each public entry point of the heap (`alloc`, `dealloc`,
//!   `realloc`, `allocate`, … `malloc`, `free`) reads one global byte
//!   (`Relaxed`) and branches; everything else is out of line.
//! * **No recursion**: the stack is walked into a fixed array of
//!   instruction pointers on the stack (`backtrace`'s unsynchronized walk,
//!   which does not allocate); symbols are resolved only when a snapshot is
//!   taken or a traceback printed. The tracer's tables live on a heap of
//!   their own (a [`RawHeap`](crate::RawHeap), never traced). A
//!   thread-local flag, `const`-initialised and without destructor (std
//!   promises that such a thread-local does not allocate, rust-lang/rust
//!   #144465), makes allocations made while the tracer runs untraced.
//! * **Frees**: a free first tests a counting filter of 65536 counters
//!   indexed by a hash of the address, without a lock; only a possible hit
//!   takes the tracer's lock and looks the block up. With sampling, almost
//!   every free stops at the filter.
//! * **Threads, fork**: one lock of the crate (`lock::GlobalLock`, fork-safe,
//!   never allocating) guards the tables. Thread exit needs nothing.
//!
//! ## What "lineno" means here
//!
//! A traceback is walked from the allocator's entry point; when it is
//! resolved, the leading frames that belong to the allocator (this crate,
//! `alloc`, `core`, `std`, `allocator_api2`, the `__rust_alloc` shims, the C
//! entry points `malloc`, `PyMem_Malloc`, …) are dropped, so the first frame
//! is the caller's line, and at most the `frames` given to [`start`] are kept.

// The hooks at the heap's entry points, the re-entrancy flag, sampling.
pub(crate) mod hook;
// The traces and the interned tracebacks, on the tracer's own heap.
mod table;
// Stack walks into a fixed array.
mod capture;
// Snapshots, statistics, comparisons and their text.
mod snapshot;
// Folded stacks and the SVG flame graph.
mod flame;

pub use hook::{
    DEFAULT_SAMPLE_MEAN, MAX_FRAMES, TrackError, clear_traces, get_traceback_limit,
    get_traced_memory, is_tracing, reset_peak, sample_mean, start, start_sampling, stop, track,
    untrack,
};
pub use snapshot::{
    Frame, Key, Snapshot, Statistic, StatisticDiff, Top, Trace, Traceback, format_size,
    get_object_traceback, take_snapshot, top,
};

pub(crate) use hook::dump_traceback;

/// Serialises doctests and tests that turn tracing on (it is
/// process-wide). Hidden: for this crate's own tests and examples.
#[doc(hidden)]
pub fn tests_serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
