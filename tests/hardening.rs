//! Misuse the heap must catch before it corrupts anything: each case runs
//! in a child process, which must abort with a report naming the block's
//! address, its size and what was wrong. Double frees are caught in every
//! build; the other cases need the `hardened` feature
//! (`cargo test --features hardened --test hardening`).
//!
//! A custom harness: run without arguments, this binary is the parent and
//! re-runs itself once per case with `PYMALLOC_CASE` set.

use core::alloc::{GlobalAlloc, Layout};
use pymalloc::PrivateHeap;
use std::process::Command;

static HEAP: PrivateHeap = PrivateHeap::new();
/// No thread caches: medium blocks go straight to layer 1.
static BOUNDED: PrivateHeap = PrivateHeap::with_limit(1 << 30);

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, 8).unwrap()
}

fn alloc(heap: &PrivateHeap, size: usize) -> *mut u8 {
    // SAFETY: a non-zero size.
    let p = unsafe { heap.alloc(layout(size)) };
    assert!(!p.is_null());
    p
}

/// Frees `p` as a block of `size` bytes. Used on purpose with blocks that
/// are already free: the heap must abort before anything is corrupted.
fn free(heap: &PrivateHeap, p: *mut u8, size: usize) {
    // SAFETY: see above; the cases below misuse it on purpose.
    unsafe { heap.dealloc(p, layout(size)) }
}

/// Reallocates live block `p` of `size` bytes to `new` bytes.
fn grow(heap: &PrivateHeap, p: *mut u8, size: usize, new: usize) -> *mut u8 {
    // SAFETY: `p` is live with this layout (the cases' own blocks).
    let q = unsafe { heap.realloc(p, layout(size), new) };
    assert!(!q.is_null());
    q
}

/// Frees `p` from a thread of its own.
fn free_on_thread(heap: &'static PrivateHeap, p: *mut u8, size: usize) {
    let addr = p.expose_provenance();
    std::thread::spawn(move || free(heap, std::ptr::with_exposed_provenance_mut(addr), size))
        .join()
        .unwrap();
}

