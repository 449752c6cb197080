//! Property test: random sequences of allocate / grow / shrink / deallocate
//! on a private heap, checked against a shadow model.

use allocator_api2::alloc::Allocator;
use core::alloc::Layout;
use core::ptr::NonNull;
use pymalloc::PrivateHeap;
use quickcheck::{Arbitrary, Gen, QuickCheck};
use std::collections::BTreeMap;

const MAX_SIZE: usize = if cfg!(miri) {
    96 * 1024
} else {
    2 * 1024 * 1024
};

#[derive(Clone, Debug)]
enum Op {
    Alloc {
        size: usize,
        align: usize,
        zeroed: bool,
    },
    Grow {
        slot: usize,
        size: usize,
        align: usize,
        zeroed: bool,
    },
    Shrink {
        slot: usize,
        size: usize,
        align: usize,
    },
    Free {
        slot: usize,
    },
}

fn arbitrary_size(g: &mut Gen) -> usize {
    let pick = u8::arbitrary(g) % 16;
    let cap = match pick {
        0..=9 => 600,         // small, and just over the threshold
        10..=13 => 64 * 1024, // medium
        14 => MAX_SIZE / 2,
        _ => MAX_SIZE, // huge (not under Miri)
    };
    usize::arbitrary(g) % (cap.min(MAX_SIZE) + 1)
}

fn arbitrary_align(g: &mut Gen) -> usize {
    // 1..=4096, mostly small.
    let shift = match u8::arbitrary(g) % 8 {
        0..=4 => u32::arbitrary(g) % 5,
        _ => u32::arbitrary(g) % 13,
    };
    1 << shift
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        let slot = usize::arbitrary(g);
        match u8::arbitrary(g) % 8 {
            0..=2 => Op::Alloc {
                size: arbitrary_size(g),
                align: arbitrary_align(g),
                zeroed: bool::arbitrary(g),
            },
            3 => Op::Grow {
                slot,
                size: arbitrary_size(g),
                align: arbitrary_align(g),
                zeroed: bool::arbitrary(g),
            },
            4 => Op::Shrink {
                slot,
                size: arbitrary_size(g),
                align: arbitrary_align(g),
            },
            _ => Op::Free { slot },
        }
    }
}

/// A live block in the model: its layout and the seed of its contents.
struct Live {
    ptr: NonNull<u8>,
    layout: Layout,
    seed: u8,
    /// Size of the block when its contents were last written.
    filled: usize,
}

fn pattern(seed: u8, i: usize) -> u8 {
    seed.wrapping_add((i as u8).wrapping_mul(31))
        .wrapping_add((i >> 8) as u8)
}

/// Offsets whose contents are checked: all of them, or a sample under Miri
/// and for big blocks.
fn checked_offsets(len: usize) -> Box<dyn Iterator<Item = usize>> {
    if len <= if cfg!(miri) { 256 } else { 64 * 1024 } {
        Box::new(0..len)
    } else {
        Box::new((0..128).chain(len - 128..len).chain((0..len).step_by(4093)))
    }
}

fn fill(live: &mut Live) {
    live.filled = live.layout.size();
    for i in checked_offsets(live.filled) {
        // SAFETY: `i` is inside the live block.
        unsafe { live.ptr.as_ptr().add(i).write(pattern(live.seed, i)) };
    }
}

fn check(live: &Live, upto: usize) {
    for i in checked_offsets(live.filled).filter(|&i| i < upto) {
        // SAFETY: `i` is inside the live block.
        let got = unsafe { live.ptr.as_ptr().add(i).read() };
        assert_eq!(
            got,
            pattern(live.seed, i),
            "byte {i} of a {:?} block changed",
            live.layout
        );
    }
}

fn check_zero(ptr: NonNull<u8>, from: usize, to: usize) {
    for i in checked_offsets(to - from) {
        // SAFETY: inside a live block.
        let byte = unsafe { ptr.as_ptr().add(from + i).read() };
        assert_eq!(byte, 0, "zeroed byte {} not zero", from + i);
    }
}

fn check_disjoint(lives: &[Live]) {
    let mut ranges = BTreeMap::new();
    for l in lives.iter().filter(|l| l.layout.size() != 0) {
        let start = l.ptr.as_ptr() as usize;
        ranges.insert(start, start + l.layout.size());
    }
    let mut end = 0;
    for (&s, &e) in &ranges {
        assert!(s >= end, "blocks overlap at {s:#x}");
        end = e;
    }
}

fn run(ops: Vec<Op>) -> bool {
    run_on(&PrivateHeap::new(), ops)
}

/// As `run`, on a bounded heap: it keeps no medium cache, so every freed
/// medium block is free in layer 1 at once, and growth takes freed
/// neighbours (after and before a block) far more often.
fn run_bounded(ops: Vec<Op>) -> bool {
    run_on(&PrivateHeap::with_limit(1 << 30), ops)
}

