//! Per-collection heaps through `allocator_api2`: `Vec` and `Box` in a
//! heap of their own, and that heap's memory going back when it is dropped.

use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicUsize, Ordering};
use pymalloc::{OsPages, PageSource, PrivateHeap};

#[test]
fn vec_grows_shrinks_and_keeps_contents() {
    let heap = PrivateHeap::new();
    let mut v = Vec::new_in(&heap);
    let n = if cfg!(miri) { 2_000 } else { 300_000 };
    for i in 0..n {
        v.push(i as u32);
    }
    assert!(heap.stats().bytes_requested >= n * 4);
    assert!(v.iter().enumerate().all(|(i, &x)| x as usize == i));
    v.truncate(100);
    v.shrink_to_fit();
    assert_eq!(heap.stats().bytes_requested, 400);
    assert!(v.iter().enumerate().all(|(i, &x)| x as usize == i));
    v.reserve_exact(10_000);
    assert!(v.iter().enumerate().all(|(i, &x)| x as usize == i));
    drop(v);
    heap.validate();
    let s = heap.stats();
    assert_eq!((s.bytes_requested, s.bytes_in_use), (0, 0));
}

#[test]
fn boxes_of_every_small_size_and_alignment() {
    #[repr(align(64))]
    struct Line([u8; 64]);
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    let heap = PrivateHeap::new();
    let lines: std::vec::Vec<Box<Line, &PrivateHeap>> = (0..500)
        .map(|i| Box::new_in(Line([i as u8; 64]), &heap))
        .collect();
    let pages: std::vec::Vec<Box<Page, &PrivateHeap>> = (0..8)
        .map(|i| Box::new_in(Page([i as u8; 4096]), &heap))
        .collect();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(&**l as *const Line as usize % 64, 0);
        assert!(l.0.iter().all(|&b| b == i as u8));
    }
    for (i, p) in pages.iter().enumerate() {
        assert_eq!(&**p as *const Page as usize % 4096, 0);
        assert!(p.0.iter().all(|&b| b == i as u8));
    }
    let unit = Box::new_in((), &heap);
    drop(unit);
    drop(lines);
    drop(pages);
    assert_eq!(heap.stats().bytes_in_use, 0);
}

/// Page source that counts the bytes it has mapped and unmapped.
#[derive(Default)]
struct CountingPages {
    mapped: AtomicUsize,
    unmapped: AtomicUsize,
}

// SAFETY: forwards every call to `OsPages`, which upholds the contract.
unsafe impl PageSource for &CountingPages {
    fn map(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        let p = OsPages.map(size, align)?;
        self.mapped.fetch_add(size, Ordering::Relaxed);
        Some(p)
    }
    unsafe fn unmap(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        self.unmapped.fetch_add(size, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { OsPages.unmap(ptr, size, align) }
    }
    unsafe fn purge(&self, ptr: NonNull<u8>, size: usize) -> bool {
        // SAFETY: forwarded contract.
        unsafe { OsPages.purge(ptr, size) }
    }
}

#[test]
fn dropping_a_heap_unmaps_all_its_memory() {
    let pages = CountingPages::default();
    let heap: PrivateHeap<&CountingPages> = PrivateHeap::with_source(&pages);
    {
        let mut a = Vec::new_in(&heap);
        for i in 0..1000 {
            a.push(Box::new_in([i as u64; 4], &heap));
        }
        let mut medium: Vec<u8, _> = Vec::with_capacity_in(50_000, &heap);
        medium.extend_from_slice(&[7; 50_000]);
        let big: Vec<u8, _> = Vec::with_capacity_in(2 << 20, &heap);
        assert!(heap.stats().bytes_mapped >= 2 << 20);
        // Leak on purpose: dropping the heap must still reclaim them.
        core::mem::forget(big);
        core::mem::forget(a);
    }
    let mapped = heap.stats().bytes_mapped;
    assert_eq!(
        mapped,
        pages.mapped.load(Ordering::Relaxed) - pages.unmapped.load(Ordering::Relaxed)
    );
    assert!(mapped > 2 << 20);
    drop(heap);
    assert_eq!(
        pages.mapped.load(Ordering::Relaxed),
        pages.unmapped.load(Ordering::Relaxed)
    );
}

#[test]
fn many_heaps_side_by_side_stay_separate() {
    let heaps: std::vec::Vec<PrivateHeap> = (0..4).map(|_| PrivateHeap::new()).collect();
    let vecs: std::vec::Vec<Vec<u64, &PrivateHeap>> = heaps
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let mut v = Vec::new_in(h);
            v.extend((0..1000).map(|x| x * i as u64));
            v
        })
        .collect();
    for (i, h) in heaps.iter().enumerate() {
        assert_eq!(h.stats().bytes_requested, vecs[i].capacity() * 8);
    }
    for (i, v) in vecs.iter().enumerate() {
        assert!(v.iter().enumerate().all(|(j, &x)| x == j as u64 * i as u64));
    }
}

#[test]
// Miri's page source is `System`, and Miri stops on an impossible allocation
// instead of returning null.
#[cfg_attr(miri, ignore)]
fn impossible_requests_fail_cleanly() {
    use allocator_api2::alloc::Allocator;
    use core::alloc::{GlobalAlloc, Layout};
    let heap = PrivateHeap::new();
    for (size, align) in [
        (isize::MAX as usize - 4096, 8),
        (isize::MAX as usize / 2, 1 << 20),
        (1 << 20, 1 << (usize::BITS - 2)),
    ] {
        let layout = Layout::from_size_align(size, align).unwrap();
        assert!((&heap).allocate(layout).is_err(), "{layout:?}");
        assert!((&heap).allocate_zeroed(layout).is_err(), "{layout:?}");
        // SAFETY: a valid, non-zero layout.
        assert!(unsafe { heap.alloc(layout) }.is_null(), "{layout:?}");
    }
    // A failed grow leaves the block valid and unchanged.
    let mut v: Vec<u8, &PrivateHeap> = Vec::new_in(&heap);
    v.extend_from_slice(b"still here");
    assert!(v.try_reserve(isize::MAX as usize - 64).is_err());
    assert_eq!(&v[..], b"still here");
    drop(v);
    assert_eq!(heap.stats().bytes_in_use, 0);
    heap.validate();
}