/// Prints the address the report must name, then runs the case.
fn case(name: &str) {
    // As the report prints addresses: 0x and 16 (or 8) hex digits.
    let say = |p: *mut u8| {
        println!("block 0x{:0w$x}", p.addr(), w = 2 * size_of::<usize>());
        p
    };
    match name {
        "clean" => clean(),
        "small_twice" => {
            let p = say(alloc(&HEAP, 48));
            free(&HEAP, p, 48);
            free(&HEAP, p, 48);
        }
        "small_between" => {
            let (a, b) = (say(alloc(&HEAP, 48)), alloc(&HEAP, 48));
            free(&HEAP, a, 48);
            free(&HEAP, b, 48);
            free(&HEAP, a, 48);
        }
        "small_then_other_thread" => {
            let p = say(alloc(&HEAP, 64));
            let _keep = alloc(&HEAP, 64);
            free(&HEAP, p, 64);
            free_on_thread(&HEAP, p, 64);
        }
        "small_other_thread_then_owner" => {
            let p = say(alloc(&HEAP, 64));
            let _keep = alloc(&HEAP, 64);
            free_on_thread(&HEAP, p, 64);
            free(&HEAP, p, 64);
        }
        "small_other_thread_twice" => {
            let p = say(alloc(&HEAP, 64));
            let _keep = alloc(&HEAP, 64);
            free_on_thread(&HEAP, p, 64);
            free_on_thread(&HEAP, p, 64);
        }
        "small_c_free" => {
            let p = say(HEAP.malloc(40));
            // SAFETY: misused on purpose (see `free`).
            unsafe {
                HEAP.free(p);
                HEAP.free(p);
            }
        }
        "medium_twice" => {
            let p = say(alloc(&HEAP, 5000));
            free(&HEAP, p, 5000);
            free(&HEAP, p, 5000);
        }
        "medium_other_thread" => {
            let p = say(alloc(&HEAP, 5000));
            free(&HEAP, p, 5000);
            free_on_thread(&HEAP, p, 5000);
        }
        "medium_released" => {
            // Cached, then given back to layer 1 by `trim`: freed again, it
            // takes the fast path, which sees the mark layer 1 left.
            let p = say(alloc(&HEAP, 5000));
            let _keep = alloc(&HEAP, 5000);
            free(&HEAP, p, 5000);
            HEAP.trim();
            free(&HEAP, p, 5000);
        }
        "medium_released_merged" => {
            // `b` goes to layer 1 (the thread's medium cache is full) and
            // is merged into the free block before it, then freed again.
            // (After `trim` it would not be caught: trim purges the merged
            // block's whole pages, its mark and header with them.)
            let fill: Vec<_> = (0..4).map(|_| alloc(&HEAP, 65536)).collect();
            let a = alloc(&HEAP, 5000);
            let b = say(alloc(&HEAP, 5000));
            let _keep = alloc(&HEAP, 5000);
            for p in fill {
                free(&HEAP, p, 65536);
            }
            free(&HEAP, a, 5000);
            free(&HEAP, b, 5000);
            free(&HEAP, b, 5000);
        }
        "medium_refused" => {
            // More than the thread's medium cache takes: the last block
            // goes to layer 1 at once.
            let blocks: Vec<_> = (0..8).map(|_| alloc(&HEAP, 65536)).collect();
            let p = say(blocks[7]);
            for &b in &blocks {
                free(&HEAP, b, 65536);
            }
            free(&HEAP, p, 65536);
        }
        "medium_uncached" => {
            let p = say(alloc(&BOUNDED, 5000));
            let _keep = alloc(&BOUNDED, 5000);
            free(&BOUNDED, p, 5000);
            free(&BOUNDED, p, 5000);
        }
        "medium_merged" => {
            // `b` is merged into the free block before it, then freed again.
            let a = alloc(&BOUNDED, 5000);
            let b = say(alloc(&BOUNDED, 5000));
            let _keep = alloc(&BOUNDED, 5000);
            free(&BOUNDED, a, 5000);
            free(&BOUNDED, b, 5000);
            free(&BOUNDED, b, 5000);
        }
        "medium_moved_down" => {
            // `b` grows into the free block before it (its bytes move
            // down), and the old pointer is freed: the sized fast path sees
            // the mark left at the old place. The thread's medium cache is
            // full, so `a` is free in layer 1.
            let fill: Vec<_> = (0..4).map(|_| alloc(&HEAP, 65536)).collect();
            let a = alloc(&HEAP, 20000);
            let b = say(alloc(&HEAP, 5000));
            let _keep = alloc(&HEAP, 5000);
            for p in fill {
                free(&HEAP, p, 65536);
            }
            free(&HEAP, a, 20000);
            assert_eq!(grow(&HEAP, b, 5000, 8000), a, "not moved down");
            free(&HEAP, b, 5000);
        }
        "medium_moved_down_uncached" => {
            // As above, on a heap whose frees read the header: the old
            // header says free.
            let a = alloc(&BOUNDED, 20000);
            let b = say(alloc(&BOUNDED, 5000));
            let _keep = alloc(&BOUNDED, 5000);
            free(&BOUNDED, a, 20000);
            assert_eq!(grow(&BOUNDED, b, 5000, 8000), a, "not moved down");
            free(&BOUNDED, b, 5000);
        }
        #[cfg(feature = "hardened")]
        "write_after_free" => {
            let blocks: Vec<_> = (0..4).map(|_| alloc(&HEAP, 48)).collect();
            let p = say(blocks[1]);
            free(&HEAP, p, 48);
            let target = 0usize;
            // SAFETY: a use-after-free write, on purpose: one word, as an
            // attacker would write an address to be allocated next.
            unsafe { p.cast::<*const usize>().write(&raw const target) };
            for _ in 0..4 {
                alloc(&HEAP, 48);
            }
        }
        #[cfg(feature = "hardened")]
        "overflow_into_free_block" => {
            // Find two neighbours (allocation order is random), free the
            // second, overflow the first into it.
            let blocks: Vec<_> = (0..64).map(|_| alloc(&HEAP, 48)).collect();
            let (a, b) = blocks
                .iter()
                .find_map(|&a| {
                    blocks
                        .iter()
                        .find(|&&b| b == a.wrapping_add(48))
                        .map(|&b| (a, b))
                })
                .expect("two neighbours among 64 blocks");
            say(b);
            free(&HEAP, b, 48);
            // SAFETY: an overflow of 8 bytes past `a`, on purpose.
            unsafe { a.write_bytes(0x41, 56) };
            for _ in 0..64 {
                alloc(&HEAP, 48);
            }
        }
        #[cfg(feature = "hardened")]
        "interior_pointer" => {
            let p = alloc(&HEAP, 64);
            say(p.wrapping_add(16));
            free(&HEAP, p.wrapping_add(16), 64);
        }
        #[cfg(feature = "hardened")]
        "interior_pointer_c_free" => {
            let p = HEAP.malloc(64);
            say(p.wrapping_add(32));
            // SAFETY: misused on purpose.
            unsafe { HEAP.free(p.wrapping_add(32)) };
        }
        #[cfg(feature = "hardened")]
        "wrong_layout" => {
            let p = say(alloc(&HEAP, 64));
            free(&HEAP, p, 200);
        }
        #[cfg(feature = "hardened")]
        "foreign_pointer" => {
            let mut local = [0u64; 8];
            let p = say(local.as_mut_ptr().cast());
            free(&HEAP, p, 64);
        }
        #[cfg(feature = "hardened")]
        "medium_interior" => {
            let p = alloc(&HEAP, 5000);
            say(p.wrapping_add(64));
            free(&HEAP, p.wrapping_add(64), 5000);
        }
        #[cfg(feature = "hardened")]
        "arena_guard" => {
            // The last pool of every arena is a guard: writing there faults.
            let p = alloc(&HEAP, 32);
            let arena = p.addr() & !(pymalloc::Arena::SIZE - 1);
            let guard = p.with_addr(arena + pymalloc::Arena::SIZE - pymalloc::Pool::SIZE);
            say(guard);
            // SAFETY: a write into the guard, on purpose.
            unsafe { guard.write_volatile(1) };
        }
        #[cfg(feature = "hardened")]
        "huge_guard" => {
            let size = pymalloc::config::MEDIUM_MAX + (1 << 20);
            let p = alloc(&HEAP, size);
            // SAFETY: a live block of HEAP.
            let end =
                p.wrapping_add(unsafe { HEAP.usable_size(core::ptr::NonNull::new(p).unwrap()) });
            say(end);
            // SAFETY: a write one byte past the block's usable end, on
            // purpose.
            unsafe { end.write_volatile(1) };
        }
        other => panic!("unknown case {other}"),
    }
    println!("not caught");
}