fn run_on(heap: &PrivateHeap, ops: Vec<Op>) -> bool {
    let a = heap;
    let mut lives: Vec<Live> = Vec::new();
    for (n, op) in ops.into_iter().enumerate() {
        let seed = n as u8;
        match op {
            Op::Alloc {
                size,
                align,
                zeroed,
            } => {
                let layout = Layout::from_size_align(size, align).unwrap();
                let p = if zeroed {
                    a.allocate_zeroed(layout)
                } else {
                    a.allocate(layout)
                }
                .expect("allocate");
                let ptr = p.cast::<u8>();
                assert_eq!(p.len(), size);
                assert_eq!(ptr.as_ptr() as usize % align, 0, "misaligned {layout:?}");
                if zeroed {
                    check_zero(ptr, 0, size);
                }
                let mut live = Live {
                    ptr,
                    layout,
                    seed,
                    filled: 0,
                };
                fill(&mut live);
                lives.push(live);
            }
            Op::Grow {
                slot,
                size,
                align,
                zeroed,
            } if !lives.is_empty() => {
                let i = slot % lives.len();
                let old = lives[i].layout;
                let new = Layout::from_size_align(size.max(old.size()), align).unwrap();
                // SAFETY: the block is live with layout `old`; `new` is no smaller.
                let p = unsafe {
                    if zeroed {
                        a.grow_zeroed(lives[i].ptr, old, new)
                    } else {
                        a.grow(lives[i].ptr, old, new)
                    }
                }
                .expect("grow");
                lives[i].ptr = p.cast();
                lives[i].layout = new;
                assert_eq!(lives[i].ptr.as_ptr() as usize % align, 0);
                check(&lives[i], old.size());
                if zeroed {
                    check_zero(lives[i].ptr, old.size(), new.size());
                }
                lives[i].seed = seed;
                fill(&mut lives[i]);
            }
            Op::Shrink { slot, size, align } if !lives.is_empty() => {
                let i = slot % lives.len();
                let old = lives[i].layout;
                let new = Layout::from_size_align(size.min(old.size()), align).unwrap();
                // SAFETY: the block is live with layout `old`; `new` is no larger.
                let p = unsafe { a.shrink(lives[i].ptr, old, new) }.expect("shrink");
                lives[i].ptr = p.cast();
                lives[i].layout = new;
                assert_eq!(lives[i].ptr.as_ptr() as usize % align, 0);
                check(&lives[i], new.size());
            }
            Op::Free { slot } if !lives.is_empty() => {
                let l = lives.swap_remove(slot % lives.len());
                check(&l, l.layout.size());
                // SAFETY: live block with this layout, freed once.
                unsafe { a.deallocate(l.ptr, l.layout) };
            }
            _ => {}
        }
        heap.validate();
        let requested: usize = lives.iter().map(|l| l.layout.size()).sum();
        assert_eq!(heap.stats().bytes_requested, requested);
        if n % 8 == 0 {
            check_disjoint(&lives);
        }
    }
    check_disjoint(&lives);
    for l in lives.drain(..) {
        check(&l, l.layout.size());
        // SAFETY: live block with this layout, freed once.
        unsafe { a.deallocate(l.ptr, l.layout) };
    }
    heap.validate();
    let s = heap.stats();
    assert_eq!((s.bytes_requested, s.bytes_in_use), (0, 0), "{s:?}");
    assert_eq!(s.small.blocks_in_use.iter().sum::<usize>(), 0);
    assert_eq!(s.raw.medium_blocks + s.raw.huge_blocks, 0);
    true
}

/// Checks `property` on random op sequences (`miri_tests` of them under
/// Miri, where each takes seconds).
fn quickcheck_ops(property: fn(Vec<Op>) -> bool, miri_tests: u64) {
    let (tests, size) = if cfg!(miri) {
        (miri_tests, 40)
    } else {
        (300, 200)
    };
    #[allow(deprecated)]
    QuickCheck::new()
        .tests(tests)
        .r#gen(Gen::new(size))
        .quickcheck(property);
}

#[test]
fn op_sequences_match_the_model() {
    quickcheck_ops(run, 6);
}

#[test]
fn op_sequences_match_the_model_on_a_bounded_heap() {
    quickcheck_ops(run_bounded, 3);
}

#[test]
fn many_small_blocks_fill_and_drain_arenas() {
    let heap = PrivateHeap::new();
    let n = if cfg!(miri) { 3_000 } else { 300_000 };
    let layout = Layout::from_size_align(48, 8).unwrap();
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        v.push((&heap).allocate(layout).unwrap().cast::<u8>());
    }
    heap.validate();
    let s = heap.stats();
    assert_eq!(s.small.blocks_in_use[2], n);
    // Free every other block, then the rest: pools go full -> used -> empty.
    for half in [0, 1] {
        for p in v.iter().skip(half).step_by(2) {
            // SAFETY: each block is freed once.
            unsafe { (&heap).deallocate(*p, layout) };
        }
        heap.validate();
    }
    let s = heap.stats();
    assert_eq!(s.bytes_in_use, 0);
    // All arenas went back to layer 1 but the spares and the one holding
    // the class's cached empty pool.
    assert!(s.small.arenas_allocated >= if cfg!(miri) { 1 } else { 10 });
    assert!(
        s.raw.arena_chunks <= pymalloc::config::SPARE_ARENAS + 1,
        "{s:?}"
    );
    assert_eq!(
        s.small.arenas_reclaimed + s.raw.arena_chunks,
        s.small.arenas_allocated
    );
}
