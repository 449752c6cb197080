//! Layer 3: typed object pools on one private heap, each with the policy
//! its type needs: tree nodes from slabs, session keys wiped on free, and
//! short-lived messages on a bounded LIFO free list.
//!
//! `cargo run --release --example objects`

use allocator_api2::boxed::Box;
use pymalloc::{ObjectPolicy, ObjectPool, PrivateHeap};

/// A binary tree node whose children live in the same pool.
struct Node<'p, 'h> {
    left: Option<Box<Node<'p, 'h>, &'p ObjectPool<'h, Node<'p, 'h>>>>,
    right: Option<Box<Node<'p, 'h>, &'p ObjectPool<'h, Node<'p, 'h>>>>,
    value: u32,
}

fn build<'p, 'h>(
    pool: &'p ObjectPool<'h, Node<'p, 'h>>,
    depth: u32,
) -> Box<Node<'p, 'h>, &'p ObjectPool<'h, Node<'p, 'h>>> {
    Box::new_in(
        Node {
            left: (depth > 0).then(|| build(pool, depth - 1)),
            right: (depth > 0).then(|| build(pool, depth - 1)),
            value: depth,
        },
        pool,
    )
}

fn sum(n: &Node) -> u64 {
    n.value as u64 + n.left.as_deref().map_or(0, sum) + n.right.as_deref().map_or(0, sum)
}

fn main() {
    let heap = PrivateHeap::new();

    // Tree nodes: allocated and dropped in bulk, packed in slabs of 1024.
    let nodes = ObjectPool::with_policy(
        &heap,
        ObjectPolicy {
            slab: Some(1024),
            ..Default::default()
        },
    );
    for round in 0..3 {
        let tree = build(&nodes, 16);
        println!(
            "round {round}: tree sum {} with {:?}",
            sum(&tree),
            nodes.stats()
        );
    }
    println!(
        "slabs kept for the next tree: {} bytes in use",
        heap.stats().bytes_in_use
    );
    println!("trim gave back {} bytes", nodes.trim());

    // Session keys: wiped when freed.
    let keys = ObjectPool::<[u8; 32]>::with_policy(
        &heap,
        ObjectPolicy {
            zeroize: true,
            ..Default::default()
        },
    );
    let key = keys.alloc([0x42; 32]).unwrap();
    println!("key starts with {:02x}", key[0]);
    drop(key);

    // Messages: a bounded LIFO free list, the excess back to the heap.
    let messages = ObjectPool::<[u64; 8]>::with_policy(
        &heap,
        ObjectPolicy {
            max_free: 16,
            ..Default::default()
        },
    );
    let burst: Vec<_> = (0..100u64)
        .map(|i| Box::new_in([i; 8], &messages))
        .collect();
    drop(burst);
    println!("messages after a burst of 100: {:?}", messages.stats());
    println!("\n{}", heap.stats());
}