/// Correct use that looks like misuse to a careless check: blocks freed
/// and allocated again without being written (the second word still
/// holds what the allocator left there), freed by other threads, the
/// same addresses reused across classes. Must run to the end.
fn clean() {
    for round in 0..20 {
        let mut blocks: Vec<(*mut u8, usize)> = Vec::new();
        for i in 0..2000 {
            let size = [16, 48, 64, 200, 512, 700, 5000, 70_000][(i + round) % 8];
            blocks.push((alloc(&HEAP, size), size));
        }
        // Every other block freed here, the rest on another thread.
        let (here, there): (Vec<_>, Vec<_>) =
            blocks.iter().enumerate().partition(|(i, _)| i % 2 == 0);
        for (_, &(p, size)) in here {
            free(&HEAP, p, size);
        }
        let there: Vec<(usize, usize)> = there
            .iter()
            .map(|&(_, &(p, s))| (p.expose_provenance(), s))
            .collect();
        std::thread::spawn(move || {
            for (addr, size) in there {
                free(&HEAP, std::ptr::with_exposed_provenance_mut(addr), size);
            }
        })
        .join()
        .unwrap();
    }
    // Size-less frees and resizes; blocks reallocated.
    for i in 0..1000 {
        let p = HEAP.malloc(24 + i % 600);
        // SAFETY: live blocks of HEAP's C-style family, then of its
        // `GlobalAlloc` side.
        unsafe {
            let q = HEAP.resize(p, 40 + i % 7000);
            HEAP.free(q);
            let r = HEAP.realloc(alloc(&HEAP, 24), layout(24), 40 + i % 7000);
            HEAP.dealloc(r, layout(40 + i % 7000));
        }
    }
    // Live blocks whose second and third words hold what a program may
    // leave there without writing it (bytes copied from the stack, where
    // the allocator's registers are spilled): addresses of the block, of
    // its arena and of every pool header in it, all-ones, zero.
    for size in [16, 32, 48, 64, 512, 1000, 5000] {
        let blocks: Vec<_> = (0..200).map(|_| alloc(&HEAP, size)).collect();
        for (i, &p) in blocks.iter().enumerate() {
            let arena = p.addr() & !(pymalloc::Arena::SIZE - 1);
            let value = match i % 4 {
                0 => p.addr(),
                1 => arena + 4 * 64 + (i % 64) * 128,
                2 => usize::MAX,
                _ => arena,
            };
            // SAFETY: live blocks of at least 16 bytes.
            unsafe {
                p.cast::<usize>().add(1).write(value);
                if size >= 24 {
                    p.cast::<usize>().add(2).write(value);
                }
            }
        }
        for p in blocks {
            free(&HEAP, p, size);
        }
    }
    // Medium blocks given back to layer 1 (which marks them free) and
    // allocated from it again: allocation clears the mark.
    for size in [700, 5000, 70_000] {
        for _ in 0..3 {
            let blocks: Vec<_> = (0..50).map(|_| alloc(&HEAP, size)).collect();
            for p in blocks {
                free(&HEAP, p, size);
            }
            HEAP.trim();
        }
    }
    HEAP.validate();
    println!("clean run ok");
}

