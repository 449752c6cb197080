//! `fork()` in a multi-threaded program that never asks for fork safety:
//! pymalloc is the global allocator and the allocator of a per-collection
//! heap; four threads allocate and free 0-5000-byte blocks of both; the main
//! thread forks 60 times, and each child allocates 20,000 blocks from both
//! heaps, validates them and exits. A child that deadlocks is killed by an
//! alarm and fails the test. (Before fork safety became the default, the
//! child hung within a few forks.)
//!
//! Its own process (`harness = false`): forking from a test harness with
//! other tests' threads running would test the harness too.

#[global_allocator]
static HEAP: pymalloc::PrivateHeap = pymalloc::PrivateHeap::new();

/// A per-collection heap that outlives the workers.
static COLLECTION: pymalloc::PrivateHeap = pymalloc::PrivateHeap::new();

#[cfg(all(unix, not(miri)))]
fn main() {
    use allocator_api2::vec::Vec as VecIn;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    const FORKS: usize = 60;
    const CHILD_BLOCKS: usize = 20_000;

    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..4u64)
        .map(|t| {
            let (stop, ops) = (stop.clone(), ops.clone());
            std::thread::spawn(move || {
                let mut rng = 0x9e37_79b9_7f4a_7c15u64 ^ (t + 1);
                let mut global: Vec<Vec<u8>> = Vec::new();
                let mut local: Vec<VecIn<u8, &pymalloc::PrivateHeap>> = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    let size = (rng % 5001) as usize;
                    let slot = (rng >> 32) as usize % 64;
                    let mut v = Vec::with_capacity(size);
                    v.resize(size, t as u8);
                    let mut w = VecIn::with_capacity_in(size, &COLLECTION);
                    w.resize(size, t as u8);
                    if global.len() < 64 {
                        global.push(v);
                        local.push(w);
                    } else {
                        assert!(global[slot].iter().all(|&b| b == t as u8));
                        global[slot] = v;
                        local[slot] = w;
                    }
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();

    for round in 0..FORKS {
        std::thread::sleep(std::time::Duration::from_millis(5));
        // SAFETY: the child allocates through the two heaps (which must be
        // usable after a fork with no set-up: the point of the test),
        // checks, and leaves with `_exit`; `alarm` ends it if it hangs.
        unsafe {
            let pid = libc::fork();
            assert!(pid >= 0, "fork failed");
            if pid == 0 {
                libc::alarm(20);
                let mut blocks: Vec<Box<[u8]>> = Vec::with_capacity(CHILD_BLOCKS);
                let mut local = VecIn::new_in(&COLLECTION);
                for i in 0..CHILD_BLOCKS {
                    blocks.push(vec![i as u8; i % 5001].into_boxed_slice());
                    local.push(VecIn::<u8, _>::with_capacity_in(i % 700, &COLLECTION));
                }
                let ok = blocks
                    .iter()
                    .enumerate()
                    .all(|(i, b)| b.len() == i % 5001 && b.iter().all(|&x| x == i as u8));
                drop(blocks);
                drop(local);
                HEAP.validate();
                COLLECTION.validate();
                libc::_exit(if ok { 0 } else { 3 });
            }
            let mut status = 0;
            assert_eq!(libc::waitpid(pid, &mut status, 0), pid);
            if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
                let how = if libc::WIFSIGNALED(status) {
                    format!(
                        "killed by signal {} (14: the alarm, a deadlock)",
                        libc::WTERMSIG(status)
                    )
                } else {
                    format!("exit status {}", libc::WEXITSTATUS(status))
                };
                eprintln!("fork {round}: the child failed: {how}");
                println!("0 passed, 1 failed");
                std::process::exit(1);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    HEAP.validate();
    COLLECTION.validate();
    println!(
        "fork_default: {FORKS} forks under 4 allocating threads ({} operations); every child allocated {CHILD_BLOCKS} blocks from both heaps and exited cleanly",
        ops.load(Ordering::Relaxed)
    );
    println!("1 passed, 0 failed");
}

#[cfg(not(all(unix, not(miri))))]
fn main() {
    println!("fork_default: no fork() here");
}
