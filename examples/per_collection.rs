//! Collections on a heap of their own: everything they allocate lives in
//! that heap, is counted by it, and is unmapped together when it is dropped.
//!
//! Run: `cargo run --release --example per_collection`

use allocator_api2::boxed::Box;
use allocator_api2::vec::Vec;
use pymalloc::PrivateHeap;

#[derive(Debug)]
struct Token<'h> {
    text: Vec<u8, &'h PrivateHeap>,
    line: u32,
}

fn tokenize<'h>(heap: &'h PrivateHeap, src: &str) -> Vec<Token<'h>, &'h PrivateHeap> {
    let mut out = Vec::new_in(heap);
    for (line, l) in src.lines().enumerate() {
        for word in l.split_whitespace() {
            let mut text = Vec::with_capacity_in(word.len(), heap);
            text.extend_from_slice(word.as_bytes());
            out.push(Token {
                text,
                line: line as u32 + 1,
            });
        }
    }
    out
}

fn main() {
    let source = "fn main() {\n    let x = 42;\n    println!(\"{x}\");\n}\n".repeat(20_000);
    let heap = PrivateHeap::new();
    {
        let tokens = tokenize(&heap, &source);
        let tree: Box<[u32], &PrivateHeap> = {
            let mut v = Vec::with_capacity_in(tokens.len(), &heap);
            v.extend(tokens.iter().map(|t| t.line));
            v.into_boxed_slice()
        };
        let s = heap.stats();
        println!(
            "{} tokens, last on line {}",
            tokens.len(),
            tree[tree.len() - 1]
        );
        println!(
            "first token: {:?}",
            std::str::from_utf8(&tokens[0].text).unwrap()
        );
        println!(
            "heap: {} B requested, {} B in use, {} B mapped, {} small blocks",
            s.bytes_requested,
            s.bytes_in_use,
            s.bytes_mapped,
            s.small.blocks_in_use.iter().sum::<usize>()
        );
    }
    let s = heap.stats();
    println!(
        "after the collections are dropped: {} B in use, {} B still mapped (spares)",
        s.bytes_in_use, s.bytes_mapped
    );
    heap.validate();
    drop(heap);
    println!("heap dropped: all its memory is back with the OS");
}
