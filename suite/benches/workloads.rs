//! Workload benchmarks, one allocator per process: the allocator named by
//! `PYMALLOC_BENCH_ALLOC` is the real `#[global_allocator]`, so std
//! collections and threads exercise it as an application would.
//! `suite/run.py` runs this binary for every allocator in interleaved
//! rounds and reports median ratios; run alone it prints one round.
//!
//! Usage: `PYMALLOC_BENCH_ALLOC=<name> workloads [time] [FILTER]` (every
//! workload whose name contains FILTER; `=NAME` for exactly one),
//! `workloads list [FILTER]` (their names), `workloads memory`,
//! `workloads peak NAME`, `workloads pairs SIZE COUNT`.

#![allow(missing_docs, unreachable_pub, missing_debug_implementations)] // a bench binary, not an API

#[path = "common/select.rs"]
#[macro_use]
mod select;
#[path = "common/workloads.rs"]
mod workloads;

static PYMALLOC: pymalloc::PrivateHeap = pymalloc::PrivateHeap::new();

/// A trivial bump allocator that never frees: the floor for instruction
/// counts (loop + Rust's allocation shims). Not used for timed workloads.
struct Bump;
static BUMP_NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
#[repr(C, align(4096))]
struct Space([u8; 64 << 20]);
static mut BUMP_SPACE: Space = Space([0; 64 << 20]);

// SAFETY: hands out disjoint, aligned parts of a static buffer, or null when
// it runs out; never reuses memory.
unsafe impl std::alloc::GlobalAlloc for Bump {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        let size = l.size().next_multiple_of(16);
        let offset = BUMP_NEXT.fetch_add(size, std::sync::atomic::Ordering::Relaxed);
        if l.align() > 16 || offset + size > 64 << 20 {
            return std::ptr::null_mut();
        }
        // SAFETY: `offset + size` is within the buffer.
        unsafe { (&raw mut BUMP_SPACE).cast::<u8>().add(offset) }
    }
    unsafe fn dealloc(&self, _: *mut u8, _: std::alloc::Layout) {}
}

define_select! {
    0 "pymalloc" => PYMALLOC,
    1 "system" => std::alloc::System,
    2 "mimalloc" => mimalloc::MiMalloc,
    3 "jemalloc" => tikv_jemallocator::Jemalloc,
    4 "snmalloc" => snmalloc_rs::SnMalloc,
    5 "rpmalloc" => pymalloc_suite::peers::RpMalloc,
    6 "bump" => Bump,
}

#[global_allocator]
static GLOBAL: Select = Select;

fn main() {
    workloads::main(selected(), pairs_direct, || {
        if selected() == "pymalloc" {
            PYMALLOC.trim();
        }
    });
}
