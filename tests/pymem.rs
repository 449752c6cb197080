//! The PyMem interface's contracts, from Rust: every domain, the typed and
//! macro forms, and allocator hooks (SPEC: "The PyMem interface").

use core::ffi::c_void;
use pymalloc::*;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Hook tests swap process-wide allocators: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

type Malloc = fn(usize) -> *mut c_void;
type Calloc = fn(usize, usize) -> *mut c_void;
type Realloc = unsafe fn(*mut c_void, usize) -> *mut c_void;
type Free = unsafe fn(*mut c_void);

const DOMAINS: [(&str, Malloc, Calloc, Realloc, Free); 4] = [
    (
        "raw",
        PyMem_RawMalloc,
        PyMem_RawCalloc,
        PyMem_RawRealloc,
        PyMem_RawFree,
    ),
    ("mem", PyMem_Malloc, PyMem_Calloc, PyMem_Realloc, PyMem_Free),
    (
        "obj",
        PyObject_Malloc,
        PyObject_Calloc,
        PyObject_Realloc,
        PyObject_Free,
    ),
    (
        "macros",
        PyMem_MALLOC,
        PyMem_Calloc,
        PyMem_REALLOC,
        PyMem_FREE,
    ),
];

#[test]
fn every_domain_keeps_the_cpython_contract() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (name, malloc, calloc, realloc, free) in DOMAINS {
        // SAFETY: every pointer below is a live block of this domain until
        // freed once by it.
        unsafe {
            // Zero bytes: distinct non-null pointers.
            let a = malloc(0);
            let b = malloc(0);
            assert!(!a.is_null() && !b.is_null() && a != b, "{name}");
            free(a);
            free(b);
            // Alignment 16 and contents, across small, medium and huge sizes.
            let sizes: &[usize] = if cfg!(miri) {
                &[1, 16, 513, 4000]
            } else {
                &[1, 15, 16, 100, 512, 513, 4000, 100_000, 3 << 20]
            };
            for &n in sizes {
                let p = malloc(n).cast::<u8>();
                assert!(
                    !p.is_null() && (p as usize).is_multiple_of(16),
                    "{name} {n}"
                );
                p.write_bytes(0x5a, n);
                // Grow keeps contents.
                let q = realloc(p.cast(), 2 * n + 1).cast::<u8>();
                assert!(!q.is_null());
                assert!(
                    std::slice::from_raw_parts(q, n).iter().all(|&x| x == 0x5a),
                    "{name} {n}"
                );
                // Shrink keeps the prefix.
                let r = realloc(q.cast(), n / 2 + 1).cast::<u8>();
                assert!(
                    std::slice::from_raw_parts(r, n / 2 + 1)
                        .iter()
                        .all(|&x| x == 0x5a)
                );
                // Realloc to 0 resizes, does not free, returns non-null.
                let z = realloc(r.cast(), 0);
                assert!(!z.is_null(), "{name}: realloc(p, 0) must not free");
                free(z);
            }
            // Realloc(null, n) is Malloc(n).
            let p = realloc(core::ptr::null_mut(), 40);
            assert!(!p.is_null());
            // A failed realloc returns null and keeps the block.
            p.cast::<u8>().write_bytes(7, 40);
            assert!(realloc(p, usize::MAX).is_null(), "{name}");
            assert!(realloc(p, isize::MAX as usize + 1).is_null(), "{name}");
            assert!(
                std::slice::from_raw_parts(p.cast::<u8>(), 40)
                    .iter()
                    .all(|&x| x == 7)
            );
            free(p);
            // Free(null) is a no-op.
            free(core::ptr::null_mut());
            // Sizes above isize::MAX are refused.
            assert!(malloc(isize::MAX as usize + 1).is_null(), "{name}");
            assert!(malloc(usize::MAX).is_null(), "{name}");
            // Calloc: zeroed, overflow is null.
            let c = calloc(100, 7).cast::<u8>();
            assert!(std::slice::from_raw_parts(c, 700).iter().all(|&x| x == 0));
            free(c.cast());
            assert!(calloc(usize::MAX / 2, 3).is_null(), "{name}");
            assert!(calloc(usize::MAX / 4 + 1, 4).is_null(), "{name}");
        }
    }
}

#[test]
fn typed_forms_never_give_a_short_block() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: each pointer is live until freed once.
    unsafe {
        let p = PyMem_New::<u64>(100);
        assert!(!p.is_null() && (p as usize).is_multiple_of(8));
        for i in 0..100 {
            p.add(i).write(i as u64);
        }
        assert!(PyMem_New::<u64>(usize::MAX / 8 + 1).is_null(), "overflow");
        assert!(PyMem_New::<[u8; 3]>(isize::MAX as usize / 3 + 1).is_null());
        // A failed resize returns null and leaves the block valid.
        assert!(PyMem_Resize(p, usize::MAX / 8 + 1).is_null());
        assert!(PyMem_Resize(p, isize::MAX as usize).is_null());
        assert_eq!(p.add(99).read(), 99);
        let q = PyMem_Resize(p, 10_000);
        assert!((0..100).all(|i| q.add(i).read() == i as u64));
        PyMem_Del(q);
        PyMem_Del(core::ptr::null_mut::<u64>());
        // The macro forms.
        let m = PyMem_NEW::<u32>(10);
        m.write(3);
        assert!(PyMem_RESIZE(m, usize::MAX).is_null());
        let m2 = PyMem_RESIZE(m, 20);
        assert_eq!(m2.read(), 3);
        PyMem_DEL(m2);
    }
}

