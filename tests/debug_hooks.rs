//! The debug hooks (`PYMALLOC=debug`): each fault is triggered in a child
//! process, which must abort with a report naming the block's address,
//! requested size, serial number, domain and the bad bytes.
//!
//! A custom harness: run without arguments, this binary is the parent and
//! re-runs itself once per fault with `PYMALLOC_FAULT` set.

use core::ffi::c_void;
use pymalloc::*;
use std::process::Command;

static COUNTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

unsafe extern "C" fn counting_malloc(ctx: *mut c_void, n: usize) -> *mut c_void {
    COUNTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let inner = pymalloc::pymem::default_allocator(PyMemAllocatorDomain::Mem);
    // SAFETY: the default allocator, per its contract.
    unsafe { (inner.malloc)(ctx, n) }
}

fn child(fault: &str) {
    // SAFETY: each fault misuses the interface on purpose; the debug hooks
    // must catch it before memory is corrupted for real (the blocks written
    // out of bounds are only written inside their guard bytes).
    unsafe {
        match fault {
            "clean" => {
                let p = PyMem_Malloc(8).cast::<u8>();
                assert!(std::slice::from_raw_parts(p, 8).iter().all(|&b| b == 0xCD));
                p.write_bytes(1, 8);
                let q = PyMem_Realloc(p.cast(), 100).cast::<u8>();
                assert!(std::slice::from_raw_parts(q, 8).iter().all(|&b| b == 1));
                let r = PyObject_Calloc(3, 5).cast::<u8>();
                assert!(std::slice::from_raw_parts(r, 15).iter().all(|&b| b == 0));
                let z = PyMem_RawMalloc(0);
                assert!(!z.is_null());
                assert!(PyMem_DebugCheckAll() >= 3);
                assert!(PyMem_Realloc(q.cast(), usize::MAX).is_null());
                PyMem_Free(q.cast());
                PyObject_Free(r.cast());
                PyMem_RawFree(z);
                PyMem_Free(core::ptr::null_mut());
                println!("clean run ok, hooks {}", debug_hooks_installed());
            }
            "rewrap" | "rewrap_overflow" => {
                // A new Mem allocator over the default one, then the debug
                // hooks again: they must wrap the new allocator.
                let debug = PyMem_GetAllocator(PyMemAllocatorDomain::Mem);
                PyMem_SetAllocator(
                    PyMemAllocatorDomain::Mem,
                    &PyMemAllocatorEx {
                        ctx: core::ptr::null_mut(),
                        malloc: counting_malloc,
                        ..pymalloc::pymem::default_allocator(PyMemAllocatorDomain::Mem)
                    },
                );
                PyMem_SetupDebugHooks();
                let now = PyMem_GetAllocator(PyMemAllocatorDomain::Mem);
                assert!(core::ptr::fn_addr_eq(now.malloc, debug.malloc));
                assert_ne!(
                    now.ctx, debug.ctx,
                    "a fresh debug context over the new allocator"
                );
                let p = PyMem_Malloc(10).cast::<u8>();
                assert_eq!(COUNTED.load(std::sync::atomic::Ordering::Relaxed), 1);
                assert_eq!(PyMem_GetCurrentAllocatorName(), None);
                if fault == "rewrap_overflow" {
                    p.add(10).write(b'z');
                }
                PyMem_Free(p.cast());
                println!("rewrap ok");
            }
            "name" => {
                let p = PyMem_Malloc(100).cast::<u8>();
                p.write_bytes(3, 100);
                let q = PyObject_Realloc(PyObject_Malloc(5), 7000);
                PyObject_Free(q);
                PyMem_Free(p.cast());
                println!(
                    "name={}",
                    PyMem_GetCurrentAllocatorName().unwrap_or("custom")
                );
            }
            "stats" => {
                let blocks: Vec<_> = (0..1000).map(|_| PyObject_Malloc(32)).collect();
                for b in blocks {
                    PyObject_Free(b);
                }
                println!("stats run ok");
            }
            "overflow" => {
                let p = PyMem_Malloc(10).cast::<u8>();
                p.add(10).write(b'x');
                PyMem_Free(p.cast());
            }
            "underflow" => {
                let p = PyObject_Malloc(24).cast::<u8>();
                p.sub(1).write(b'y');
                PyObject_Free(p.cast());
            }
            "realloc_overflow" => {
                let p = PyMem_RawMalloc(33).cast::<u8>();
                p.add(35).write(0);
                PyMem_RawRealloc(p.cast(), 100);
            }
            "double_free" => {
                let p = PyMem_Malloc(100);
                PyMem_Free(p);
                PyMem_Free(p);
            }
            "foreign" => {
                let mut local = [0u128; 8];
                PyMem_Free(local.as_mut_ptr().add(4).cast::<c_void>());
            }
            "wrong_domain" => {
                let p = PyObject_Malloc(48);
                PyMem_Free(p);
            }
            "use_after_free" => {
                let p = PyMem_Malloc(64).cast::<u8>();
                PyMem_Free(p.cast());
                p.add(20).write(0x42);
                // The same thread's next block of this size reuses it.
                let q = PyMem_Malloc(64);
                println!("not detected: {q:?}");
            }
            "check_all" => {
                let _ok = PyMem_Malloc(5);
                let p = PyMem_Malloc(7).cast::<u8>();
                p.add(9).write(0);
                PyMem_DebugCheckAll();
            }
            other => panic!("unknown fault {other}"),
        }
    }
}

