//! `PrivateHeap` as the process's `#[global_allocator]`: std collections on
//! 64 threads (on however few cores), blocks freed by threads other than
//! their allocator's, threads exiting while others allocate, contents
//! checked throughout.

use pymalloc::PrivateHeap;
use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;

#[global_allocator]
static HEAP: PrivateHeap = PrivateHeap::new();

const THREADS: usize = 64;

/// The tests run one at a time: one compares the heap's counters before
/// and after, which another test's live blocks would move.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn rounds() -> usize {
    if cfg!(miri) { 20 } else { 32_000 / THREADS }
}

fn checksum(v: &[u64]) -> u64 {
    v.iter()
        .fold(0u64, |acc, &x| acc.wrapping_mul(31).wrapping_add(x))
}

#[test]
fn std_collections_on_64_threads_with_cross_thread_frees() {
    let _serial = serial();
    let before = HEAP.stats();
    let (tx, rx) = mpsc::channel::<(Vec<u64>, String, u64)>();
    let consumer = std::thread::spawn(move || {
        // Receives blocks allocated by the producers and frees them here.
        let mut n = 0usize;
        for (v, s, sum) in rx {
            assert_eq!(checksum(&v), sum, "vector corrupted in transit");
            assert_eq!(s, format!("len={}", v.len()));
            n += 1;
        }
        n
    });
    let producers: Vec<_> = (0..THREADS)
        .map(|t| {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let mut map: BTreeMap<String, Vec<u64>> = BTreeMap::new();
                let mut hash: HashMap<u64, Box<[u8]>> = HashMap::new();
                for i in 0..rounds() {
                    let len = (i * 7 + t * 13) % 700;
                    let v: Vec<u64> = (0..len as u64).map(|x| x ^ (t as u64) << 32).collect();
                    let key = format!("{t}-{}", i % 97);
                    map.insert(key.clone(), v.clone());
                    hash.insert(
                        i as u64 % 211,
                        vec![(i % 251) as u8; (i * 31) % 5000].into_boxed_slice(),
                    );
                    if i % 3 == 0 {
                        let sum = checksum(&v);
                        tx.send((v, format!("len={len}"), sum)).unwrap();
                    }
                    if i % 5 == 0 {
                        map.remove(&format!("{t}-{}", (i / 5) % 97));
                    }
                }
                for (k, v) in &map {
                    let t2: usize = k.split('-').next().unwrap().parse().unwrap();
                    assert_eq!(t2, t);
                    assert!(v.iter().all(|x| x >> 32 == t as u64));
                }
                for (k, b) in &hash {
                    assert!(b.iter().all(|&x| x == b[0]), "slot {k} corrupted");
                }
            })
        })
        .collect();
    drop(tx);
    for p in producers {
        p.join().unwrap();
    }
    let received = consumer.join().unwrap();
    assert_eq!(received, THREADS * rounds().div_ceil(3));
    HEAP.validate();
    let after = HEAP.stats();
    // Everything the threads allocated is gone again (the test harness's own
    // blocks may differ by a little).
    assert!(
        after.bytes_in_use < before.bytes_in_use + 64 * 1024,
        "{before:?} -> {after:?}"
    );
}

#[test]
fn short_threads_exit_while_others_allocate() {
    let _serial = serial();
    let waves = if cfg!(miri) { 2 } else { 50 };
    for _ in 0..waves {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                std::thread::spawn(move || {
                    // Thread-locals with destructors that free heap memory.
                    thread_local!(static BUF: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) });
                    BUF.with(|b| b.borrow_mut().extend((0..50).map(|i| format!("{t}:{i}"))));
                    let v: Vec<Box<u128>> = (0..200).map(|i| Box::new(i as u128 * t as u128)).collect();
                    v.iter().map(|b| **b).sum::<u128>()
                })
            })
            .collect();
        for (t, h) in handles.into_iter().enumerate() {
            assert_eq!(h.join().unwrap(), (0..200u128).sum::<u128>() * t as u128);
        }
    }
    HEAP.validate();
}

#[test]
fn large_and_aligned_blocks_through_the_global_allocator() {
    let _serial = serial();
    use std::alloc::{GlobalAlloc, Layout};
    for (size, align) in [
        (1, 1),
        (0, 64),
        (100, 256),
        (3000, 4096),
        (200_000, 64 * 1024),
        (3 << 20, 1 << 20),
        (5 << 20, 2 << 20),
    ] {
        let layout = Layout::from_size_align(size.max(1), align).unwrap();
        // SAFETY: non-zero size; freed below with the same layout.
        unsafe {
            let p = HEAP.alloc_zeroed(layout);
            assert!(!p.is_null());
            assert_eq!(p as usize % align, 0);
            assert!(
                std::slice::from_raw_parts(p, layout.size())
                    .iter()
                    .all(|&b| b == 0)
            );
            assert!(HEAP.usable_size(std::ptr::NonNull::new(p).unwrap()) >= layout.size());
            HEAP.dealloc(p, layout);
        }
    }
}
