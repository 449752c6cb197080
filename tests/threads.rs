//! Thread heaps ([tag:thread-heaps] in the crate): blocks freed by threads
//! that do not own them are never lost, exited threads' pools are adopted,
//! any number of short threads keeps the heap bounded, and frees or
//! allocations from thread-local destructors, after the thread's own state
//! is gone, still work.

use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec;
use pymalloc::PrivateHeap;
use std::sync::{Barrier, mpsc};

/// A block pointer sent to another thread (which then owns the block).
struct Sent(core::ptr::NonNull<u8>);
// SAFETY: the block is handed over whole; the receiver is its only user.
unsafe impl Send for Sent {}

fn scale(n: usize) -> usize {
    if cfg!(miri) { (n / 500).max(2) } else { n }
}

/// Every small block allocated by producers and freed by a consumer
/// thread is accounted for once the producers have exited: the heap's
/// counters return to zero exactly, and it validates.
#[test]
fn remote_frees_are_all_collected() {
    let heap = PrivateHeap::new();
    let producers = if cfg!(miri) { 2 } else { 4 };
    let per_thread = scale(20_000);
    std::thread::scope(|s| {
        let (tx, rx) = mpsc::sync_channel::<Box<[u64], &PrivateHeap>>(64);
        let mut handles = std::vec::Vec::new();
        handles.push(s.spawn(move || {
            for b in rx {
                let n = b.len() as u64;
                assert!(b.iter().enumerate().all(|(i, &x)| x == n ^ i as u64));
                drop(b); // freed here, owned by a producer's pool
            }
        }));
        for t in 0..producers {
            let tx = tx.clone();
            let heap = &heap;
            handles.push(s.spawn(move || {
                let mut kept = Vec::new_in(heap);
                for i in 0..per_thread {
                    let n = 1 + (i * 7 + t) % 60;
                    let mut b = Box::new_uninit_slice_in(n, heap);
                    for (j, slot) in b.iter_mut().enumerate() {
                        slot.write(n as u64 ^ j as u64);
                    }
                    // SAFETY: every element was written.
                    let b = unsafe { b.assume_init() };
                    if i % 4 == 0 {
                        kept.push(b);
                    } else {
                        tx.send(b).unwrap();
                    }
                }
                kept.clear();
            }));
        }
        drop(tx);
        // Joining waits for each thread's full exit (thread-local
        // destructors included), so every producer's thread heap is an
        // orphan whose inbox `stats` collects.
        handles.into_iter().for_each(|h| h.join().unwrap());
    });
    let s = heap.stats();
    assert_eq!(s.bytes_in_use, 0, "{s:?}");
    assert_eq!(s.bytes_requested, 0, "{s:?}");
    heap.validate();
}

/// Threads that exit leave orphans; later threads adopt them, so the
/// number of thread heaps stays at the number of threads alive at once.
#[test]
fn short_threads_adopt_orphaned_thread_heaps() {
    let heap = PrivateHeap::new();
    let waves = scale(2_000);
    let width = 4;
    for _ in 0..waves {
        // Joining each handle waits for the thread's full exit, thread-local
        // destructors included (the end of a scope alone does not).
        std::thread::scope(|s| {
            let handles: std::vec::Vec<_> = (0..width)
                .map(|t| {
                    let heap = &heap;
                    s.spawn(move || {
                        let mut v = Vec::with_capacity_in(16, heap);
                        v.extend((0..16).map(|i| Box::new_in(i * t as u64, heap)));
                        assert_eq!(v.iter().map(|b| **b).sum::<u64>(), 120 * t as u64);
                    })
                })
                .collect();
            handles.into_iter().for_each(|h| h.join().unwrap());
        });
    }
    let s = heap.stats();
    // The main thread's (taken by `stats`) and one per thread alive at once.
    assert!(
        s.small.thread_heaps <= width + 1,
        "{} thread heaps",
        s.small.thread_heaps
    );
    assert_eq!(s.bytes_in_use, 0);
    heap.validate();
}

