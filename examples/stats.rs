//! The heap's statistics, printed like CPython's `sys._debugmallocstats()`,
//! and memory going back to the OS: a peak of small objects, freed, then
//! `trim()`; and a bounded heap refusing to grow past its limit.
//!
//! Run: `cargo run --release --example stats`

use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec;
use pymalloc::PrivateHeap;

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() {
    let heap = PrivateHeap::new();
    let objects: std::vec::Vec<Box<[u64; 6], &PrivateHeap>> = (0..200_000u64)
        .map(|i| Box::new_in([i; 6], &heap))
        .collect();
    let names: std::vec::Vec<Vec<u8, &PrivateHeap>> = (0..50_000)
        .map(|i| {
            let mut v = Vec::new_in(&heap);
            v.extend_from_slice(format!("object-{i}").as_bytes());
            v
        })
        .collect();
    let buffer: Vec<u8, &PrivateHeap> = Vec::with_capacity_in(300_000, &heap);
    println!("{}", heap.stats());

    drop((objects, names, buffer));
    let freed = heap.stats();
    println!(
        "after freeing everything: {:.1} MiB mapped",
        mib(freed.bytes_mapped)
    );
    heap.trim();
    println!(
        "after trim():             {:.1} MiB mapped",
        mib(heap.stats().bytes_mapped)
    );

    let bounded = PrivateHeap::with_limit(16 << 20);
    let mut v: Vec<u8, &PrivateHeap> = Vec::new_in(&bounded);
    let mut size = 1 << 20;
    while v.try_reserve_exact(size - v.len()).is_ok() {
        v.resize(size, 0);
        size *= 2;
    }
    println!(
        "bounded heap (limit {:.0} MiB): a {:.0} MiB vector fits, {:.0} MiB is refused; {:.1} MiB mapped",
        mib(bounded.limit()),
        mib(v.len()),
        mib(size),
        mib(bounded.stats().bytes_mapped)
    );
}
