//! Allocation workloads, run on whatever allocator is the process's global
//! allocator. Each returns a checksum so the work cannot be optimised away.
//! Sizes are fixed so every allocator does exactly the same work.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicPtr, AtomicU64, Ordering};
use std::sync::mpsc;

/// xorshift64*: deterministic, allocation-free.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// pymalloc-shaped churn: ~100k live objects of 8–512 bytes, each step
/// frees a random one and allocates a replacement of random size.
pub fn churn(steps: usize) -> u64 {
    let mut rng = Rng::new(1);
    let mut live: Vec<Vec<u8>> = (0..100_000)
        .map(|_| vec![1u8; 8 + rng.below(505)])
        .collect();
    let mut sum = 0u64;
    for _ in 0..steps {
        let i = rng.below(live.len());
        sum = sum.wrapping_add(live[i][0] as u64 + live[i].len() as u64);
        live[i] = vec![2u8; 8 + rng.below(505)];
    }
    sum
}

enum Tree {
    Leaf,
    Node(Box<Tree>, Box<Tree>),
}

fn build(depth: u32) -> Tree {
    if depth == 0 {
        Tree::Leaf
    } else {
        Tree::Node(Box::new(build(depth - 1)), Box::new(build(depth - 1)))
    }
}

fn check(t: &Tree) -> u64 {
    match t {
        Tree::Leaf => 1,
        Tree::Node(l, r) => 1 + check(l) + check(r),
    }
}

/// Binary trees (as in the benchmarks game): a long-lived tree, many
/// short-lived ones built and dropped.
pub fn binary_trees(max_depth: u32) -> u64 {
    let long_lived = build(max_depth);
    let mut sum = 0;
    let mut depth = 4;
    while depth <= max_depth {
        let iterations = 1u64 << (max_depth - depth + 4);
        for _ in 0..iterations {
            sum += check(&build(depth));
        }
        depth += 2;
    }
    sum + check(&long_lived)
}

/// Binary trees on `threads` threads at once, each building and checking its
/// own trees (a long-lived one and many short-lived ones): the single-thread
/// test with every thread's heap busy together; nothing crosses threads.
pub fn binary_trees_threads(threads: usize, max_depth: u32) -> u64 {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| s.spawn(move || binary_trees(max_depth)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

/// `Vec` and `String` growth: buffers grown element by element, from empty
/// to 8 B … 1 MiB, many small and a few large.
pub fn vec_string_growth(rounds: usize) -> u64 {
    let mut rng = Rng::new(3);
    let mut sum = 0u64;
    for r in 0..rounds {
        let n = if r % 64 == 0 {
            1 << 17
        } else {
            1 + rng.below(400)
        };
        let mut v: Vec<u64> = Vec::new();
        for i in 0..n {
            v.push(i as u64);
        }
        let mut s = String::new();
        for _ in 0..n / 4 + 1 {
            s.push_str("py");
        }
        sum = sum.wrapping_add(v[n - 1] + s.len() as u64);
    }
    sum
}

/// Realloc-heavy growth of 8 buffers side by side (4 `Vec<u64>` grown by
/// `push`, 4 `String`s by `push_str` of 1–24 bytes), taking turns, so their
/// reallocations interleave and no buffer just grows at the top of the heap.
/// Each round gives every buffer a fresh target, log-uniform from 64 B to
/// 4 MiB, so most reallocations are small and most bytes copied are in
/// large ones (hundreds of KiB to MiB, where allocators switch to mmap).
pub fn vec_growth_8x(rounds: usize) -> u64 {
    const PIECE: &str = "pymalloc-growth-pymalloc";
    let mut rng = Rng::new(5);
    let mut sum = 0u64;
    for _ in 0..rounds {
        // Targets in bytes: 2^(6 + x), x uniform in [0, 16).
        let mut targets = [0usize; 8];
        for t in &mut targets {
            let bits = 6 + rng.below(16);
            *t = (1 << bits) + rng.below(1 << bits);
        }
        let mut vecs: [Vec<u64>; 4] = Default::default();
        let mut strings: [String; 4] = Default::default();
        let mut busy = true;
        while busy {
            busy = false;
            for (v, &t) in vecs.iter_mut().zip(&targets[..4]) {
                if v.len() * 8 < t {
                    // 16 pushes a turn: the loop's overhead stays small.
                    for _ in 0..16 {
                        v.push(v.len() as u64);
                    }
                    busy = true;
                }
            }
            for (st, &t) in strings.iter_mut().zip(&targets[4..]) {
                if st.len() < t {
                    for k in 0..16 {
                        st.push_str(&PIECE[..1 + (st.len() + k) % PIECE.len()]);
                    }
                    busy = true;
                }
            }
        }
        for v in &vecs {
            sum = sum.wrapping_add(v.len() as u64 + v[v.len() - 1]);
        }
        for st in &strings {
            sum = sum.wrapping_add(st.len() as u64 + st.as_bytes()[st.len() / 2] as u64);
        }
    }
    sum
}

/// A JSON document of about `bytes` bytes when serialised, as nested
/// `serde_json::Value`s (`Vec<Value>` arrays, `String`s, `BTreeMap` objects):
/// an array of records with strings, numbers, a tag array and a nested
/// object of their own.
fn json_document(rng: &mut Rng, bytes: usize) -> serde_json::Value {
    use serde_json::{Map, Value};
    let mut records = Vec::new();
    let mut size = 0;
    while size < bytes {
        let id = records.len();
        let mut record = Map::new();
        record.insert("id".into(), Value::from(id));
        let name = format!("record-{id}-{}", "x".repeat(rng.below(40)));
        size += name.len();
        record.insert("name".into(), Value::String(name));
        record.insert(
            "score".into(),
            Value::from(rng.below(1_000_000) as f64 / 7.0),
        );
        record.insert("active".into(), Value::Bool(rng.below(2) == 0));
        let tags: Vec<Value> = (0..rng.below(12))
            .map(|t| Value::String(format!("tag{t}-{}", rng.below(1000))))
            .collect();
        let mut nested = Map::new();
        for k in 0..rng.below(8) {
            nested.insert(
                format!("field_{k}"),
                Value::Array((0..rng.below(6)).map(|x| Value::from(x * k)).collect()),
            );
        }
        size += 80 + 12 * tags.len() + 20 * nested.len();
        record.insert("tags".into(), Value::Array(tags));
        record.insert("nested".into(), Value::Object(nested));
        records.push(Value::Object(record));
    }
    let mut root = Map::new();
    root.insert("version".into(), Value::from(1));
    root.insert("records".into(), Value::Array(records));
    Value::Object(root)
}

/// JSON on `threads` threads at once: each builds documents of 2–6 MB (see
/// `json_document`), serialises each to a `String` and parses it back, so
/// the heap sees the tree's many small blocks, a growing multi-MiB string
/// and the parser's nested collections.
pub fn json_threads(threads: usize, documents: usize) -> u64 {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut rng = Rng::new(30 + t as u64);
                    let mut sum = 0u64;
                    for _ in 0..documents {
                        let bytes = (2 << 20) + rng.below(4 << 20);
                        let doc = json_document(&mut rng, bytes);
                        let text = serde_json::to_string(&doc).unwrap();
                        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
                        let records = back["records"].as_array().map_or(0, Vec::len);
                        sum = sum.wrapping_add(text.len() as u64 + records as u64);
                    }
                    sum
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    })
}