/// 100,000 short threads, each allocating and freeing, keep the heap's
/// footprint bounded: a few arenas, a few thread heaps.
#[test]
fn a_hundred_thousand_short_threads_stay_bounded() {
    let heap = PrivateHeap::new();
    let threads = scale(100_000);
    for i in 0..threads {
        std::thread::scope(|s| {
            s.spawn(|| {
                let b: Vec<u8, _> = Vec::with_capacity_in(1 + i % 500, &heap);
                assert!(b.capacity() > i % 500);
            })
            .join()
            .unwrap();
        });
    }
    let s = heap.stats();
    // One for the threads in turn, one for the main thread (`stats`).
    assert!(
        s.small.thread_heaps <= 2,
        "{} thread heaps",
        s.small.thread_heaps
    );
    assert!(s.bytes_mapped <= 4 << 20, "{s:?}");
}

/// A thread frees blocks allocated by another thread that is still
/// allocating in the same size class: the owner collects them and reuses
/// the memory instead of taking new pools.
#[test]
fn the_owner_reuses_blocks_freed_remotely() {
    let heap = PrivateHeap::new();
    let rounds = scale(200);
    let batch = 1000;
    let (to_freer, freer_rx) = mpsc::channel::<std::vec::Vec<Sent>>();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    std::thread::scope(|s| {
        let heap = &heap;
        s.spawn(move || {
            for addrs in freer_rx {
                for a in addrs {
                    // SAFETY: allocated below with this layout, freed once.
                    unsafe {
                        allocator_api2::alloc::Allocator::deallocate(
                            &heap,
                            a.0,
                            core::alloc::Layout::new::<[u64; 4]>(),
                        )
                    };
                }
                done_tx.send(()).unwrap();
            }
        });
        for _ in 0..rounds {
            let addrs = (0..batch)
                .map(|_| {
                    let b = Box::new_in([7u64; 4], heap);
                    Sent(core::ptr::NonNull::new(Box::into_raw(b).cast::<u8>()).unwrap())
                })
                .collect();
            to_freer.send(addrs).unwrap();
            done_rx.recv().unwrap();
        }
        drop(to_freer);
    });
    // Without collection each round would need fresh pools: rounds * batch
    // blocks of 32 bytes. With it, about one batch's worth is mapped.
    let s = heap.stats();
    assert!(
        s.small.arenas_high_water <= 2,
        "{} arenas for {} live blocks at most",
        s.small.arenas_high_water,
        batch
    );
    assert_eq!(s.bytes_in_use, 0);
}

/// Blocks of one class freed by another thread go back to their pools, and
/// pools they empty back to their arenas, when the owner next takes a slow
/// path of *any* class: here it never allocates the freed class again.
#[test]
fn remotely_emptied_pools_return_without_their_class_running_dry() {
    let heap = PrivateHeap::new();
    let n = scale(20_000); // 40 pools of 32-byte blocks
    let layout = core::alloc::Layout::new::<[u64; 4]>();
    let class_of_32 = |heap: &PrivateHeap| {
        heap.arenas()
            .iter()
            .flat_map(|a| a.pools.iter())
            .filter(|p| p.block_size == 32)
            .map(|p| p.blocks_in_use)
            .sum::<usize>()
    };
    std::thread::scope(|s| {
        let heap = &heap;
        let (tx, rx) = mpsc::channel::<std::vec::Vec<Sent>>();
        let (back, done) = mpsc::channel::<()>();
        s.spawn(move || {
            let blocks = rx.recv().unwrap();
            for b in blocks {
                // SAFETY: allocated with `layout` by the owner, freed once.
                unsafe { allocator_api2::alloc::Allocator::deallocate(&heap, b.0, layout) };
            }
            back.send(()).unwrap();
        });
        let blocks: std::vec::Vec<Sent> = (0..n)
            .map(|_| {
                Sent(
                    allocator_api2::alloc::Allocator::allocate(&heap, layout)
                        .unwrap()
                        .cast(),
                )
            })
            .collect();
        tx.send(blocks).unwrap();
        done.recv().unwrap();
        // Freed remotely, not yet collected: still counted in their pools.
        assert_eq!(class_of_32(heap), n);
        // The owner allocates another class until it carves a new page.
        let other = core::alloc::Layout::new::<[u64; 8]>();
        let mut kept = std::vec::Vec::new();
        for _ in 0..(4096 / 64 + 1) {
            kept.push(allocator_api2::alloc::Allocator::allocate(&heap, other).unwrap());
        }
        assert_eq!(class_of_32(heap), 0, "remote frees collected");
        let pools_of_32 = heap
            .arenas()
            .iter()
            .flat_map(|a| a.pools.iter())
            .filter(|p| p.block_size == 32)
            .count();
        assert!(
            pools_of_32 <= pymalloc::config::THREAD_SPARE_POOLS + 1,
            "{pools_of_32} pools of 32-byte blocks left with the owner"
        );
        for p in kept {
            // SAFETY: allocated above with `other`, freed once.
            unsafe { allocator_api2::alloc::Allocator::deallocate(&heap, p.cast(), other) };
        }
    });
    heap.validate();
    assert_eq!(heap.stats().bytes_in_use, 0);
}

