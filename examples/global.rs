//! `PrivateHeap` as the global allocator of a program doing real work:
//! word counting over generated text, a binary tree, sorting strings. Prints
//! the heap's usage as it goes.
//!
//! Run: `cargo run --release --example global`

use pymalloc::PrivateHeap;
use std::collections::HashMap;

#[global_allocator]
static HEAP: PrivateHeap = PrivateHeap::new();

fn report(stage: &str) {
    let s = HEAP.stats();
    println!(
        "{stage:<28} requested {:>10} B  in use {:>10} B  mapped {:>10} B  arenas {:>3}  medium chunks {:>2}  huge {:>2}",
        s.bytes_requested,
        s.bytes_in_use,
        s.bytes_mapped,
        s.raw.arena_chunks,
        s.raw.medium_chunks,
        s.raw.huge_blocks
    );
}

/// A deterministic pseudo-random generator (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
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

fn count(t: &Tree) -> usize {
    match t {
        Tree::Leaf => 1,
        Tree::Node(l, r) => 1 + count(l) + count(r),
    }
}

fn main() {
    report("start");
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let syllables = [
        "py", "mal", "loc", "are", "na", "pool", "blo", "ck", "he", "ap",
    ];
    let text: Vec<String> = (0..400_000)
        .map(|_| {
            (0..1 + rng.next() % 3)
                .map(|_| syllables[(rng.next() % 10) as usize])
                .collect()
        })
        .collect();
    report("400k words generated");

    let mut freq: HashMap<&str, usize> = HashMap::new();
    for w in &text {
        *freq.entry(w.as_str()).or_default() += 1;
    }
    let mut top: Vec<(&str, usize)> = freq.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    println!("most frequent words: {:?}", &top[..5]);
    report("word counts");

    let tree = build(18);
    println!("binary tree of depth 18 has {} nodes", count(&tree));
    report("tree built");
    drop(tree);
    report("tree dropped");

    let mut sorted = text.clone();
    sorted.sort_unstable();
    sorted.dedup();
    println!("{} distinct words", sorted.len());
    let big: Vec<u64> = (0..4_000_000).collect();
    report("big vector (32 MB)");
    println!("sum of big vector: {}", big.iter().sum::<u64>());
    drop((top, big, sorted));
    drop(text);
    report("all dropped");
    HEAP.validate();
}