/// Runs the child for `fault`; returns (aborted, stderr).
fn run(fault: &str, via_env: bool) -> (bool, String) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("PYMALLOC_FAULT", fault);
    if via_env {
        cmd.env("PYMALLOC", "debug");
    } else {
        cmd.env_remove("PYMALLOC").env("PYMALLOC_SETUP", "1");
    }
    let out = cmd.output().unwrap();
    #[cfg(unix)]
    let aborted = {
        use std::os::unix::process::ExitStatusExt;
        out.status.signal() == Some(libc_sigabrt())
    };
    #[cfg(not(unix))]
    let aborted = !out.status.success();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (aborted, text)
}

fn libc_sigabrt() -> i32 {
    6
}

fn expect(fault: &str, needles: &[&str]) {
    let (aborted, text) = run(fault, true);
    assert!(aborted, "{fault}: the child must abort; output:\n{text}");
    for n in needles {
        assert!(text.contains(n), "{fault}: report lacks {n:?}:\n{text}");
    }
    // Every report names the block's address and ends with a fatal line.
    assert!(
        text.contains("Debug memory block at address p=0x"),
        "{fault}:\n{text}"
    );
    assert!(text.contains("Fatal error in debug"), "{fault}:\n{text}");
    println!("{fault}: detected");
}

fn main() {
    if let Ok(fault) = std::env::var("PYMALLOC_FAULT") {
        if std::env::var_os("PYMALLOC_SETUP").is_some() {
            PyMem_SetupDebugHooks();
        }
        child(&fault);
        return;
    }
    // Normal use under the hooks works, whether enabled by the environment
    // or by PyMem_SetupDebugHooks().
    for via_env in [true, false] {
        let (aborted, text) = run("clean", via_env);
        assert!(
            !aborted && text.contains("clean run ok, hooks true"),
            "{text}"
        );
    }
    // Every PYMALLOC mode of CPython's PYTHONMALLOC, by its name; an
    // unknown one is refused with a report naming the variable.
    for (mode, name) in [
        ("pymalloc", "pymalloc"),
        ("debug", "pymalloc_debug"),
        ("pymalloc_debug", "pymalloc_debug"),
        ("malloc", "malloc"),
        ("malloc_debug", "malloc_debug"),
        ("bogus", ""),
    ] {
        let out = Command::new(std::env::current_exe().unwrap())
            .env("PYMALLOC_FAULT", "name")
            .env("PYMALLOC", mode)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if name.is_empty() {
            assert!(!out.status.success(), "{mode}: accepted:\n{text}");
            assert!(
                text.contains("PYMALLOC=bogus is not a known allocator"),
                "{text}"
            );
        } else {
            assert!(text.contains(&format!("name={name}\n")), "{mode}:\n{text}");
        }
    }
    println!("PYMALLOC modes: named as CPython's; an unknown one refused");
    // PYMALLOCSTATS: the report on each new arena and at exit.
    let out = Command::new(std::env::current_exe().unwrap())
        .env("PYMALLOC_FAULT", "stats")
        .env_remove("PYMALLOC")
        .env("PYMALLOCSTATS", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let reports = err
        .matches("\nTotal                              =")
        .count();
    assert!(
        reports >= 2,
        "one report per new arena and one at exit:\n{err}"
    );
    assert!(
        err.contains("# arenas allocated total           ="),
        "{err}"
    );
    println!("PYMALLOCSTATS: {reports} reports (new arena, exit)");
    let (aborted, text) = run("rewrap", true);
    assert!(!aborted && text.contains("rewrap ok"), "{text}");
    expect(
        "rewrap_overflow",
        &["bad trailing pad byte", "10 bytes originally requested"],
    );
    expect(
        "overflow",
        &[
            "bad trailing pad byte",
            "API 'm'",
            "10 bytes originally requested",
            "made by call #",
            "at tail+0: 0x78 *** OUCH",
            "at tail+1: 0xfd\n",
            // CPython's _PyObject_DebugDumpAddress lines, in its order.
            "    10 bytes originally requested\n    The 15 pad bytes at p-15 are FORBIDDENBYTE, as expected.\n    The 16 pad bytes at tail=0x",
            "    The block was made by call #1 to debug malloc/realloc.\n    Data at p: cd cd cd cd cd cd cd cd cd cd\n",
        ],
    );
    expect(
        "underflow",
        &[
            "bad leading pad byte",
            "API 'o'",
            "24 bytes originally requested",
            "at p-1: 0x79 *** OUCH",
            "Because memory is corrupted at the start, the count of bytes requested",
        ],
    );
    expect(
        "realloc_overflow",
        &[
            "Fatal error in debug realloc",
            "bad trailing pad byte",
            "API 'r'",
            "33 bytes",
            "at tail+2: 0x00 *** OUCH",
        ],
    );
    expect(
        "double_free",
        &["double free", "100 bytes originally requested"],
    );
    expect("foreign", &["never allocated"]);
    expect(
        "wrong_domain",
        &[
            "allocated through API 'o', verified (freed) through API 'm'",
            "48 bytes originally requested",
        ],
    );
    expect(
        "use_after_free",
        &[
            "write to a freed block",
            "64 bytes originally requested",
            "first changed byte at p+20",
            " 42",
        ],
    );
    expect(
        "check_all",
        &[
            "Fatal error in debug check",
            "bad trailing pad byte",
            "7 bytes originally requested",
        ],
    );
    println!("debug hooks: every fault detected");
}