static LATE: PrivateHeap = PrivateHeap::new();
static DESTRUCTORS_RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct FreesLate(Option<Box<[u8; 100], &'static PrivateHeap>>);

impl Drop for FreesLate {
    fn drop(&mut self) {
        // Runs during thread exit, possibly after the heap's own
        // thread-local state is gone: frees a block and allocates another.
        let b = self.0.take().expect("set before exit");
        assert!(b.iter().all(|&x| x == 0xab));
        drop(b);
        let again = Box::new_in([0xcdu8; 200], &LATE);
        assert_eq!(again[199], 0xcd);
        // Kept on purpose, so the test can see it in the heap's counters.
        core::mem::forget(again);
        DESTRUCTORS_RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

thread_local! {
    static HOLDER: std::cell::RefCell<FreesLate> = const { std::cell::RefCell::new(FreesLate(None)) };
}

/// Thread-local destructors that free and allocate run in either order
/// relative to the heap's own thread exit: the frees reach their pools, the
/// allocations succeed, and nothing is lost.
#[test]
fn thread_local_destructors_free_and_allocate_during_exit() {
    let threads = if cfg!(miri) { 2 } else { 16 };
    let barrier = std::sync::Arc::new(Barrier::new(threads));
    let handles: std::vec::Vec<_> = (0..threads)
        .map(|t| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                if t % 2 == 0 {
                    // Register the user's destructor before the heap's, so
                    // it runs after the heap's thread state is released.
                    HOLDER.with(|_| ());
                }
                let b = Box::new_in([0xabu8; 100], &LATE);
                HOLDER.with(|h| h.borrow_mut().0 = Some(b));
                barrier.wait();
            })
        })
        .collect();
    // `join` returns after the thread's thread-local destructors ran.
    handles.into_iter().for_each(|h| h.join().unwrap());
    assert_eq!(
        DESTRUCTORS_RUN.load(std::sync::atomic::Ordering::Relaxed),
        threads
    );
    let s = LATE.stats();
    // Each exiting thread freed its 100-byte block and kept one 200-byte
    // block allocated in its destructor.
    assert_eq!(s.bytes_requested, 200 * threads, "{s:?}");
    assert_eq!(s.small.blocks_in_use[12], threads, "{s:?}");
    assert_eq!(s.small.blocks_in_use[6], 0, "{s:?}");
    LATE.validate();
}

