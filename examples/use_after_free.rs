//! A deliberate use-after-free, for valgrind: built with the `valgrind`
//! feature, memcheck reports the read below with the block it hits; without
//! the feature memcheck cannot see pymalloc's blocks.
//!
//! `cargo build --release --features valgrind --example use_after_free`
//! `valgrind target/release/examples/use_after_free`

use pymalloc::PrivateHeap;

#[global_allocator]
static HEAP: PrivateHeap = PrivateHeap::new();

fn main() {
    let b = Box::new([7u64; 4]);
    let p = b.as_ptr();
    drop(b);
    // SAFETY: none — the block was freed above. This is the bug memcheck
    // must report.
    let v = unsafe { core::ptr::read_volatile(p.add(2)) };
    println!("read {v} from a freed block");
}