#[test]
fn the_pymem_heap_counts_blocks_exactly() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let before = pymalloc::pymem::HEAP.stats();
    let n = if cfg!(miri) { 50 } else { 1000 };
    let ptrs: Vec<*mut c_void> = (0..n).map(|i| PyMem_Malloc(1 + i * 37)).collect();
    let during = pymalloc::pymem::HEAP.stats();
    assert!(
        during.bytes_requested
            >= before.bytes_requested + (0..n).map(|i| 1 + i * 37).sum::<usize>()
    );
    for p in ptrs {
        // SAFETY: live Mem blocks, freed once.
        unsafe { PyMem_Free(p) };
    }
    let after = pymalloc::pymem::HEAP.stats();
    assert_eq!(after.bytes_requested, before.bytes_requested);
    assert_eq!(after.bytes_in_use, before.bytes_in_use);
}

static HOOK_CALLS: AtomicUsize = AtomicUsize::new(0);
static FAIL_NEXT: AtomicUsize = AtomicUsize::new(0);
static mut WRAPPED: Option<PyMemAllocatorEx> = None;

fn wrapped() -> PyMemAllocatorEx {
    // SAFETY: written before the hooks that read it are installed.
    unsafe { WRAPPED.expect("set before install") }
}

unsafe extern "C" fn hook_malloc(ctx: *mut c_void, n: usize) -> *mut c_void {
    assert_eq!(ctx as usize, 0x1234, "context passed through");
    HOOK_CALLS.fetch_add(1, Ordering::Relaxed);
    if FAIL_NEXT.swap(0, Ordering::Relaxed) == 1 {
        return core::ptr::null_mut();
    }
    let w = wrapped();
    // SAFETY: delegates to the wrapped allocator.
    unsafe { (w.malloc)(w.ctx, n) }
}
unsafe extern "C" fn hook_calloc(_: *mut c_void, a: usize, b: usize) -> *mut c_void {
    HOOK_CALLS.fetch_add(1, Ordering::Relaxed);
    let w = wrapped();
    // SAFETY: delegates.
    unsafe { (w.calloc)(w.ctx, a, b) }
}
unsafe extern "C" fn hook_realloc(_: *mut c_void, p: *mut c_void, n: usize) -> *mut c_void {
    HOOK_CALLS.fetch_add(1, Ordering::Relaxed);
    let w = wrapped();
    // SAFETY: delegates.
    unsafe { (w.realloc)(w.ctx, p, n) }
}
unsafe extern "C" fn hook_free(_: *mut c_void, p: *mut c_void) {
    HOOK_CALLS.fetch_add(1, Ordering::Relaxed);
    let w = wrapped();
    // SAFETY: delegates.
    unsafe { (w.free)(w.ctx, p) }
}

#[test]
fn a_hook_wraps_a_domain_and_is_restored() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let original = PyMem_GetAllocator(PyMemAllocatorDomain::Obj);
    // SAFETY: written before the hooks are installed.
    unsafe { WRAPPED = Some(original) };
    PyMem_SetAllocator(
        PyMemAllocatorDomain::Obj,
        &PyMemAllocatorEx {
            ctx: 0x1234 as *mut c_void,
            malloc: hook_malloc,
            calloc: hook_calloc,
            realloc: hook_realloc,
            free: hook_free,
        },
    );
    HOOK_CALLS.store(0, Ordering::Relaxed);
    // Other domains are untouched; the hooked one sees every call.
    let m = PyMem_Malloc(10);
    // SAFETY: live blocks of their domains, freed once.
    unsafe {
        PyMem_Free(m);
        let p = PyObject_Malloc(10);
        let q = PyObject_Realloc(p, 1000);
        let c = PyObject_Calloc(2, 2);
        PyObject_Free(q);
        PyObject_Free(c);
    }
    assert_eq!(HOOK_CALLS.load(Ordering::Relaxed), 5);
    // Sizes no `Py_ssize_t` holds are refused before the hook, as CPython.
    assert!(PyObject_Malloc(isize::MAX as usize + 1).is_null());
    assert!(PyObject_Calloc(usize::MAX / 2, 4).is_null());
    let keep = PyObject_Malloc(8);
    // SAFETY: a live Obj block; the failed realloc keeps it.
    unsafe {
        assert!(PyObject_Realloc(keep, isize::MAX as usize + 1).is_null());
        PyObject_Free(keep);
    }
    assert_eq!(
        HOOK_CALLS.load(Ordering::Relaxed),
        7,
        "the hook saw only the valid calls"
    );
    assert_eq!(
        pymalloc::PyMem_GetCurrentAllocatorName(),
        None,
        "a custom hook"
    );
    HOOK_CALLS.store(5, Ordering::Relaxed);
    // Failure injection through the hook: a clean null.
    FAIL_NEXT.store(1, Ordering::Relaxed);
    assert!(PyObject_Malloc(10).is_null());
    // Concurrent readers while the hook is installed.
    let iters = if cfg!(miri) { 10 } else { 1000 };
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(move || {
                for i in 0..iters {
                    let p = PyObject_Malloc(i);
                    assert!(!p.is_null());
                    // SAFETY: a live Obj block, freed once.
                    unsafe { PyObject_Free(p) };
                }
            });
        }
    });
    assert_eq!(HOOK_CALLS.load(Ordering::Relaxed), 5 + 1 + 8 * iters);
    PyMem_SetAllocator(PyMemAllocatorDomain::Obj, &original);
    let p = PyObject_Malloc(10);
    // SAFETY: a live Obj block.
    unsafe { PyObject_Free(p) };
    assert_eq!(
        HOOK_CALLS.load(Ordering::Relaxed),
        5 + 1 + 8 * iters,
        "restored"
    );
    let now = PyMem_GetAllocator(PyMemAllocatorDomain::Obj);
    assert!(core::ptr::fn_addr_eq(now.malloc, original.malloc));
}