/// A freed medium block stays with the freeing thread and serves its next
/// request of the same bin (LIFO); the counters say where it is; `trim`
/// gives it back; a bounded heap keeps none.
#[test]
fn medium_blocks_are_cached_per_thread() {
    use allocator_api2::alloc::Allocator;
    use core::alloc::Layout;
    let heap = PrivateHeap::new();
    let layout = Layout::from_size_align(3000, 8).unwrap();
    let a = (&heap).allocate(layout).unwrap().cast::<u8>();
    let before = heap.stats();
    assert_eq!(before.raw.medium_blocks, 1);
    // SAFETY: allocated above with `layout`, freed once.
    unsafe { (&heap).deallocate(a, layout) };
    let cached = heap.stats();
    assert_eq!((cached.bytes_requested, cached.bytes_in_use), (0, 0));
    assert_eq!(cached.raw.medium_blocks, 0);
    assert!(cached.raw.bytes_cached >= 3000, "{cached:?}");
    // A request of the same bin (3000 and 3050 both round to 3072) reuses it.
    let other = Layout::from_size_align(3050, 8).unwrap();
    let b = (&heap).allocate(other).unwrap().cast::<u8>();
    assert_eq!(a, b);
    let reused = heap.stats();
    assert_eq!(reused.bytes_requested, 3050);
    assert_eq!(reused.raw.bytes_cached, 0);
    // Freed by another thread: it joins that thread's cache.
    let sent = Sent(b);
    std::thread::scope(|s| {
        s.spawn(|| {
            let b = { sent }.0;
            // SAFETY: allocated above with `other`, freed once.
            unsafe { (&heap).deallocate(b, other) };
        })
        .join() // waits for the thread's exit: its thread heap is an orphan
        .unwrap();
    });
    let s = heap.stats();
    assert_eq!((s.bytes_requested, s.bytes_in_use), (0, 0));
    assert!(s.raw.bytes_cached >= 3050);
    heap.trim();
    let s = heap.stats();
    assert_eq!(s.raw.bytes_cached, 0);
    assert_eq!(s.bytes_mapped, 0, "{s:?}");
    heap.validate();

    let bounded = PrivateHeap::with_limit(64 << 20);
    let p = (&bounded).allocate(layout).unwrap().cast::<u8>();
    // SAFETY: allocated above with `layout`, freed once.
    unsafe { (&bounded).deallocate(p, layout) };
    assert_eq!(bounded.stats().raw.bytes_cached, 0);
}

/// The cache is bounded: freeing many medium blocks keeps at most 256 KiB
/// of them, and the rest goes back to layer 1.
#[test]
fn the_medium_cache_is_bounded() {
    use allocator_api2::alloc::Allocator;
    use core::alloc::Layout;
    let heap = PrivateHeap::new();
    let layout = Layout::from_size_align(20_000, 8).unwrap();
    let blocks: std::vec::Vec<_> = (0..scale(200))
        .map(|_| (&heap).allocate(layout).unwrap().cast::<u8>())
        .collect();
    for p in blocks {
        // SAFETY: allocated above with `layout`, freed once.
        unsafe { (&heap).deallocate(p, layout) };
    }
    let s = heap.stats();
    assert!(s.raw.bytes_cached <= 256 << 10, "{s:?}");
    if !cfg!(miri) {
        assert!(s.raw.bytes_cached >= 200 << 10, "{s:?}");
    }
    assert_eq!((s.bytes_requested, s.bytes_in_use), (0, 0));
    heap.validate();
}

#[test]
fn the_medium_cache_makes_room_for_a_new_size() {
    use allocator_api2::alloc::Allocator;
    use core::alloc::Layout;
    let heap = PrivateHeap::new();
    let a = &heap;
    // Four 64 KiB blocks fill the cache's budget...
    let old = Layout::from_size_align(64 << 10, 8).unwrap();
    let blocks: std::vec::Vec<_> = (0..4)
        .map(|_| a.allocate(old).unwrap().cast::<u8>())
        .collect();
    for p in blocks {
        // SAFETY: allocated above with `old`, freed once.
        unsafe { a.deallocate(p, old) };
    }
    // (Three or four of them, as the blocks hold exactly 64 KiB or more.)
    assert!(heap.stats().raw.bytes_cached > 3 * (64 << 10));
    // ... then the thread uses 200 KiB blocks only: refused at first, they
    // are cached once the idle 64 KiB bin has been collected.
    let new = Layout::from_size_align(200 << 10, 8).unwrap();
    for _ in 0..100 {
        let p = a.allocate(new).unwrap().cast::<u8>();
        // SAFETY: allocated with `new`, freed once.
        unsafe { a.deallocate(p, new) };
    }
    let s = heap.stats();
    // One 200 KiB block (its bin's bound: 208 KiB), no 64 KiB one.
    assert!(
        s.raw.bytes_cached >= 200 << 10 && s.raw.bytes_cached < 220 << 10,
        "{s:?}"
    );
    assert_eq!((s.bytes_requested, s.bytes_in_use), (0, 0));
    heap.validate();
}
