//! The installed allocator of each domain: slots readable without a lock,
//! the writer lock, and the one-time set-up that reads `PYMALLOC`.

use crate::lock::GlobalLock;
use crate::pymem::allocator::{
    CallocFn, FreeFn, MallocFn, PyMemAllocatorDomain, PyMemAllocatorEx, ReallocFn,
    default_allocator, malloc_allocator, same_functions,
};
use crate::pymem::debug;
use core::ffi::c_void;
use core::ptr::null_mut;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, fence};
use parking_lot::lock_api::Mutex;

// ----- installed allocators -----

/// One domain's installed allocator, readable without a lock: a sequence
/// lock over five words. Invariant: `seq` is odd exactly while a writer
/// (holding `WRITER`) is changing the words.
struct Slot {
    seq: AtomicUsize,
    ctx: AtomicPtr<c_void>,
    malloc: AtomicPtr<()>,
    calloc: AtomicPtr<()>,
    realloc: AtomicPtr<()>,
    free: AtomicPtr<()>,
}

impl Slot {
    const fn new() -> Self {
        Self {
            seq: AtomicUsize::new(0),
            ctx: AtomicPtr::new(null_mut()),
            malloc: AtomicPtr::new(null_mut()),
            calloc: AtomicPtr::new(null_mut()),
            realloc: AtomicPtr::new(null_mut()),
            free: AtomicPtr::new(null_mut()),
        }
    }

    fn read(&self) -> PyMemAllocatorEx {
        loop {
            let before = self.seq.load(Acquire);
            if before % 2 == 1 {
                core::hint::spin_loop();
                continue;
            }
            let words = (
                self.ctx.load(Relaxed),
                self.malloc.load(Relaxed),
                self.calloc.load(Relaxed),
                self.realloc.load(Relaxed),
                self.free.load(Relaxed),
            );
            fence(Acquire);
            if self.seq.load(Relaxed) == before {
                // SAFETY: a stable read (no writer meanwhile) of words that
                // a writer stored from function pointers of these exact
                // types (`write`).
                return unsafe {
                    PyMemAllocatorEx {
                        ctx: words.0,
                        malloc: core::mem::transmute::<*mut (), MallocFn>(words.1),
                        calloc: core::mem::transmute::<*mut (), CallocFn>(words.2),
                        realloc: core::mem::transmute::<*mut (), ReallocFn>(words.3),
                        free: core::mem::transmute::<*mut (), FreeFn>(words.4),
                    }
                };
            }
        }
    }

    /// Stores `a`. The caller holds `WRITER`.
    fn write(&self, a: &PyMemAllocatorEx) {
        let seq = self.seq.load(Relaxed);
        self.seq.store(seq + 1, Relaxed);
        fence(Release);
        self.ctx.store(a.ctx, Relaxed);
        self.malloc.store(a.malloc as *mut (), Relaxed);
        self.calloc.store(a.calloc as *mut (), Relaxed);
        self.realloc.store(a.realloc as *mut (), Relaxed);
        self.free.store(a.free as *mut (), Relaxed);
        self.seq.store(seq + 2, Release);
    }
}

static SLOTS: [Slot; 3] = [Slot::new(), Slot::new(), Slot::new()];
/// Serialises writers of `SLOTS` and `MODE`.
static WRITER: Mutex<GlobalLock, ()> =
    Mutex::const_new(<GlobalLock as parking_lot::lock_api::RawMutex>::INIT, ());

/// `MODE`: not yet initialised (the environment is read at the first call).
const UNINIT: u8 = 0;
/// Every domain has its default allocator: calls go straight to it.
const DEFAULT: u8 = 1;
/// Some domain has an installed allocator: calls read `SLOTS`.
const HOOKED: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(UNINIT);

/// The allocator `domain` uses now, after reading `PYMALLOC` once.
#[cold]
#[inline(never)]
pub(crate) fn installed(domain: PyMemAllocatorDomain) -> PyMemAllocatorEx {
    if MODE.load(Acquire) == UNINIT {
        initialise();
    }
    if MODE.load(Acquire) == DEFAULT {
        return default_allocator(domain);
    }
    SLOTS[domain as usize].read()
}

const DOMAINS: [PyMemAllocatorDomain; 3] = [
    PyMemAllocatorDomain::Raw,
    PyMemAllocatorDomain::Mem,
    PyMemAllocatorDomain::Obj,
];

/// Fills the slots with the defaults and applies `PYMALLOC` (CPython's
/// `PYTHONMALLOC`): `pymalloc` (or unset), `debug` / `pymalloc_debug`,
/// `malloc`, `malloc_debug`.
#[cold]
fn initialise() {
    let guard = WRITER.lock();
    if MODE.load(Acquire) != UNINIT {
        return;
    }
    let (malloc, debug) = env_mode();
    let c_library = if malloc { malloc_allocator() } else { None };
    let mut hooked = c_library.is_some();
    for domain in DOMAINS {
        let mut a = c_library.unwrap_or_else(|| default_allocator(domain));
        // The debug hooks go in before any call can see the slots, so no
        // block is made without them and freed through them.
        if debug && let Some(wrapped) = debug::wrap(domain, a) {
            a = wrapped;
            hooked = true;
        }
        SLOTS[domain as usize].write(&a);
    }
    if debug {
        debug::mark_installed();
    }
    MODE.store(if hooked { HOOKED } else { DEFAULT }, Release);
    drop(guard);
    if crate::stats::stats_requested() {
        print_stats_at_exit();
    }
}

