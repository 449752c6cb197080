//! Layer 3 against the plain heap and peers, one criterion run: build and
//! drop a binary tree of boxed nodes (depth 16: 131,071 nodes of 24 bytes)
//! and a 100,000-node linked list, with each node allocated from
//!
//! * `ObjectPool<Node>` with slabs of 1024 (`pool_slab`),
//! * `ObjectPool<Node>` with a free list as deep as the structure
//!   (`pool_freelist`),
//! * the `PrivateHeap` directly (`heap`),
//! * `std::alloc::System` and mimalloc, through an `Allocator` adapter.
//!
//! Run: `cargo bench -p pymalloc-suite --bench objects`.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use allocator_api2::alloc::{AllocError, Allocator};
use allocator_api2::boxed::Box;
use core::alloc::{GlobalAlloc, Layout};
use core::ptr::NonNull;
use criterion::{Criterion, criterion_group, criterion_main};
use pymalloc::{ObjectPolicy, ObjectPool, PrivateHeap};
use std::hint::black_box;
use std::time::Duration;

/// A `GlobalAlloc` as an `Allocator`.
struct Ga<G: 'static>(&'static G);

impl<G> Clone for Ga<G> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<G> Copy for Ga<G> {}

// SAFETY: forwards to a `GlobalAlloc`, whose blocks stay valid until freed;
// zero-sized requests get a dangling pointer that is never passed on.
unsafe impl<G: GlobalAlloc> Allocator for Ga<G> {
    fn allocate(&self, layout: Layout) -> Result<NonNull<[u8]>, AllocError> {
        if layout.size() == 0 {
            let p = NonNull::new(layout.align() as *mut u8).unwrap();
            return Ok(NonNull::slice_from_raw_parts(p, 0));
        }
        // SAFETY: non-zero size.
        let p = NonNull::new(unsafe { self.0.alloc(layout) }).ok_or(AllocError)?;
        Ok(NonNull::slice_from_raw_parts(p, layout.size()))
    }
    unsafe fn deallocate(&self, ptr: NonNull<u8>, layout: Layout) {
        if layout.size() != 0 {
            // SAFETY: allocated above with `layout`.
            unsafe { self.0.dealloc(ptr.as_ptr(), layout) }
        }
    }
}

const DEPTH: u32 = 16;
const LIST: usize = 100_000;

/// Defines a tree node type and list node type for allocator type `$a`,
/// and the functions building and summing them.
macro_rules! structures {
    ($module:ident, $a:ty) => {
        #[allow(dead_code)]
        mod $module {
            use super::*;
            pub(crate) struct Tree {
                pub left: Option<Box<Tree, $a>>,
                pub right: Option<Box<Tree, $a>>,
                pub value: u64,
            }
            pub(crate) fn tree(a: $a, depth: u32) -> Box<Tree, $a> {
                Box::new_in(
                    Tree {
                        left: (depth > 0).then(|| tree(a, depth - 1)),
                        right: (depth > 0).then(|| tree(a, depth - 1)),
                        value: depth as u64,
                    },
                    a,
                )
            }
            pub(crate) fn check(t: &Tree) -> u64 {
                t.value + t.left.as_deref().map_or(0, check) + t.right.as_deref().map_or(0, check)
            }
            pub(crate) struct List {
                pub next: Option<Box<List, $a>>,
                pub value: u64,
                pub pad: u64,
            }
            pub(crate) fn list(a: $a, n: usize) -> Option<Box<List, $a>> {
                let mut head = None;
                for i in 0..n {
                    head = Some(Box::new_in(
                        List {
                            next: head,
                            value: i as u64,
                            pad: 0,
                        },
                        a,
                    ));
                }
                head
            }
            pub(crate) fn drop_list(mut head: Option<Box<List, $a>>) -> u64 {
                // Iteratively, so the drop does not recurse 100,000 deep.
                let mut sum = 0;
                while let Some(mut node) = head {
                    sum += node.value + node.pad;
                    head = node.next.take();
                }
                sum
            }
        }
    };
}

static HEAP: PrivateHeap = PrivateHeap::new();
static MIMALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

