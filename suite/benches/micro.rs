//! Micro-benchmarks through `GlobalAlloc`, every allocator in one criterion
//! run: pymalloc, `System`, mimalloc (v3 line), jemalloc, snmalloc and
//! rpmalloc.
//! (mimalloc's v2 line cannot be linked beside v3; `suite/run.py` covers
//! it with per-process runs.)
//!
//! Run: `cargo bench -p pymalloc-suite --bench micro`;
//! `PYMALLOC_BENCH_QUICK=1` for a quick look.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::time::Duration;

static PYMALLOC: pymalloc::PrivateHeap = pymalloc::PrivateHeap::new();

/// Runs `$body` once per allocator, with `$a` bound to that allocator, as
/// one criterion benchmark each, so every allocator's code is monomorphised.
macro_rules! each_allocator {
    ($g:expr, $param:expr, |$a:ident| $body:expr) => {{
        each_allocator!(@one $g, $param, "pymalloc", &PYMALLOC, |$a| $body);
        each_allocator!(@one $g, $param, "system", &System, |$a| $body);
        each_allocator!(@one $g, $param, "mimalloc", &mimalloc::MiMalloc, |$a| $body);
        each_allocator!(@one $g, $param, "jemalloc", &tikv_jemallocator::Jemalloc, |$a| $body);
        each_allocator!(@one $g, $param, "snmalloc", &snmalloc_rs::SnMalloc, |$a| $body);
        each_allocator!(@one $g, $param, "rpmalloc", &pymalloc_suite::peers::RpMalloc, |$a| $body);
    }};
    (@one $g:expr, $param:expr, $name:literal, $alloc:expr, |$a:ident| $body:expr) => {
        $g.bench_function(BenchmarkId::new($name, $param), |b| {
            let $a = $alloc;
            b.iter(|| $body)
        });
    };
}

fn pair<A: GlobalAlloc>(a: &A, layout: Layout) {
    // SAFETY: non-zero layout; freed with the same layout.
    unsafe {
        // black_box on pointers: LLVM may otherwise elide a malloc/free pair.
        let p = black_box(a.alloc(black_box(layout)));
        p.write(1);
        a.dealloc(black_box(p), layout);
    }
}

fn batch<A: GlobalAlloc>(a: &A, layout: Layout, ptrs: &mut Vec<*mut u8>) {
    ptrs.clear();
    // SAFETY: non-zero layout; each block freed once with it.
    unsafe {
        for _ in 0..ptrs.capacity() {
            ptrs.push(black_box(a.alloc(layout)));
        }
        for &p in ptrs.iter() {
            a.dealloc(black_box(p), layout);
        }
    }
}

fn realloc_chain<A: GlobalAlloc>(a: &A) {
    // SAFETY: sizes are non-zero; the block is freed with its last layout.
    unsafe {
        let mut size = 8;
        let mut p = black_box(a.alloc(Layout::from_size_align_unchecked(size, 8)));
        while size < 1 << 20 {
            p = black_box(a.realloc(p, Layout::from_size_align_unchecked(size, 8), size * 2));
            size *= 2;
            p.add(size - 1).write(1);
        }
        a.dealloc(black_box(p), Layout::from_size_align_unchecked(size, 8));
    }
}

fn zeroed<A: GlobalAlloc>(a: &A, layout: Layout) {
    // SAFETY: non-zero layout; freed with the same layout.
    unsafe {
        let p = black_box(a.alloc_zeroed(layout));
        black_box(p.add(layout.size() / 2).read());
        a.dealloc(black_box(p), layout);
    }
}

fn config<'a>(
    c: &'a mut Criterion,
    name: &str,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let quick = std::env::var_os("PYMALLOC_BENCH_QUICK").is_some();
    let mut g = c.benchmark_group(name);
    g.warm_up_time(Duration::from_millis(if quick { 50 } else { 300 }))
        .measurement_time(Duration::from_millis(if quick { 200 } else { 1000 }))
        .sample_size(if quick { 10 } else { 30 });
    g
}

fn micro(c: &mut Criterion) {
    let mut g = config(c, "alloc_free_pair");
    for size in [
        16usize,
        32,
        64,
        128,
        256,
        512,
        1024,
        4096,
        65536,
        1 << 20,
        1 << 22,
    ] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        g.throughput(Throughput::Elements(1));
        each_allocator!(g, size, |a| pair(a, layout));
    }
    g.finish();

    let mut g = config(c, "batch_10k");
    for size in [32usize, 256] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        let mut ptrs = Vec::with_capacity(10_000);
        g.throughput(Throughput::Elements(10_000));
        each_allocator!(g, size, |a| batch(a, layout, &mut ptrs));
    }
    g.finish();

    let mut g = config(c, "realloc_chain_8B_to_1MiB");
    each_allocator!(g, "chain", |a| realloc_chain(a));
    g.finish();

    let mut g = config(c, "alloc_zeroed");
    for size in [4096usize, 1 << 20] {
        let layout = Layout::from_size_align(size, 8).unwrap();
        each_allocator!(g, size, |a| zeroed(a, layout));
    }
    g.finish();
}

criterion_group!(benches, micro);
criterion_main!(benches);