/// What `PYMALLOC` asks for: (the C library's allocator, the debug hooks).
/// Read once, without allocating. An unknown value is a fatal error, as
/// CPython's for `PYTHONMALLOC`.
fn env_mode() -> (bool, bool) {
    #[cfg(all(unix, not(miri)))]
    {
        // SAFETY: a NUL-terminated name; getenv returns null or a
        // NUL-terminated string that we only read, at once.
        let value = unsafe {
            let v = libc::getenv(c"PYMALLOC".as_ptr());
            if v.is_null() {
                return (false, false);
            }
            core::ffi::CStr::from_ptr(v).to_bytes()
        };
        match value {
            b"" | b"pymalloc" | b"default" => (false, false),
            b"debug" | b"pymalloc_debug" => (false, true),
            b"malloc" => (true, false),
            b"malloc_debug" => (true, true),
            other => crate::fatal::bad_setting(
                "PYMALLOC",
                other,
                "pymalloc, pymalloc_debug, debug, malloc or malloc_debug",
            ),
        }
    }
    #[cfg(not(all(unix, not(miri))))]
    {
        (false, false)
    }
}

/// The name of the allocators in use, as CPython's
/// `_PyMem_GetCurrentAllocatorName`: "pymalloc", "pymalloc_debug",
/// "malloc" or "malloc_debug" when every domain has that allocator, else
/// `None` (custom allocators).
pub(crate) fn current_allocator_name() -> Option<&'static str> {
    if MODE.load(Acquire) == UNINIT {
        initialise();
    }
    if MODE.load(Acquire) == DEFAULT {
        return Some("pymalloc");
    }
    let slots = DOMAINS.map(slot);
    let hooked = slots.iter().filter(|a| debug::wrapped(a).is_some()).count();
    if hooked != 0 && hooked != DOMAINS.len() {
        return None; // debug hooks on some domains only
    }
    let debug = hooked != 0;
    // Every domain runs `expected(domain)`, under the hooks or without them.
    let all_run = |expected: &dyn Fn(PyMemAllocatorDomain) -> Option<PyMemAllocatorEx>| {
        DOMAINS.iter().zip(&slots).all(|(&d, a)| {
            let a = debug::wrapped(a).unwrap_or(*a);
            expected(d).is_some_and(|e| same_functions(&a, &e))
        })
    };
    if all_run(&|d| Some(default_allocator(d))) {
        Some(if debug { "pymalloc_debug" } else { "pymalloc" })
    } else if all_run(&|_| malloc_allocator()) {
        Some(if debug { "malloc_debug" } else { "malloc" })
    } else {
        None
    }
}

/// `WRITER`, for the debug hooks' installation.
pub(crate) fn with_writer<T>(f: impl FnOnce() -> T) -> T {
    if MODE.load(Acquire) == UNINIT {
        initialise();
    }
    let _guard = WRITER.lock();
    let out = f();
    MODE.store(HOOKED, Release);
    out
}

/// Reads a slot (the caller holds `WRITER` or tolerates a stale value).
pub(crate) fn slot(domain: PyMemAllocatorDomain) -> PyMemAllocatorEx {
    SLOTS[domain as usize].read()
}

/// Writes a slot; the caller holds `WRITER` (through `with_writer`).
pub(crate) fn set_slot(domain: PyMemAllocatorDomain, a: &PyMemAllocatorEx) {
    SLOTS[domain as usize].write(a);
}

/// Whether every domain has its default allocator (the fast path of the
/// function set).
#[inline(always)]
pub(crate) fn all_default() -> bool {
    MODE.load(Relaxed) == DEFAULT
}

/// Wraps each domain's current allocator with the debug hooks, unless it
/// is a debug one already: after `PyMem_SetAllocator`, a second call wraps
/// the new allocator (CPython's documented behaviour).
pub(crate) fn install_debug_hooks() {
    with_writer(|| {
        for domain in DOMAINS {
            let current = slot(domain);
            if debug::wrapped(&current).is_none()
                && let Some(hooked) = debug::wrap(domain, current)
            {
                set_slot(domain, &hooked);
            }
        }
        debug::mark_installed();
    });
}

/// With `PYMALLOCSTATS` set, the PyMem heap's statistics are printed at
/// exit, as CPython's are at shutdown.
fn print_stats_at_exit() {
    #[cfg(all(unix, not(miri)))]
    {
        extern "C" fn at_exit() {
            crate::pymem::HEAP.print_stats();
        }
        // SAFETY: registers a handler that never unwinds and allocates
        // nothing.
        unsafe { libc::atexit(at_exit) };
    }
}