structures!(on_heap, &'static PrivateHeap);
structures!(on_system, Ga<std::alloc::System>);
structures!(on_mimalloc, Ga<mimalloc::MiMalloc>);

/// Node types whose allocator is a pool of themselves need names of their
/// own (the type would otherwise be infinite).
mod on_pool {
    use super::*;
    pub(crate) struct Tree<'p> {
        pub(crate) left: Option<Box<Tree<'p>, &'p ObjectPool<'static, Tree<'p>>>>,
        pub(crate) right: Option<Box<Tree<'p>, &'p ObjectPool<'static, Tree<'p>>>>,
        pub(crate) value: u64,
    }
    pub(crate) fn tree<'p>(
        a: &'p ObjectPool<'static, Tree<'p>>,
        depth: u32,
    ) -> Box<Tree<'p>, &'p ObjectPool<'static, Tree<'p>>> {
        Box::new_in(
            Tree {
                left: (depth > 0).then(|| tree(a, depth - 1)),
                right: (depth > 0).then(|| tree(a, depth - 1)),
                value: depth as u64,
            },
            a,
        )
    }
    pub(crate) fn check(t: &Tree) -> u64 {
        t.value + t.left.as_deref().map_or(0, check) + t.right.as_deref().map_or(0, check)
    }
    pub(crate) struct List<'p> {
        pub(crate) next: Option<Box<List<'p>, &'p ObjectPool<'static, List<'p>>>>,
        pub(crate) value: u64,
        pub(crate) pad: u64,
    }
    pub(crate) fn list<'p>(
        a: &'p ObjectPool<'static, List<'p>>,
        n: usize,
    ) -> Option<Box<List<'p>, &'p ObjectPool<'static, List<'p>>>> {
        let mut head = None;
        for i in 0..n {
            head = Some(Box::new_in(
                List {
                    next: head,
                    value: i as u64,
                    pad: 0,
                },
                a,
            ));
        }
        head
    }
    pub(crate) fn drop_list<'p>(
        mut head: Option<Box<List<'p>, &'p ObjectPool<'static, List<'p>>>>,
    ) -> u64 {
        let mut sum = 0;
        while let Some(mut node) = head {
            sum += node.value + node.pad;
            head = node.next.take();
        }
        sum
    }
}

fn objects(c: &mut Criterion) {
    let slab = ObjectPolicy {
        slab: Some(1024),
        ..Default::default()
    };
    let deep = ObjectPolicy {
        max_free: 1 << 20,
        ..Default::default()
    };
    let mut g = c.benchmark_group("tree_depth16_build_drop");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    let pool = ObjectPool::with_policy(&HEAP, slab);
    g.bench_function("pool_slab", |b| {
        b.iter(|| black_box(on_pool::check(&on_pool::tree(&pool, DEPTH))))
    });
    let pool = ObjectPool::with_policy(&HEAP, deep);
    g.bench_function("pool_freelist", |b| {
        b.iter(|| black_box(on_pool::check(&on_pool::tree(&pool, DEPTH))))
    });
    g.bench_function("heap", |b| {
        b.iter(|| black_box(on_heap::check(&on_heap::tree(&HEAP, DEPTH))))
    });
    g.bench_function("system", |b| {
        b.iter(|| {
            black_box(on_system::check(&on_system::tree(
                Ga(&std::alloc::System),
                DEPTH,
            )))
        })
    });
    g.bench_function("mimalloc", |b| {
        b.iter(|| black_box(on_mimalloc::check(&on_mimalloc::tree(Ga(&MIMALLOC), DEPTH))))
    });
    g.finish();

    let mut g = c.benchmark_group("list_100k_build_drop");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    let pool = ObjectPool::with_policy(&HEAP, slab);
    g.bench_function("pool_slab", |b| {
        b.iter(|| black_box(on_pool::drop_list(on_pool::list(&pool, LIST))))
    });
    let pool = ObjectPool::with_policy(&HEAP, deep);
    g.bench_function("pool_freelist", |b| {
        b.iter(|| black_box(on_pool::drop_list(on_pool::list(&pool, LIST))))
    });
    g.bench_function("heap", |b| {
        b.iter(|| black_box(on_heap::drop_list(on_heap::list(&HEAP, LIST))))
    });
    g.bench_function("system", |b| {
        b.iter(|| {
            black_box(on_system::drop_list(on_system::list(
                Ga(&std::alloc::System),
                LIST,
            )))
        })
    });
    g.bench_function("mimalloc", |b| {
        b.iter(|| {
            black_box(on_mimalloc::drop_list(on_mimalloc::list(
                Ga(&MIMALLOC),
                LIST,
            )))
        })
    });
    g.finish();
}

criterion_group!(benches, objects);
criterion_main!(benches);
