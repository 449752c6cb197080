//! pymalloc's side-by-side benchmark suite: pymalloc against
//! `std::alloc::System` (glibc), mimalloc (v3 and v2 lines), jemalloc,
//! snmalloc and rpmalloc. This library is empty; the suite is its
//! benchmarks and scripts:
//!
//! * `benches/workloads.rs`: workloads with one allocator per process as the
//!   real `#[global_allocator]`, driven by `run.py`, which runs each
//!   workload in a fresh process for every allocator in interleaved rounds
//!   and writes `results.md`;
//! * `benches/micro.rs`: criterion micro-benchmarks, all allocators but
//!   mimalloc v2 in one run (`cargo bench -p pymalloc-suite --bench micro`);
//! * `benches/objects.rs`: `ObjectPool` against the heap, System and
//!   mimalloc (`cargo bench -p pymalloc-suite --bench objects`);
//! * `instructions.sh`: instructions per alloc+free pair under callgrind;
//! * `mimalloc-v2/`: the workloads again on mimalloc's v2 line, which cannot
//!   be linked beside v3 (a package outside the workspace).
//!
//! The peers are built from their C/C++ sources, which is why they live here
//! and not among the `pymalloc` crate's dev-dependencies. See `README.md`.

/// Peers wrapped for a fair comparison.
pub mod peers {
    use core::alloc::{GlobalAlloc, Layout};

    /// rpmalloc as its crate ships it, plus `realloc` through rpmalloc's own
    /// `rpaligned_realloc` (the crate's type leaves `realloc` to Rust's
    /// allocate-copy-free default, which rpmalloc never does in C).
    #[derive(Debug)]
    pub struct RpMalloc;

    // SAFETY: forwards to rpmalloc, which upholds the contract; realloc's
    // alignment is the block's own, below rpmalloc's 64 KiB span limit for
    // every layout the suite uses (checked, else the default path).
    unsafe impl GlobalAlloc for RpMalloc {
        #[inline]
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded contract.
            unsafe { rpmalloc::RpMalloc.alloc(layout) }
        }
        #[inline]
        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded contract.
            unsafe { rpmalloc::RpMalloc.alloc_zeroed(layout) }
        }
        #[inline]
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: forwarded contract.
            unsafe { rpmalloc::RpMalloc.dealloc(ptr, layout) }
        }
        #[inline]
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            if layout.align() >= 64 * 1024 {
                // SAFETY: forwarded contract.
                return unsafe { rpmalloc::RpMalloc.realloc(ptr, layout, new_size) };
            }
            // SAFETY: `ptr` is a live rpmalloc block of `layout`; rpmalloc
            // keeps `min(old, new)` bytes and the alignment.
            unsafe {
                rpmalloc_sys::rpaligned_realloc(
                    ptr.cast(),
                    layout.align(),
                    new_size,
                    layout.size(),
                    0,
                )
                .cast()
            }
        }
    }
}