/// `BTreeMap<String, Vec<u64>>` churn: inserts and removes random keys.
pub fn btree_churn(ops: usize) -> u64 {
    let mut rng = Rng::new(4);
    let mut map: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut sum = 0u64;
    for _ in 0..ops {
        let key = format!("key-{}", rng.below(20_000));
        if rng.below(3) == 0 {
            if let Some(v) = map.remove(&key) {
                sum = sum.wrapping_add(v.len() as u64);
            }
        } else {
            let len = rng.below(16);
            map.entry(key).or_default().extend(0..len as u64);
        }
    }
    sum + map.len() as u64
}

/// A block handed between threads: a boxed byte vector.
type Block = Vec<u8>;

/// larson-like: each thread replaces random slots of its own with blocks of
/// random size; one in eight replacements is swapped through a shared
/// mailbox, so its old block is freed by another thread.
pub fn larson(threads: usize, steps: usize) -> u64 {
    let mailboxes: Vec<AtomicPtr<Block>> = (0..threads * 64)
        .map(|_| AtomicPtr::new(std::ptr::null_mut()))
        .collect();
    let total = AtomicU64::new(0);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (mailboxes, total) = (&mailboxes, &total);
            s.spawn(move || {
                let mut rng = Rng::new(10 + t as u64);
                let mut slots: Vec<Block> =
                    (0..1000).map(|_| vec![0u8; 16 + rng.below(1000)]).collect();
                let mut sum = 0u64;
                for _ in 0..steps {
                    let i = rng.below(slots.len());
                    let fresh = vec![t as u8; 16 + rng.below(1000)];
                    let old = std::mem::replace(&mut slots[i], fresh);
                    sum = sum.wrapping_add(old.len() as u64);
                    if rng.below(8) == 0 {
                        let m = &mailboxes[rng.below(mailboxes.len())];
                        let theirs = m.swap(Box::into_raw(Box::new(old)), Ordering::AcqRel);
                        if !theirs.is_null() {
                            // SAFETY: every mailbox pointer came from Box::into_raw
                            // and is taken out exactly once (swap).
                            drop(unsafe { Box::from_raw(theirs) });
                        }
                    }
                }
                total.fetch_add(sum, Ordering::Relaxed);
            });
        }
    });
    for m in &mailboxes {
        let p = m.swap(std::ptr::null_mut(), Ordering::AcqRel);
        if !p.is_null() {
            // SAFETY: as above.
            drop(unsafe { Box::from_raw(p) });
        }
    }
    total.load(Ordering::Relaxed)
}

