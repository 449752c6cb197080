//! Layer 3: `ObjectPool<T>` — a model test of random allocate/free
//! sequences under each policy (contents, LIFO reuse, counters, the heap's
//! own counters), plus the policies' specific promises.

use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec;
use pymalloc::{ObjectPolicy, ObjectPool, PrivateHeap};
use quickcheck::{QuickCheck, TestResult};

#[derive(Debug, Clone, Copy, PartialEq)]
struct Node {
    id: u64,
    weight: f64,
    tag: [u8; 8],
}

fn node(id: u64) -> Node {
    Node {
        id,
        weight: id as f64 * 0.5,
        tag: (id as u8).to_le_bytes().repeat(8).try_into().unwrap(),
    }
}

fn policies() -> [ObjectPolicy; 4] {
    [
        ObjectPolicy::default(),
        ObjectPolicy {
            max_free: 3,
            ..Default::default()
        },
        ObjectPolicy {
            zeroize: true,
            max_free: 5,
            ..Default::default()
        },
        ObjectPolicy {
            slab: Some(7),
            ..Default::default()
        },
    ]
}

/// Random ops (true: allocate, false: free the i-th live object) against a
/// model; every live object keeps its value; the pool's counters and the
/// heap's match; dropping everything returns the heap to zero.
fn model(ops: std::vec::Vec<(bool, u8)>) -> TestResult {
    for policy in policies() {
        let heap = PrivateHeap::new();
        {
            let pool = ObjectPool::<Node>::with_policy(&heap, policy);
            let mut live: std::vec::Vec<Box<Node, &ObjectPool<Node>>> = std::vec::Vec::new();
            let mut last_freed: Option<*const Node> = None;
            for (n, &(alloc, pick)) in ops.iter().enumerate() {
                if alloc || live.is_empty() {
                    let b = Box::new_in(node(n as u64), &pool);
                    if let Some(f) = last_freed.take() {
                        // LIFO: the most recently freed object is reused
                        // (unless it went back to the heap).
                        if pool.stats().reused > 0 && policy.slab.is_some() {
                            assert_eq!(&*b as *const Node, f, "{policy:?}");
                        }
                    }
                    live.push(b);
                } else {
                    let b = live.swap_remove(pick as usize % live.len());
                    last_freed = Some(&*b as *const Node);
                    drop(b);
                }
                let s = pool.stats();
                assert_eq!(s.live, live.len(), "{policy:?}");
                if policy.slab.is_none() {
                    assert!(s.free <= policy.max_free, "{policy:?}");
                }
                // Every object taken from the heap is live, kept, or given back.
                assert_eq!(s.fresh, s.live + s.free + s.released, "{policy:?}");
            }
            for b in &live {
                assert_eq!(**b, node(b.id), "{policy:?}: contents changed");
            }
            let s = heap.stats();
            assert!(s.bytes_requested >= live.len() * size_of::<Node>());
            heap.validate();
            drop(live);
        }
        let s = heap.stats();
        assert_eq!(
            (s.bytes_requested, s.bytes_in_use),
            (0, 0),
            "{policy:?}: {s:?}"
        );
    }
    TestResult::passed()
}

#[test]
fn random_sequences_match_the_model() {
    let tests = if cfg!(miri) { 4 } else { 200 };
    QuickCheck::new()
        .tests(tests)
        .quickcheck(model as fn(std::vec::Vec<(bool, u8)>) -> TestResult);
}

#[test]
fn the_free_list_is_bounded_and_lifo() {
    let heap = PrivateHeap::new();
    let pool = ObjectPool::<[u64; 4]>::with_policy(
        &heap,
        ObjectPolicy {
            max_free: 2,
            ..Default::default()
        },
    );
    let a = Box::new_in([1u64; 4], &pool);
    let b = Box::new_in([2u64; 4], &pool);
    let c = Box::new_in([3u64; 4], &pool);
    let (pa, pb) = (&*a as *const _, &*b as *const _);
    drop(a);
    drop(b);
    drop(c); // the free list is full: c goes back to the heap
    let s = pool.stats();
    assert_eq!((s.free, s.released), (2, 1));
    assert_eq!(
        heap.stats().small.blocks_in_use[1],
        2,
        "two 32-byte blocks kept"
    );
    // LIFO: b first, then a.
    let x = Box::new_in([9u64; 4], &pool);
    let y = Box::new_in([9u64; 4], &pool);
    assert_eq!((&*x as *const _, &*y as *const _), (pb, pa));
    drop((x, y));
    assert_eq!(pool.trim(), 2 * 32);
    assert_eq!(heap.stats().bytes_in_use, 0);
}

