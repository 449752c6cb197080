//! A fixed-count alloc+free loop for instruction counting under callgrind
//! (see `benches/instructions.sh`). Not a criterion bench.
//!
//! Usage: `pair_loop <allocator> <size> <count>`, allocator one of
//! `pymalloc`, `system`, `none` (the empty-loop baseline).

#![allow(missing_docs)]

use pymalloc::PrivateHeap;
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;

static PYMALLOC: PrivateHeap = PrivateHeap::new();

#[inline(never)]
fn run<A: GlobalAlloc>(a: &A, layout: Layout, count: usize) {
    for _ in 0..count {
        // SAFETY: non-zero layout; freed with the same layout.
        unsafe {
            let p = a.alloc(black_box(layout));
            a.dealloc(black_box(p), layout);
        }
    }
}

#[inline(never)]
fn run_empty(layout: Layout, count: usize) {
    for _ in 0..count {
        black_box(black_box(layout).size());
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 || args[1] == "--bench" {
        eprintln!("usage: pair_loop <pymalloc|system|none> <size> <count>");
        return;
    }
    let size: usize = args[2].parse().expect("size");
    let count: usize = args[3].parse().expect("count");
    let layout = Layout::from_size_align(size, 8).unwrap();
    // Warm up: the first pair maps memory.
    match args[1].as_str() {
        "pymalloc" => {
            run(&PYMALLOC, layout, 1);
            run(&PYMALLOC, layout, count)
        }
        "system" => {
            run(&System, layout, 1);
            run(&System, layout, count)
        }
        "none" => run_empty(layout, count),
        other => panic!("unknown allocator {other}"),
    }
}
