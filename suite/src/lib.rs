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
