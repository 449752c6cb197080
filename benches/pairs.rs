//! Alloc+free pairs through `GlobalAlloc`, pymalloc beside `std::alloc::System`
//! in one criterion run.
//!
//! Run: `cargo bench --bench pairs` (add `-- --quick` for a fast look).

#![allow(missing_docs)] // criterion's macros generate undocumented items

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use pymalloc::PrivateHeap;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Duration;

static PYMALLOC: PrivateHeap = PrivateHeap::new();

fn pair<A: GlobalAlloc>(a: &A, layout: Layout) {
    // SAFETY: non-zero layout; the block is freed with the same layout.
    unsafe {
        let p = a.alloc(black_box(layout));
        assert!(!p.is_null());
        p.write(1);
        a.dealloc(black_box(p), layout);
    }
}

fn alloc_free_pairs(c: &mut Criterion) {
    let mut g = c.benchmark_group("alloc_free_pair");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for size in [16usize, 32, 64, 128, 256, 512, 1024, 4096, 65536, 1 << 20] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        g.throughput(Throughput::Elements(1));
        // Interleave: each size measures both allocators back to back.
        g.bench_with_input(BenchmarkId::new("pymalloc", size), &layout, |b, &l| {
            b.iter(|| pair(&PYMALLOC, l))
        });
        g.bench_with_input(BenchmarkId::new("system", size), &layout, |b, &l| {
            b.iter(|| pair(&System, l))
        });
    }
    g.finish();
}

criterion_group!(benches, alloc_free_pairs);
criterion_main!(benches);
