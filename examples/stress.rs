//! Stress: pymalloc as the global allocator under many threads doing
//! random allocations from 0 bytes to 4 MiB, resizes, cross-thread frees,
//! contents checked on every free; meanwhile the main thread forks, and
//! each child allocates, frees and validates the heap before exiting.
//!
//! `cargo run --release --example stress -- --seconds 60 --threads 16`
//! (`.ci/stress` runs it; `.ci/run` runs a 10-second version.)

use pymalloc::PrivateHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static HEAP: PrivateHeap = PrivateHeap::new();

/// A block and the byte pattern it must hold.
struct Block {
    data: Vec<u8>,
    tag: u8,
}

impl Block {
    fn new(len: usize, tag: u8) -> Self {
        Self {
            data: vec![tag; len],
            tag,
        }
    }

    fn check(&self) {
        if let Some(i) = self.data.iter().position(|&b| b != self.tag) {
            eprintln!("corrupted block: len {}, byte {i}", self.data.len());
            std::process::abort();
        }
    }
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Mostly small, some medium, a few huge sizes, up to 4 MiB.
    fn size(&mut self) -> usize {
        (match self.below(100) {
            0..70 => self.below(513),
            70..95 => self.below(64 << 10),
            _ => self.below(4 << 20),
        }) as usize
    }
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

fn main() {
    let seconds = arg("--seconds", 5);
    let threads = arg("--threads", 8) as usize;
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    // One mailbox per thread: blocks sent there are checked and freed by
    // that thread (cross-thread frees).
    let mailboxes: Arc<Vec<Mutex<Vec<Block>>>> =
        Arc::new((0..threads).map(|_| Mutex::new(Vec::new())).collect());
    let workers: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, ops, mailboxes) = (stop.clone(), ops.clone(), mailboxes.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (t as u64 + 1));
                let mut slots: Vec<Option<Block>> = (0..64).map(|_| None).collect();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let i = rng.below(slots.len() as u64) as usize;
                    match rng.below(10) {
                        0..5 => {
                            if let Some(old) = slots[i].take() {
                                old.check();
                            }
                            let tag = rng.next() as u8;
                            slots[i] = Some(Block::new(rng.size(), tag));
                        }
                        5..7 => {
                            // Resize in place or move; contents kept.
                            if let Some(b) = &mut slots[i] {
                                b.check();
                                let len = rng.size();
                                b.data.resize(len, b.tag);
                                b.check();
                            }
                        }
                        7..9 => {
                            if let Some(b) = slots[i].take() {
                                let to = rng.below(mailboxes.len() as u64) as usize;
                                mailboxes[to].lock().unwrap().push(b);
                            }
                        }
                        _ => {
                            let mine = std::mem::take(&mut *mailboxes[t].lock().unwrap());
                            for b in mine {
                                b.check();
                            }
                        }
                    }
                    n += 1;
                }
                for b in slots.into_iter().flatten() {
                    b.check();
                }
                ops.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();

    let start = Instant::now();
    let mut forks = 0;
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(200));
        fork_and_allocate();
        forks += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    for m in mailboxes.iter() {
        for b in m.lock().unwrap().drain(..) {
            b.check();
        }
    }
    HEAP.validate();
    let s = HEAP.stats();
    println!(
        "stress: {} threads, {} s, {} operations, {forks} forks (children allocated and validated), \
         {} MiB mapped at the end",
        threads,
        seconds,
        ops.load(Ordering::Relaxed),
        s.bytes_mapped >> 20
    );
}

/// Forks while the workers allocate; the child allocates, frees and
/// validates the heap, then exits with 0.
#[cfg(unix)]
fn fork_and_allocate() {
    // SAFETY: the child only allocates through the heap (fork-safe with no
    // set-up), checks, and leaves with `_exit`.
    unsafe {
        let pid = libc::fork();
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let v: Vec<Block> = (0..200)
                .map(|i| Block::new(i * 997 % 70_000, i as u8))
                .collect();
            let s: String = (0..1000)
                .map(|i| char::from(b'a' + (i % 26) as u8))
                .collect();
            let big = Block::new(3 << 20, 7);
            v.iter().for_each(Block::check);
            big.check();
            assert_eq!(s.len(), 1000);
            drop((v, s, big));
            HEAP.validate();
            libc::_exit(0);
        }
        let mut status = 0;
        libc::waitpid(pid, &mut status, 0);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "forked child failed: status {status}"
        );
    }
}

#[cfg(not(unix))]
fn fork_and_allocate() {}