static ARENA_ALLOCS: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
static ARENA_FREES: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());

/// Memory 8 bytes past a System allocation: deliberately not even
/// 16-aligned, as a host's arena allocator may return.
unsafe extern "C" fn odd_arena_alloc(ctx: *mut c_void, size: usize) -> *mut c_void {
    assert_eq!(ctx as usize, 0xA2E4A, "context passed through");
    let layout = std::alloc::Layout::from_size_align(size + 8, 8).unwrap();
    // SAFETY: a non-zero size.
    let p = unsafe { std::alloc::System.alloc(layout) };
    if p.is_null() {
        return core::ptr::null_mut();
    }
    let p = p.wrapping_add(8);
    ARENA_ALLOCS.lock().unwrap().push((p.addr(), size));
    p.cast()
}

unsafe extern "C" fn odd_arena_free(_: *mut c_void, p: *mut c_void, size: usize) {
    ARENA_FREES.lock().unwrap().push((p.addr(), size));
    let layout = std::alloc::Layout::from_size_align(size + 8, 8).unwrap();
    // SAFETY: `p - 8` is the System allocation made for `p` with `layout`.
    unsafe { std::alloc::System.dealloc(p.cast::<u8>().wrapping_sub(8), layout) };
}

use std::alloc::GlobalAlloc;

#[test]
fn arenas_come_from_the_installed_arena_allocator() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let original = PyObject_GetArenaAllocator();
    PyObject_SetArenaAllocator(&PyObjectArenaAllocator {
        ctx: 0xA2E4A as *mut c_void,
        alloc: odd_arena_alloc,
        free: odd_arena_free,
    });
    assert_eq!(PyObject_GetArenaAllocator().ctx as usize, 0xA2E4A);
    // Enough small blocks to need arenas of the new allocator (existing
    // arenas' free pools are used first).
    let per_round = if cfg!(miri) { 200 } else { 20_000 };
    let mut blocks = Vec::new();
    let wanted = if cfg!(miri) { 1 } else { 2 };
    while ARENA_ALLOCS.lock().unwrap().len() < wanted {
        for _ in 0..per_round {
            let p = PyObject_Malloc(256).cast::<u8>();
            assert!(!p.is_null());
            // SAFETY: 256 fresh bytes.
            unsafe { p.write_bytes(0x5A, 256) };
            blocks.push(p);
        }
    }
    let allocs = ARENA_ALLOCS.lock().unwrap().clone();
    assert!(
        allocs
            .iter()
            .all(|&(_, size)| size == pymalloc::pymem::ARENA_ALLOC_SIZE)
    );
    // Every arena made since lies, aligned, inside memory the functions
    // returned; so does every block in it.
    let inside = |addr: usize, len: usize| {
        allocs
            .iter()
            .any(|&(p, size)| addr >= p && addr + len <= p + size)
    };
    let mut hooked = 0;
    pymalloc::pymem::HEAP.for_each_arena(|a| {
        if inside(a.address, pymalloc::Arena::SIZE) {
            assert_eq!(a.address % pymalloc::Arena::SIZE, 0);
            hooked += 1;
        }
    });
    assert_eq!(hooked, allocs.len());
    let in_hooked = blocks.iter().filter(|b| inside(b.addr(), 256)).count();
    assert!(in_hooked > 0);
    for p in blocks {
        // SAFETY: live Obj blocks, freed once.
        unsafe { PyObject_Free(p.cast()) };
    }
    pymalloc::pymem::HEAP.trim();
    // `free` got exactly what `alloc` returned, for every arena.
    let mut frees = ARENA_FREES.lock().unwrap().clone();
    let mut allocs = allocs;
    frees.sort_unstable();
    allocs.sort_unstable();
    assert_eq!(frees, allocs);
    PyObject_SetArenaAllocator(&original);
    let p = PyObject_Malloc(10);
    // SAFETY: a live Obj block.
    unsafe { PyObject_Free(p) };
}