fn run(name: &str) -> (std::process::Output, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("PYMALLOC_CASE", name)
        .env_remove("PYMALLOC")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out, text)
}

/// The case must abort with a report naming the block it printed and
/// saying each of `what`.
fn caught(name: &str, what: &[&str]) {
    let (out, text) = run(name);
    assert!(!out.status.success(), "{name}: not caught:\n{text}");
    assert!(!text.contains("not caught"), "{name}:\n{text}");
    let block = text
        .lines()
        .find_map(|l| l.strip_prefix("block "))
        .unwrap_or_else(|| panic!("{name}: no block printed:\n{text}"));
    assert!(
        text.contains(&format!("block {block} (")) || text.contains(&format!("pointer {block} ")),
        "{name}: the report does not name {block}:\n{text}"
    );
    for what in what {
        assert!(text.contains(what), "{name}: expected {what:?}:\n{text}");
    }
    println!("{name}: caught");
}

/// The case must die of a memory fault (a guard page).
#[cfg(feature = "hardened")]
fn faults(name: &str) {
    use std::os::unix::process::ExitStatusExt;
    let (out, text) = run(name);
    // SIGSEGV.
    assert_eq!(
        out.status.signal(),
        Some(11),
        "{name}: {:?}\n{text}",
        out.status
    );
    println!("{name}: faults");
}

fn main() {
    if let Ok(name) = std::env::var("PYMALLOC_CASE") {
        case(&name);
        return;
    }
    let (out, text) = run("clean");
    assert!(
        out.status.success() && text.contains("clean run ok"),
        "{text}"
    );
    println!("clean: no false report");
    const DOUBLE: &str = "is already free (double free)";
    for name in [
        "small_twice",
        "small_between",
        "small_then_other_thread",
        "small_other_thread_then_owner",
        "small_other_thread_twice",
        "small_c_free",
    ] {
        caught(name, &["small block", DOUBLE]);
    }
    for name in [
        "medium_twice",
        "medium_other_thread",
        "medium_released",
        "medium_released_merged",
        "medium_refused",
        "medium_uncached",
        "medium_merged",
        #[cfg(not(feature = "valgrind"))]
        "medium_moved_down",
        #[cfg(not(feature = "valgrind"))]
        "medium_moved_down_uncached",
    ] {
        caught(name, &["medium block", DOUBLE]);
    }
    #[cfg(feature = "hardened")]
    {
        const CORRUPTED: &str = "its free-list link is corrupted";
        caught("write_after_free", &[CORRUPTED]);
        caught("overflow_into_free_block", &[CORRUPTED]);
        caught("interior_pointer", &["is not the start of a block"]);
        caught("interior_pointer_c_free", &["is not the start of a block"]);
        caught(
            "wrong_layout",
            &["was freed with a layout larger than its block"],
        );
        caught(
            "foreign_pointer",
            &["is not a live block of a pymalloc heap"],
        );
        caught("medium_interior", &["is not the start of a live block"]);
        faults("arena_guard");
        faults("huge_guard");
    }
}