#[test]
fn zeroize_wipes_freed_objects() {
    let heap = PrivateHeap::new();
    let pool = ObjectPool::<[u8; 64]>::with_policy(
        &heap,
        ObjectPolicy {
            zeroize: true,
            ..Default::default()
        },
    );
    let secret = Box::new_in([0x5a; 64], &pool);
    let p = Box::into_raw(secret);
    // SAFETY: `p` came from `Box::into_raw` with this pool.
    drop(unsafe { Box::from_raw_in(p, &pool) });
    // The memory (kept on the free list) no longer holds the secret except
    // for the free-list link in its first word.
    // SAFETY: the slot is still mapped (kept by the pool); reading it is
    // what an attacker with a stale pointer would do.
    let bytes = unsafe { core::slice::from_raw_parts(p.cast::<u8>(), 64) };
    assert!(
        bytes[8..].iter().all(|&b| b == 0),
        "secret left in freed memory"
    );
    // Reused, it reads all zero.
    let again = pool.alloc_slot().unwrap();
    assert_eq!(again.as_ptr(), p);
    // SAFETY: 64 bytes of the slot, ours until freed below.
    let reused = unsafe { core::slice::from_raw_parts(again.as_ptr().cast::<u8>(), 64) };
    assert!(reused.iter().all(|&b| b == 0));
    // SAFETY: from `alloc_slot`, holding no value.
    unsafe { pool.free_slot(again) };
}

#[test]
fn slabs_pack_objects_densely_and_return_at_drop() {
    let heap = PrivateHeap::new();
    let n: usize = 1000;
    {
        // 24-byte objects: 32-byte pool blocks on their own, 24 in a slab.
        let pool = ObjectPool::<[u64; 3]>::with_policy(
            &heap,
            ObjectPolicy {
                slab: Some(256),
                ..Default::default()
            },
        );
        let v: std::vec::Vec<_> = (0..n).map(|i| Box::new_in([i as u64; 3], &pool)).collect();
        assert_eq!(pool.stats().live, n);
        let s = heap.stats();
        assert_eq!(pool.stats().slabs, n.div_ceil(256));
        assert!(
            s.bytes_in_use < n * 32,
            "{} bytes for {n} objects",
            s.bytes_in_use
        );
        let addrs: std::vec::Vec<usize> = v.iter().map(|b| &**b as *const _ as usize).collect();
        assert!(
            addrs.windows(2).filter(|w| w[1] == w[0] + 24).count() > n * 9 / 10,
            "packed"
        );
        assert!(v.iter().enumerate().all(|(i, b)| b[2] == i as u64));
        drop(v);
        assert_eq!(pool.trim(), n.div_ceil(256) * 257 * 24);
        assert_eq!(heap.stats().bytes_in_use, 0);
        let _again = Box::new_in([7u64; 3], &pool);
        assert_eq!(pool.stats().slabs, 1);
    }
    assert_eq!(heap.stats().bytes_in_use, 0, "slabs returned at drop");
}

#[test]
fn other_layouts_fall_back_to_the_heap() {
    let heap = PrivateHeap::with_limit(16 << 20);
    let pool = ObjectPool::<u64>::new(&heap);
    // A Vec<u64> asks for arrays: served by the heap through the pool.
    let mut v: Vec<u64, _> = Vec::new_in(&pool);
    v.extend(0..10_000);
    assert_eq!(v.iter().sum::<u64>(), 49_995_000);
    let one = Box::new_in(5u64, &pool);
    assert_eq!(pool.stats().live, 1, "only the single u64 is the pool's");
    assert!(heap.stats().bytes_requested >= 80_000);
    // The heap's limit applies through the pool.
    {
        let mut big: Vec<u8, _> = Vec::new_in(&pool);
        assert!(big.try_reserve(64 << 20).is_err());
    }
    drop((v, one));
    drop(pool);
    assert_eq!(heap.stats().bytes_in_use, 0);
}

#[test]
fn owning_handles_and_zero_sized_types() {
    let heap = PrivateHeap::new();
    let pool = heap.objects::<std::string::String>();
    let h = pool.alloc("hello".to_string()).unwrap();
    assert_eq!(h.len(), 5);
    drop(h); // drops the String, returns the slot
    assert_eq!(pool.stats().free, 1);
    let units = heap.objects::<()>();
    let u = Box::new_in((), &units);
    drop(u);
    assert_eq!(units.stats().fresh, 0);
}
