//! `pymalloc::trace` end to end: exact counts and sizes per line (one
//! thread and several), snapshots compared, resizes, sampling estimates
//! against the truth, no allocation by the tracer on a traced heap, and the
//! debug hooks' report of where a bad block was made.
//!
//! The global allocator is a `PrivateHeap` behind a counter, so the global
//! heap is traced too. Tracing is process-wide: every test holds
//! `trace::tests_serial()`.

use allocator_api2::boxed::Box as HBox;
use allocator_api2::vec::Vec as HVec;
use core::alloc::{GlobalAlloc, Layout};
use pymalloc::PrivateHeap;
use pymalloc::trace::{self, Key, Statistic};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The global heap, counting the allocations of threads that ask.
struct Counting(PrivateHeap);

thread_local! {
    static COUNT_ME: Cell<bool> = const { Cell::new(false) };
}
static COUNTED: AtomicUsize = AtomicUsize::new(0);

fn count() {
    if COUNT_ME.try_with(Cell::get).unwrap_or(false) {
        COUNTED.fetch_add(1, Relaxed);
    }
}

// SAFETY: forwards every call to the heap, which implements the contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded (GlobalAlloc contract).
        unsafe { self.0.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: forwarded.
        unsafe { self.0.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded.
        unsafe { self.0.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: forwarded.
        unsafe { self.0.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting(PrivateHeap::new());

/// The statistic of line `line` of this file, if any.
fn at_line(stats: &[Statistic], line: u32) -> Option<&Statistic> {
    stats.iter().find(|s| {
        let f = &s.traceback.frames()[0];
        f.filename.ends_with("tests/trace.rs") && f.lineno == line
    })
}

#[test]
fn exact_counts_and_sizes_per_line() {
    let _serial = trace::tests_serial();
    let heap = PrivateHeap::new();
    trace::start(4);
    // (Vectors made first, on lines of their own: they are traced too.)
    let (mut small, mut big, mut strings) = (
        Vec::with_capacity(100),
        Vec::with_capacity(10),
        Vec::with_capacity(30),
    );
    small.extend((0..100).map(|_| HBox::new_in([0u8; 48], &heap)));
    let small_line = line!() - 1;
    for _ in 0..10 {
        big.push(HBox::new_in([0u8; 5000], &heap));
    }
    let big_line = line!() - 2;
    // The global heap is traced too.
    strings.extend((0..30).map(|_| String::with_capacity(200)));
    let strings_line = line!() - 1;
    let snapshot = trace::take_snapshot();
    let stats = snapshot.statistics(Key::Lineno);
    let s = at_line(&stats, small_line).expect("the small blocks' line");
    assert_eq!((s.size, s.count), (4800, 100), "{s}");
    let b = at_line(&stats, big_line).expect("the big blocks' line");
    assert_eq!((b.size, b.count), (50_000, 10), "{b}");
    let g = at_line(&stats, strings_line).unwrap_or_else(|| {
        panic!(
            "the strings' line {strings_line}:\n{}",
            trace::top(&stats, 20)
        )
    });
    assert_eq!((g.size, g.count), (6000, 30), "{g}");
    assert_eq!(
        stats[0].traceback,
        b.traceback,
        "biggest first:\n{}",
        trace::top(&stats, 5)
    );
    // Tracebacks: the test function is a frame of each.
    let by_tb = snapshot.statistics(Key::Traceback);
    let tb = by_tb.iter().find(|s| s.count == 100).unwrap();
    assert!(
        tb.traceback
            .frames()
            .iter()
            .any(|f| f.function.contains("exact_counts_and_sizes_per_line")),
        "{:#?}",
        tb.traceback.format()
    );
    let files = snapshot.statistics(Key::Filename);
    assert!(
        files
            .iter()
            .any(|s| s.traceback.frames()[0].filename.ends_with("tests/trace.rs"))
    );
    let (current, peak) = trace::get_traced_memory();
    assert!(current >= 4800 + 50_000 + 6000 && peak >= current);
    // Freed blocks leave: the boxes and their vector.
    let before = trace::get_traced_memory().0;
    drop(big);
    let after = trace::get_traced_memory().0;
    assert_eq!(
        before - after,
        50_000 + 10 * size_of::<HBox<[u8; 5000], &PrivateHeap>>()
    );
    let stats = trace::take_snapshot().statistics(Key::Lineno);
    assert!(at_line(&stats, big_line).is_none());
    trace::stop();
    assert_eq!(trace::get_traced_memory(), (0, 0));
    assert!(trace::take_snapshot().traces().is_empty());
    drop((small, strings));
}

#[test]
fn exact_counts_across_threads() {
    let _serial = trace::tests_serial();
    let heap = PrivateHeap::new();
    trace::start(1);
    let line = std::thread::scope(|s| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                s.spawn(|| {
                    let mut blocks = Vec::with_capacity(250);
                    blocks.extend((0..250).map(|i| HBox::new_in([i as u8; 100], &heap)));
                    (blocks, line!() - 1)
                })
            })
            .collect();
        let mut line = 0;
        let mut keep = Vec::new();
        for w in workers {
            let (blocks, l) = w.join().unwrap();
            line = l;
            keep.push(blocks);
        }
        // Freed on another thread than the one that allocated: half of them.
        for blocks in &mut keep {
            blocks.truncate(125);
        }
        let stats = trace::take_snapshot().statistics(Key::Lineno);
        let s = at_line(&stats, line).expect("the workers' line");
        assert_eq!((s.size, s.count), (4 * 125 * 100, 500), "{s}");
        line
    });
    let stats = trace::take_snapshot().statistics(Key::Lineno);
    assert!(
        at_line(&stats, line).is_none(),
        "all freed at the scope's end"
    );
    trace::stop();
}

#[test]
fn snapshots_compared_point_at_the_leak() {
    let _serial = trace::tests_serial();
    let heap = PrivateHeap::new();
    trace::start(2);
    let mut leak = Vec::with_capacity(200);
    let mut churn = 0usize;
    let mut round = |leak: &mut Vec<_>| {
        for i in 0..50 {
            leak.push(HBox::new_in([0u8; 64], &heap));
            churn += HBox::new_in([i as u8; 200], &heap)[0] as usize;
        }
    };
    let leak_line = line!() - 4;
    round(&mut leak);
    let first = trace::take_snapshot();
    round(&mut leak);
    round(&mut leak);
    let second = trace::take_snapshot();
    let diff = second.compare_to(&first, Key::Lineno);
    let top = &diff[0];
    let frame = &top.traceback.frames()[0];
    assert!(
        frame.filename.ends_with("tests/trace.rs") && frame.lineno == leak_line,
        "{}",
        trace::top(&diff, 3)
    );
    assert_eq!((top.size, top.size_diff), (150 * 64, 100 * 64));
    assert_eq!((top.count, top.count_diff), (150, 100));
    assert!(top.to_string().contains("count=150 (+100)"), "{top}");
    // The churned blocks were freed at once: in neither snapshot.
    let churn_line = leak_line + 1;
    assert!(
        diff.iter()
            .all(|d| d.traceback.frames()[0].lineno != churn_line
                || !d.traceback.frames()[0].filename.ends_with("tests/trace.rs"))
    );
    trace::stop();
    drop(leak);
    assert!(churn < usize::MAX);
}

#[test]
fn resized_blocks_keep_one_trace() {
    let _serial = trace::tests_serial();
    let heap = PrivateHeap::new();
    trace::start(1);
    let mut v: HVec<u64, _> = HVec::new_in(&heap);
    for i in 0..10_000u64 {
        v.push(i);
    }
    let push_line = line!() - 2;
    let at_push = || {
        let stats = trace::take_snapshot().statistics(Key::Lineno);
        at_line(&stats, push_line).map(|s| (s.size, s.count))
    };
    {
        let stats = trace::take_snapshot().statistics(Key::Traceback);
        let s: Vec<_> = stats
            .iter()
            .filter(|s| s.size == v.capacity() * 8)
            .collect();
        assert_eq!(s.len(), 1, "{}", trace::top(&stats, 5));
        assert_eq!(s[0].count, 1);
    }
    assert_eq!(at_push(), Some((16384 * 8, 1)));
    v.shrink_to(10_000);
    let shrink_line = line!() - 1;
    assert_eq!(
        at_push(),
        None,
        "a resized block is traced where it was resized"
    );
    let stats = trace::take_snapshot().statistics(Key::Lineno);
    assert_eq!(
        at_line(&stats, shrink_line).map(|s| (s.size, s.count)),
        Some((80_000, 1))
    );
    // The C-style interface too.
    // SAFETY: blocks of `heap` from `malloc`/`resize`, freed once.
    unsafe {
        let p = heap.malloc(10);
        let q = heap.resize(p, 100_000);
        let resize_line = line!() - 1;
        let stats = trace::take_snapshot().statistics(Key::Lineno);
        assert_eq!(
            at_line(&stats, resize_line).map(|s| (s.size, s.count)),
            Some((100_000, 1))
        );
        heap.free(q);
    }
    drop(v);
    let stats = trace::take_snapshot().statistics(Key::Lineno);
    assert!(at_line(&stats, shrink_line).is_none());
    trace::stop();
}

#[test]
fn object_traceback_and_folded_stacks() {
    let _serial = trace::tests_serial();
    let heap = PrivateHeap::new();
    trace::start(8);
    let b = HBox::new_in([1u32; 30], &heap);
    let line = line!() - 1;
    let tb = trace::get_object_traceback(b.as_ptr().cast()).expect("traced");
    assert_eq!(tb.frames()[0].lineno, line);
    assert!(tb.to_string().ends_with(&format!("tests/trace.rs:{line}")));
    let folded = trace::take_snapshot().folded();
    let mine = folded
        .lines()
        .find(|l| l.contains("object_traceback_and_folded_stacks (trace.rs:"))
        .expect(&folded);
    assert!(mine.ends_with(" 120"), "{mine}");
    trace::stop();
    assert!(trace::get_object_traceback(b.as_ptr().cast()).is_none());
}

#[test]
fn tracked_foreign_memory() {
    let _serial = trace::tests_serial();
    trace::start(1);
    let line = line!() + 1;
    trace::track(5, 0x5000_0000, 4096).unwrap();
    {
        let stats = trace::take_snapshot().statistics(Key::Lineno);
        assert_eq!(at_line(&stats, line).map(|s| s.size), Some(4096));
    }
    let before = trace::get_traced_memory().0;
    trace::untrack(5, 0x5000_0000).unwrap();
    trace::untrack(6, 0x5000_0000).unwrap();
    assert_eq!(trace::get_traced_memory().0, before - 4096);
    trace::stop();
    assert_eq!(trace::track(5, 1, 1), Err(trace::TrackError::NotTracing));
}

/// No allocation of the tracer's own reaches a traced heap: with the global
/// heap traced exactly, 1000 boxes are 1000 allocations, the first on a
/// fresh thread included.
#[test]
fn the_tracer_does_not_allocate_on_traced_heaps() {
    let _serial = trace::tests_serial();
    trace::start(trace::MAX_FRAMES);
    let counted = std::thread::spawn(|| {
        COUNT_ME.with(|c| c.set(true));
        let before = COUNTED.load(Relaxed);
        let mut boxes = [const { None }; 1000];
        for (i, b) in boxes.iter_mut().enumerate() {
            *b = Some(Box::new(i));
        }
        let after = COUNTED.load(Relaxed);
        COUNT_ME.with(|c| c.set(false));
        drop(boxes);
        after - before
    })
    .join()
    .unwrap();
    assert_eq!(counted, 1000);
    assert!(trace::get_traced_memory().1 >= 1000 * size_of::<usize>());
    trace::stop();
}

/// Sampling: one block per `MEAN` bytes on average; the estimates of live
/// memory per line within 10% of the truth (about 7 standard errors with
/// these numbers: 20 MB / 4 KiB = 4900 samples for the big blocks).
#[test]
fn sampling_estimates_are_unbiased() {
    const MEAN: usize = 4096;
    let _serial = trace::tests_serial();
    let heap = PrivateHeap::new();
    trace::start_sampling(MEAN, 1);
    let (mut big, mut small) = (Vec::with_capacity(20_000), Vec::with_capacity(300_000));
    big.extend((0..20_000).map(|_| HBox::new_in([0u8; 1000], &heap)));
    let big_line = line!() - 1;
    small.extend((0..300_000).map(|_| HBox::new_in([0u8; 48], &heap)));
    let small_line = line!() - 1;
    let snapshot = trace::take_snapshot();
    assert_eq!(snapshot.sample_mean(), Some(MEAN));
    let stats = snapshot.statistics(Key::Lineno);
    let near = |got: usize, truth: usize| (got as f64 - truth as f64).abs() <= 0.1 * truth as f64;
    let b = at_line(&stats, big_line).expect("sampled");
    assert!(near(b.size, 20_000_000) && near(b.count, 20_000), "{b}");
    let s = at_line(&stats, small_line).expect("sampled");
    assert!(near(s.size, 300_000 * 48) && near(s.count, 300_000), "{s}");
    // Far fewer traces than blocks.
    let traced_blocks: usize = snapshot.traces().len();
    assert!(traced_blocks < 100, "{traced_blocks} distinct tracebacks");
    // Everything traced: the blocks and their vectors.
    let (current, _) = trace::get_traced_memory();
    assert!(near(current, snapshot.total().0), "{current}");
    assert!(
        near(current, 20_000_000 + 300_000 * 48 + 320_000 * 16),
        "{current}"
    );
    drop((big, small, stats, snapshot));
    let (current, _) = trace::get_traced_memory();
    assert!(current < 1_000_000, "{current} left after freeing all");
    trace::stop();
}

/// The debug hooks' report says where the bad block was made: in a child
/// process (the report aborts).
#[test]
fn debug_report_names_the_allocation() {
    if std::env::var_os("TRACE_DEBUG_CHILD").is_some() {
        trace::start(4);
        pymalloc::PyMem_SetupDebugHooks();
        let p = pymalloc::PyMem_Malloc(10).cast::<u8>();
        println!("line {}", line!() - 1);
        // SAFETY: a write into the block's trailing guard bytes (inside the
        // debug block), which the hooks must report at the free.
        unsafe {
            p.add(10).write(0x78);
            pymalloc::PyMem_Free(p.cast());
        }
        unreachable!("the debug hooks abort");
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "debug_report_names_the_allocation",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TRACE_DEBUG_CHILD", "1")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line: u32 = stdout
        .lines()
        .find_map(|l| l.split("line ").nth(1))
        .expect(&stdout)
        .trim()
        .parse()
        .unwrap();
    assert!(stderr.contains("bad trailing pad byte"), "{stderr}");
    let at = stderr
        .split("Memory block allocated at (most recent call first):\n")
        .nth(1)
        .expect(&stderr);
    assert!(
        at.lines()
            .next()
            .unwrap()
            .ends_with(&format!("tests/trace.rs\", line {line}")),
        "{stderr}"
    );
}

/// `PYMALLOC_TRACE=N` (as `PYTHONTRACEMALLOC`) and `PYMALLOC_TRACE_SAMPLE`
/// start tracing at the process's first allocation: in child processes.
#[test]
fn environment_starts_tracing() {
    if let Some(want) = std::env::var_os("TRACE_ENV_CHILD") {
        let want = want.to_str().unwrap();
        let got = format!(
            "{} {} {:?}",
            trace::is_tracing(),
            trace::get_traceback_limit(),
            trace::sample_mean()
        );
        assert_eq!(got, want);
        return;
    }
    for (vars, want) in [
        (&[("PYMALLOC_TRACE", "5")][..], "true 5 None"),
        (&[("PYMALLOC_TRACE_SAMPLE", "65536")], "true 32 Some(65536)"),
        (
            &[("PYMALLOC_TRACE", "3"), ("PYMALLOC_TRACE_SAMPLE", "4096")],
            "true 3 Some(4096)",
        ),
        (&[("PYMALLOC_TRACE", "0")], "false 1 None"),
    ] {
        let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
        cmd.args(["--exact", "environment_starts_tracing", "--test-threads=1"])
            .env("TRACE_ENV_CHILD", want)
            .env_remove("PYMALLOC_TRACE")
            .env_remove("PYMALLOC_TRACE_SAMPLE");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{vars:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "environment_starts_tracing"])
        .env("TRACE_ENV_CHILD", "unused")
        .env("PYMALLOC_TRACE", "ten")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("PYMALLOC_TRACE=ten is not a number"));
}
