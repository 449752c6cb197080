//! Huge blocks (over `MEDIUM_MAX`, 4 MiB) through the whole heap: grown by doubling
//! without copying their bytes (pages remapped), and a realloc the heap
//! cannot give that leaves the block valid.

use core::alloc::Layout;
use pymalloc::PrivateHeap;
use pymalloc::config::{CHUNK_SIZE, MEDIUM_MAX};

/// The byte written at offset `i`.
fn mark(i: usize) -> u8 {
    (i as u8) ^ ((i >> 16) as u8) ^ 0x5A
}

#[test]
fn a_huge_block_doubles_to_a_gibibyte_without_copying() {
    use allocator_api2::alloc::Allocator;
    let heap = PrivateHeap::new();
    let a = &heap;
    // Miri has no mremap (its pages come from `System`): the block is
    // copied there, and only correctness is checked, on less.
    // From the smallest power of two past the medium range: every step is
    // a huge block's.
    let first = 2 * MEDIUM_MAX;
    let (first, last) = if cfg!(miri) {
        (first, 4 * first)
    } else {
        (first, 1 << 30)
    };
    // A mark every 64 KiB of each size's new part (and its last byte):
    // enough to see a lost or shifted page without touching a GiB.
    let stride = 64 << 10;
    let layout = |n| Layout::from_size_align(n, 8).unwrap();
    let mut p = a.allocate(layout(first)).unwrap().cast::<u8>();
    let mut size = first;
    let mut from = 0;
    loop {
        // SAFETY: `p` is a live block of `size` bytes.
        unsafe {
            for i in (from..size).step_by(stride).chain([size - 1]) {
                p.as_ptr().add(i).write(mark(i));
            }
        }
        if size == last {
            break;
        }
        // SAFETY: `p` is live with `layout(size)`.
        p = unsafe { a.grow(p, layout(size), layout(2 * size)) }
            .expect("grows")
            .cast();
        (from, size) = (size, 2 * size);
    }
    // SAFETY: as above.
    unsafe {
        let mut from = 0;
        let mut end = first;
        while end <= last {
            for i in (from..end).step_by(stride).chain([end - 1]) {
                assert_eq!(p.as_ptr().add(i).read(), mark(i), "byte {i}");
            }
            (from, end) = (end, 2 * end);
        }
    }
    let s = heap.stats();
    if cfg!(all(target_os = "linux", not(miri))) {
        assert_eq!(s.raw.huge_bytes_copied, 0, "{s:?}");
    } else {
        assert!(s.raw.huge_bytes_copied >= last / 2 - first);
    }
    // Mapped for the block: the cached mappings of copied-out blocks aside.
    let held = s.bytes_mapped - s.raw.huge_cached_bytes;
    assert!(held >= last && held < last + last / 2, "{s:?}");
    heap.validate();
    // SAFETY: live with `layout(last)`, freed once.
    unsafe { a.deallocate(p, layout(last)) };
}

#[test]
fn a_realloc_the_heap_cannot_give_returns_null_and_keeps_the_block() {
    use allocator_api2::alloc::Allocator;
    use core::alloc::GlobalAlloc;
    let heap = PrivateHeap::with_limit(16 * CHUNK_SIZE);
    let a = &heap;
    let size = MEDIUM_MAX + CHUNK_SIZE;
    let layout = Layout::from_size_align(size, 8).unwrap();
    let p = a.allocate(layout).unwrap().cast::<u8>();
    // SAFETY: a live block of `size` bytes.
    unsafe {
        (0..size)
            .step_by(4096)
            .for_each(|i| p.as_ptr().add(i).write(mark(i)))
    };
    let too_big = Layout::from_size_align(64 * CHUNK_SIZE, 8).unwrap();
    // SAFETY: `p` is live with `layout`.
    assert!(unsafe { a.grow(p, layout, too_big) }.is_err());
    // SAFETY: as above.
    assert!(unsafe { heap.realloc(p.as_ptr(), layout, 64 * CHUNK_SIZE) }.is_null());
    // SAFETY: as above: a failed realloc leaves the block live.
    assert!(unsafe { heap.realloc(p.as_ptr(), layout, usize::MAX / 2) }.is_null());
    heap.validate();
    // SAFETY: the block is still live and intact.
    unsafe {
        for i in (0..size).step_by(4096) {
            assert_eq!(p.as_ptr().add(i).read(), mark(i));
        }
        a.deallocate(p, layout);
    }
    assert_eq!(heap.stats().bytes_in_use, 0);
}