/// Producer/consumer: half the threads allocate, the other half free, so
/// every free is remote. Bounded channels, allocated up front.
pub fn producer_consumer(threads: usize, items: usize) -> u64 {
    let pairs = (threads / 2).max(1);
    let total = AtomicU64::new(0);
    std::thread::scope(|s| {
        for p in 0..pairs {
            let (tx, rx) = mpsc::sync_channel::<Box<[u64]>>(256);
            s.spawn(move || {
                let mut rng = Rng::new(20 + p as u64);
                for i in 0..items {
                    let len = 1 + rng.below(32);
                    tx.send(vec![i as u64; len].into_boxed_slice()).unwrap();
                }
            });
            let total = &total;
            s.spawn(move || {
                let mut sum = 0u64;
                for b in rx {
                    sum = sum.wrapping_add(b[0] + b.len() as u64);
                }
                total.fetch_add(sum, Ordering::Relaxed);
            });
        }
    });
    total.load(Ordering::Relaxed)
}

/// False sharing: one thread allocates small counters back to back; each
/// worker thread then hammers its own counter. Allocators that put one
/// thread's consecutive small blocks on one cache line make workers fight
/// over it.
pub fn false_sharing(threads: usize, increments: u64) -> u64 {
    let counters: Vec<Box<AtomicU64>> = (0..threads).map(|_| Box::new(AtomicU64::new(0))).collect();
    std::thread::scope(|s| {
        for c in &counters {
            s.spawn(move || {
                for _ in 0..increments {
                    c.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    counters
        .iter()
        .map(|c| black_box(c.load(Ordering::Relaxed)))
        .sum()
}

/// Every workload: name and a closure doing a fixed amount of work.
/// A named workload.
pub type Workload = (&'static str, Box<dyn Fn() -> u64>);

pub fn all() -> Vec<Workload> {
    vec![
        ("churn", Box::new(|| churn(2_000_000))),
        ("binary_trees", Box::new(|| binary_trees(17))),
        ("binary_trees_2t", Box::new(|| binary_trees_threads(2, 16))),
        ("vec_string_growth", Box::new(|| vec_string_growth(80_000))),
        ("vec_growth_8x", Box::new(|| vec_growth_8x(150))),
        ("btree_churn", Box::new(|| btree_churn(400_000))),
        ("larson_2t", Box::new(|| larson(2, 1_000_000))),
        ("larson_4t", Box::new(|| larson(4, 500_000))),
        (
            "producer_consumer_2t",
            Box::new(|| producer_consumer(2, 500_000)),
        ),
        (
            "producer_consumer_4t",
            Box::new(|| producer_consumer(4, 250_000)),
        ),
        ("json_2t", Box::new(|| json_threads(2, 2))),
        (
            "false_sharing_2t",
            Box::new(|| false_sharing(2, 50_000_000)),
        ),
        (
            "false_sharing_4t",
            Box::new(|| false_sharing(4, 25_000_000)),
        ),
    ]
}

/// Resident set size and its peak, from `/proc/self/status` (kB → bytes).
pub fn rss() -> (usize, usize) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Memory workload: 1 GiB of live small objects (16–256 B), then a random
/// 90% freed, then the rest. `trim` gives the allocator's unused memory
/// back (a no-op for allocators without one).
pub struct MemoryReport {
    /// RSS before starting.
    pub base: usize,
    /// Live bytes at the peak.
    pub live: usize,
    /// RSS at the peak.
    pub peak: usize,
    /// Live bytes after freeing 90%.
    pub kept: usize,
    /// RSS after freeing 90%.
    pub after_90: usize,
    /// RSS after freeing 90% and `trim`.
    pub after_90_trim: usize,
    /// RSS one second after freeing everything (no `trim`).
    pub after_all: usize,
}

pub fn memory_1gib(trim: fn()) -> MemoryReport {
    let (base, _) = rss();
    let mut rng = Rng::new(7);
    let target = 1usize << 30;
    let mut live = 0usize;
    let mut blocks: Vec<Vec<u8>> = Vec::with_capacity(target / 100);
    while live < target {
        let len = 16 + rng.below(241);
        let mut b = Vec::with_capacity(len);
        b.resize(len, 1u8);
        live += len;
        blocks.push(b);
    }
    let (peak, _) = rss();
    let mut kept = 0usize;
    for b in blocks.iter_mut() {
        if rng.below(10) == 0 {
            kept += b.len();
        } else {
            *b = Vec::new();
        }
    }
    let (after_90, _) = rss();
    trim();
    let (after_90_trim, _) = rss();
    black_box(&blocks);
    drop(blocks);
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (after_all, _) = rss();
    MemoryReport {
        base,
        live,
        peak,
        kept,
        after_90,
        after_90_trim,
        after_all,
    }
}

/// A fixed-count alloc+free loop through `std::alloc` (so through the global
/// allocator and Rust's allocation shims), for instruction counting.
#[inline(never)]
pub fn pairs(size: usize, count: usize) {
    let layout = std::alloc::Layout::from_size_align(size, 8).unwrap();
    for _ in 0..count {
        // SAFETY: non-zero layout; freed with the same layout.
        unsafe {
            let p = std::alloc::alloc(black_box(layout));
            std::alloc::dealloc(black_box(p), layout);
        }
    }
}

/// Alloc+free pairs of one size, timed as a workload: 2 million, or 200,000
/// from 1 MiB up (where some allocators map and unmap each block, 4 µs a
/// pair).
fn pair_workload(size: usize) -> u64 {
    pairs(size, if size < 1 << 20 { 2_000_000 } else { 200_000 });
    size as u64
}

/// The micro workloads, also run per process so that allocators that cannot
/// share one binary (mimalloc's v2 and v3 lines) are compared too.
pub fn micro() -> Vec<(String, Box<dyn Fn() -> u64>)> {
    [16usize, 64, 256, 512, 4096, 65536, 1 << 20, 1 << 22]
        .into_iter()
        .map(|s| {
            (
                format!("pair_{s}"),
                Box::new(move || pair_workload(s)) as Box<dyn Fn() -> u64>,
            )
        })
        .collect()
}

/// The micro and ordinary workloads selected by `filter`: `=NAME` is an
/// exact name, anything else a substring ("" selects all).
fn timed(filter: &str) -> Vec<(String, Box<dyn Fn() -> u64>)> {
    let mut list: Vec<(String, Box<dyn Fn() -> u64>)> = micro();
    list.extend(all().into_iter().map(|(n, f)| (n.to_string(), f)));
    list.retain(|(n, _)| match filter.strip_prefix('=') {
        Some(exact) => n == exact,
        None => n.contains(filter),
    });
    list
}

/// Entry point of a workload binary whose global allocator is `name`;
/// `pairs_direct(size, count)` runs the instruction-count loop on it, `trim`
/// gives its unused memory back (if it can).
pub fn main(name: &str, pairs_direct: fn(usize, usize), trim: fn()) {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    match args.first().map(String::as_str) {
        Some("pairs") => {
            let size = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(32);
            let count = args
                .get(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or(1_000_000);
            pairs_direct(size, count);
        }
        Some("peak") => {
            // One workload alone in this process: its peak RSS.
            let workload = args.get(1).cloned().unwrap_or_default();
            let (_, f) = all()
                .into_iter()
                .find(|(n, _)| *n == workload)
                .expect("unknown workload");
            black_box(f());
            let (_, peak) = rss();
            println!("PEAK\t{name}\t{workload}\t{peak}");
        }
        Some("memory") => {
            let m = memory_1gib(trim);
            println!(
                "MEMORY\t{name}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
                m.base, m.live, m.peak, m.kept, m.after_90, m.after_90_trim, m.after_all
            );
        }
        Some("list") => {
            // The workloads `time FILTER` would run, one name a line.
            let filter = args.get(1).map_or("", String::as_str);
            for (workload, _) in timed(filter) {
                println!("{workload}");
            }
        }
        _ => {
            // `time FILTER`: every workload whose name contains FILTER;
            // `time =NAME`: exactly the workload NAME (run.py's one
            // workload per process), an error if there is none.
            let filter = args.get(1).map_or("", String::as_str);
            let list = timed(filter);
            if let (true, Some(exact)) = (list.is_empty(), filter.strip_prefix('=')) {
                eprintln!("unknown workload {exact}");
                std::process::exit(2);
            }
            for (workload, f) in list {
                let start = std::time::Instant::now();
                let checksum = black_box(f());
                let secs = start.elapsed().as_secs_f64();
                println!("TIME\t{name}\t{workload}\t{secs:.6}\t{checksum}");
            }
        }
    }
    // Leave without exit handlers: a scoped thread joined by a workload may
    // still be running its thread-local destructors, and rpmalloc (linked
    // into every process of this binary, in its preload mode) tears its
    // global state down in an exit handler while such a thread still
    // releases its heap into it: a crash at exit, seen in 2 of 60 runs of
    // larson_4t whichever allocator was selected. Results are printed.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // SAFETY: `_exit` ends the process at once; nothing runs after it.
    unsafe { libc::_exit(0) }
}
