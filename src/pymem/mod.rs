//! CPython's memory interface over a [`PrivateHeap`]: the `PyMem_*` and
//! `PyObject_*` functions, their domains, allocator hooks and debug hooks.
//!
//! # Domains
//!
//! As in CPython, there are three domains, each with its own allocator:
//!
//! | domain | functions | default allocator |
//! |---|---|---|
//! | [`Raw`](PyMemAllocatorDomain::Raw) | `PyMem_RawMalloc` … | layer 1 of [`HEAP`] (thread-safe, no pools) |
//! | [`Mem`](PyMemAllocatorDomain::Mem) | `PyMem_Malloc` … | [`HEAP`] (pools for ≤ 512 B) |
//! | [`Obj`](PyMemAllocatorDomain::Obj) | `PyObject_Malloc` … | [`HEAP`] (pools for ≤ 512 B) |
//!
//! A block must be resized and freed through the domain that allocated it;
//! the debug hooks report a mix.
//!
//! # Semantics (every domain)
//!
//! * `Malloc(n)`: `n` uninitialised bytes, aligned to 16, or null. `n == 0`
//!   gives a distinct non-null pointer. Sizes above `isize::MAX` give null.
//! * `Calloc(nelem, elsize)`: zeroed; null if the product overflows.
//! * `Realloc(p, n)`: keeps `min(old, n)` bytes; `p` null is `Malloc(n)`;
//!   `n == 0` resizes (does not free) and returns non-null; on failure
//!   returns null and `p` stays valid.
//! * `Free(p)`: null is a no-op; no size is needed.
//!
//! # Hooks
//!
//! [`PyMem_SetAllocator`] installs a [`PyMemAllocatorEx`] (a context and
//! four `extern "C"` functions) for a domain; [`PyMem_GetAllocator`] reads
//! the current one, so a hook can wrap it (count, trace, inject failures)
//! and restore it. Reading the installed allocator is thread-safe on every
//! call (a sequence lock; no lock taken by readers). Swapping is safe at any
//! time for memory safety, but a block must be freed by the allocator that
//! made it: install a *wrapping* allocator (one that delegates to the
//! previous one) while blocks are live, or swap only when none are.
//!
//! The "macro" set ([`PyMem_MALLOC`], [`PyMem_NEW`] …) is the direct,
//! inlined path to [`HEAP`]: no hook is consulted, so it is faster but
//! cannot be extended (the trade-off the source describes). Blocks from it
//! are the Mem domain's default blocks: they must not be mixed with the
//! function set once hooks (debug hooks included) are installed.
//!
//! # Debug hooks
//!
//! [`PyMem_SetupDebugHooks`], or the environment variable `PYMALLOC=debug`
//! (read once, without allocating, at the first `PyMem_*`/`PyObject_*`
//! call), wraps every domain as CPython's `PYTHONMALLOC=debug` does; see
//! [`crate::pymem::debug`].

#![allow(non_snake_case)]

// Debug hooks (PYMALLOC=debug).
pub mod debug;

use crate::heap::PrivateHeap;
use crate::lock::SpinLock;
use core::ffi::c_void;
use core::ptr::null_mut;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicPtr, AtomicU8, AtomicUsize, fence};
use parking_lot::lock_api::Mutex;

/// The heap behind the default allocators of every domain.
pub static HEAP: PrivateHeap = PrivateHeap::new();

/// The three allocator domains of CPython's memory interface.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyMemAllocatorDomain {
    /// `PyMem_RawMalloc` …: thread-safe, for memory not tied to objects.
    Raw = 0,
    /// `PyMem_Malloc` …: general-purpose buffers.
    Mem = 1,
    /// `PyObject_Malloc` …: objects.
    Obj = 2,
}

/// `PyMemAllocatorEx::malloc`.
pub type MallocFn = unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void;
/// `PyMemAllocatorEx::calloc`.
pub type CallocFn = unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void;
/// `PyMemAllocatorEx::realloc`.
pub type ReallocFn = unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void;
/// `PyMemAllocatorEx::free`.
pub type FreeFn = unsafe extern "C" fn(*mut c_void, *mut c_void);

/// An allocator for one domain: a context passed to four functions, as
/// CPython's `PyMemAllocatorEx`.
///
/// ```
/// use core::ffi::c_void;
/// use pymalloc::{PyMemAllocatorDomain, PyMemAllocatorEx, PyMem_GetAllocator};
///
/// let default: PyMemAllocatorEx = PyMem_GetAllocator(PyMemAllocatorDomain::Raw);
/// // SAFETY: the default raw allocator, called per its contract.
/// unsafe {
///     let p = (default.malloc)(default.ctx, 10);
///     assert!(!p.is_null());
///     (default.free)(default.ctx, p);
/// }
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PyMemAllocatorEx {
    /// Passed as the first argument of every function.
    pub ctx: *mut c_void,
    /// `malloc(ctx, size)`.
    pub malloc: MallocFn,
    /// `calloc(ctx, nelem, elsize)`.
    pub calloc: CallocFn,
    /// `realloc(ctx, ptr, new_size)`.
    pub realloc: ReallocFn,
    /// `free(ctx, ptr)`.
    pub free: FreeFn,
}

// SAFETY: the context is an opaque value the allocator's functions are
// responsible for; the interface shares allocators between threads.
unsafe impl Send for PyMemAllocatorEx {}
// SAFETY: as above.
unsafe impl Sync for PyMemAllocatorEx {}

// ----- default allocators -----

unsafe extern "C" fn raw_malloc(_: *mut c_void, n: usize) -> *mut c_void {
    HEAP.raw().malloc(n).cast()
}
unsafe extern "C" fn raw_calloc(_: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    HEAP.raw().calloc(nelem, elsize).cast()
}
unsafe extern "C" fn raw_realloc(_: *mut c_void, p: *mut c_void, n: usize) -> *mut c_void {
    // SAFETY: the caller passes a block of this domain (allocator contract).
    unsafe { HEAP.raw().resize(p.cast(), n).cast() }
}
unsafe extern "C" fn raw_free(_: *mut c_void, p: *mut c_void) {
    // SAFETY: as above.
    unsafe { HEAP.raw().free(p.cast()) }
}
unsafe extern "C" fn heap_malloc(_: *mut c_void, n: usize) -> *mut c_void {
    HEAP.malloc(n).cast()
}
unsafe extern "C" fn heap_calloc(_: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    HEAP.calloc(nelem, elsize).cast()
}
unsafe extern "C" fn heap_realloc(_: *mut c_void, p: *mut c_void, n: usize) -> *mut c_void {
    // SAFETY: as above.
    unsafe { HEAP.resize(p.cast(), n).cast() }
}
unsafe extern "C" fn heap_free(_: *mut c_void, p: *mut c_void) {
    // SAFETY: as above.
    unsafe { HEAP.free(p.cast()) }
}

/// The allocator a domain starts with.
///
/// ```
/// use pymalloc::pymem::default_allocator;
/// use pymalloc::PyMemAllocatorDomain;
/// let a = default_allocator(PyMemAllocatorDomain::Mem);
/// assert!(a.ctx.is_null());
/// ```
pub fn default_allocator(domain: PyMemAllocatorDomain) -> PyMemAllocatorEx {
    match domain {
        PyMemAllocatorDomain::Raw => PyMemAllocatorEx {
            ctx: null_mut(),
            malloc: raw_malloc,
            calloc: raw_calloc,
            realloc: raw_realloc,
            free: raw_free,
        },
        PyMemAllocatorDomain::Mem | PyMemAllocatorDomain::Obj => PyMemAllocatorEx {
            ctx: null_mut(),
            malloc: heap_malloc,
            calloc: heap_calloc,
            realloc: heap_realloc,
            free: heap_free,
        },
    }
}

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
static WRITER: Mutex<SpinLock, ()> =
    Mutex::const_new(<SpinLock as parking_lot::lock_api::RawMutex>::INIT, ());

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
fn installed(domain: PyMemAllocatorDomain) -> PyMemAllocatorEx {
    if MODE.load(Acquire) == UNINIT {
        initialise();
    }
    if MODE.load(Acquire) == DEFAULT {
        return default_allocator(domain);
    }
    SLOTS[domain as usize].read()
}

/// Fills the slots with the defaults and applies `PYMALLOC=debug`.
#[cold]
fn initialise() {
    let guard = WRITER.lock();
    if MODE.load(Acquire) != UNINIT {
        return;
    }
    for domain in [
        PyMemAllocatorDomain::Raw,
        PyMemAllocatorDomain::Mem,
        PyMemAllocatorDomain::Obj,
    ] {
        SLOTS[domain as usize].write(&default_allocator(domain));
    }
    MODE.store(DEFAULT, Release);
    drop(guard);
    HEAP.enable_fork();
    if env_requests_debug() {
        PyMem_SetupDebugHooks();
    }
}

/// Whether the environment variable `PYMALLOC` is `debug`, read without
/// allocating.
fn env_requests_debug() -> bool {
    #[cfg(all(unix, not(miri)))]
    {
        // SAFETY: a NUL-terminated name; getenv returns null or a
        // NUL-terminated string that we only read, at once.
        unsafe {
            let v = libc::getenv(c"PYMALLOC".as_ptr());
            !v.is_null() && core::ffi::CStr::from_ptr(v).to_bytes() == b"debug"
        }
    }
    #[cfg(not(all(unix, not(miri))))]
    {
        false
    }
}

/// Installs `allocator` for `domain`. Safe to call from any thread at any
/// time; see the module documentation for when blocks may cross a swap.
///
/// ```
/// use core::ffi::c_void;
/// use core::sync::atomic::{AtomicUsize, Ordering};
/// use pymalloc::*;
///
/// static CALLS: AtomicUsize = AtomicUsize::new(0);
/// static mut INNER: Option<PyMemAllocatorEx> = None;
/// unsafe extern "C" fn counting_malloc(_: *mut c_void, n: usize) -> *mut c_void {
///     CALLS.fetch_add(1, Ordering::Relaxed);
///     // SAFETY: set before this allocator was installed.
///     let inner = unsafe { INNER.unwrap() };
///     unsafe { (inner.malloc)(inner.ctx, n) }
/// }
///
/// let inner = PyMem_GetAllocator(PyMemAllocatorDomain::Mem);
/// // SAFETY: written before the hook that reads it is installed.
/// unsafe { INNER = Some(inner) };
/// PyMem_SetAllocator(PyMemAllocatorDomain::Mem, &PyMemAllocatorEx { malloc: counting_malloc, ..inner });
/// let p = PyMem_Malloc(10);
/// assert_eq!(CALLS.load(Ordering::Relaxed), 1);
/// // SAFETY: `p` is a live Mem block (the wrapped allocator's).
/// unsafe { PyMem_Free(p) };
/// PyMem_SetAllocator(PyMemAllocatorDomain::Mem, &inner); // restore
/// ```
pub fn PyMem_SetAllocator(domain: PyMemAllocatorDomain, allocator: &PyMemAllocatorEx) {
    with_writer(|| set_slot(domain, allocator));
}

/// The allocator installed for `domain`.
///
/// ```
/// use pymalloc::{PyMem_GetAllocator, PyMemAllocatorDomain};
/// let raw = PyMem_GetAllocator(PyMemAllocatorDomain::Raw);
/// // SAFETY: the raw domain's allocator, per its contract.
/// unsafe { (raw.free)(raw.ctx, (raw.malloc)(raw.ctx, 1)) };
/// ```
pub fn PyMem_GetAllocator(domain: PyMemAllocatorDomain) -> PyMemAllocatorEx {
    installed(domain)
}

/// Installs the debug hooks on every domain (see
/// [`crate::pymem::debug`]); does nothing if they are installed already.
/// Call it before allocating through the interface: a block allocated
/// before is reported as foreign when freed after.
///
/// ```no_run
/// // At the start of main, before any PyMem allocation:
/// pymalloc::PyMem_SetupDebugHooks();
/// let p = pymalloc::PyMem_Malloc(10);
/// // SAFETY: a live Mem block, freed once.
/// unsafe { pymalloc::PyMem_Free(p) }; // checked: guards, domain, double free
/// ```
pub fn PyMem_SetupDebugHooks() {
    crate::pymem::debug::install();
}

/// Takes the writer lock and keeps it (fork handlers).
#[cfg_attr(not(all(unix, not(miri))), allow(dead_code))]
pub(crate) fn lock_for_fork() {
    core::mem::forget(WRITER.lock());
}

/// Releases the lock taken by `lock_for_fork`.
///
/// # Safety
///
/// `lock_for_fork` took it, on this thread or in the parent of this
/// single-threaded child.
#[cfg_attr(not(all(unix, not(miri))), allow(dead_code))]
pub(crate) unsafe fn unlock_after_fork() {
    // SAFETY: caller's contract.
    unsafe { WRITER.force_unlock() }
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

// ----- the function set -----

macro_rules! domain_functions {
    ($domain:expr, $dflt_malloc:ident, $dflt_calloc:ident, $dflt_realloc:ident, $dflt_free:ident,
     $malloc:ident, $calloc:ident, $realloc:ident, $free:ident, $what:literal) => {
        #[doc = concat!("`n` bytes from the ", $what, " domain (see the module docs).")]
        ///
        /// ```
        #[doc = concat!("let p = pymalloc::", stringify!($malloc), "(100);")]
        /// assert!(!p.is_null() && p as usize % 16 == 0);
        #[doc = concat!("let z = pymalloc::", stringify!($malloc), "(0);")]
        /// assert!(!z.is_null() && z != p);
        /// // SAFETY: both are live blocks of this domain, freed once.
        #[doc = concat!("unsafe { pymalloc::", stringify!($free), "(p); pymalloc::", stringify!($free), "(z) };")]
        #[doc = concat!("assert!(pymalloc::", stringify!($malloc), "(usize::MAX).is_null());")]
        /// ```
        #[inline]
        pub fn $malloc(n: usize) -> *mut c_void {
            if MODE.load(Relaxed) == DEFAULT {
                // SAFETY: the default allocator takes any size.
                return unsafe { $dflt_malloc(null_mut(), n) };
            }
            let a = installed($domain);
            // SAFETY: an installed allocator is called per its contract.
            unsafe { (a.malloc)(a.ctx, n) }
        }

        #[doc = concat!("`nelem * elsize` zeroed bytes from the ", $what, " domain; null on overflow.")]
        ///
        /// ```
        #[doc = concat!("let p = pymalloc::", stringify!($calloc), "(4, 25).cast::<u8>();")]
        /// // SAFETY: 100 zeroed bytes, then freed once.
        /// unsafe {
        ///     assert!(std::slice::from_raw_parts(p, 100).iter().all(|&b| b == 0));
        #[doc = concat!("    pymalloc::", stringify!($free), "(p.cast());")]
        /// }
        #[doc = concat!("assert!(pymalloc::", stringify!($calloc), "(usize::MAX, 3).is_null());")]
        /// ```
        #[inline]
        pub fn $calloc(nelem: usize, elsize: usize) -> *mut c_void {
            if MODE.load(Relaxed) == DEFAULT {
                // SAFETY: the default allocator takes any sizes.
                return unsafe { $dflt_calloc(null_mut(), nelem, elsize) };
            }
            let a = installed($domain);
            // SAFETY: an installed allocator is called per its contract.
            unsafe { (a.calloc)(a.ctx, nelem, elsize) }
        }

        #[doc = concat!("Resizes a ", $what, "-domain block (see the module docs): null `p` allocates, ")]
        /// `n == 0` keeps a minimal block, failure returns null and keeps `p`.
        ///
        /// ```
        #[doc = concat!("let p = pymalloc::", stringify!($malloc), "(8).cast::<u8>();")]
        /// // SAFETY: each pointer is a live block of this domain.
        /// unsafe {
        ///     p.write_bytes(9, 8);
        #[doc = concat!("    let q = pymalloc::", stringify!($realloc), "(p.cast(), 5000).cast::<u8>();")]
        ///     assert_eq!(*q.add(7), 9);
        #[doc = concat!("    assert!(pymalloc::", stringify!($realloc), "(q.cast(), usize::MAX).is_null()); // q kept")]
        #[doc = concat!("    let r = pymalloc::", stringify!($realloc), "(q.cast(), 0);")]
        ///     assert!(!r.is_null());
        #[doc = concat!("    pymalloc::", stringify!($free), "(r);")]
        /// }
        /// ```
        ///
        /// # Safety
        ///
        #[doc = concat!("`p` is null or a live block of the ", $what, " domain; after a non-null")]
        /// result it must not be used again.
        #[inline]
        pub unsafe fn $realloc(p: *mut c_void, n: usize) -> *mut c_void {
            if MODE.load(Relaxed) == DEFAULT {
                // SAFETY: caller's contract.
                return unsafe { $dflt_realloc(null_mut(), p, n) };
            }
            let a = installed($domain);
            // SAFETY: caller's contract.
            unsafe { (a.realloc)(a.ctx, p, n) }
        }

        #[doc = concat!("Frees a ", $what, "-domain block; null is a no-op.")]
        ///
        /// ```
        #[doc = concat!("let p = pymalloc::", stringify!($malloc), "(64);")]
        /// // SAFETY: a live block of this domain, freed once; null is a no-op.
        #[doc = concat!("unsafe { pymalloc::", stringify!($free), "(p); pymalloc::", stringify!($free), "(core::ptr::null_mut()) };")]
        /// ```
        ///
        /// # Safety
        ///
        #[doc = concat!("`p` is null or a live block of the ", $what, " domain, not used afterwards.")]
        #[inline]
        pub unsafe fn $free(p: *mut c_void) {
            if MODE.load(Relaxed) == DEFAULT {
                // SAFETY: caller's contract.
                return unsafe { $dflt_free(null_mut(), p) };
            }
            let a = installed($domain);
            // SAFETY: caller's contract.
            unsafe { (a.free)(a.ctx, p) }
        }
    };
}

domain_functions!(
    PyMemAllocatorDomain::Raw,
    raw_malloc,
    raw_calloc,
    raw_realloc,
    raw_free,
    PyMem_RawMalloc,
    PyMem_RawCalloc,
    PyMem_RawRealloc,
    PyMem_RawFree,
    "raw"
);
domain_functions!(
    PyMemAllocatorDomain::Mem,
    heap_malloc,
    heap_calloc,
    heap_realloc,
    heap_free,
    PyMem_Malloc,
    PyMem_Calloc,
    PyMem_Realloc,
    PyMem_Free,
    "mem"
);
domain_functions!(
    PyMemAllocatorDomain::Obj,
    heap_malloc,
    heap_calloc,
    heap_realloc,
    heap_free,
    PyObject_Malloc,
    PyObject_Calloc,
    PyObject_Realloc,
    PyObject_Free,
    "object"
);

// ----- typed forms -----

/// Room for `n` values of `T` from the Mem domain, or null (also when
/// `n * size_of::<T>()` overflows: never a short block).
///
/// ```
/// let p = pymalloc::PyMem_New::<u64>(10);
/// assert!(!p.is_null());
/// // SAFETY: room for 10 u64, freed once.
/// unsafe { p.write(7); pymalloc::PyMem_Del(p) };
/// assert!(pymalloc::PyMem_New::<u64>(usize::MAX / 4).is_null());
/// ```
pub fn PyMem_New<T>(n: usize) -> *mut T {
    match n.checked_mul(size_of::<T>()) {
        Some(bytes) if bytes <= isize::MAX as usize => PyMem_Malloc(bytes).cast(),
        _ => null_mut(),
    }
}

/// Resizes `p` to room for `n` values of `T`. Unlike C's macro, which
/// assigns the result to `p` and so loses the block on failure, this
/// returns the new pointer, or null with `p` still valid (also when
/// `n * size_of::<T>()` overflows).
///
/// ```
/// let p = pymalloc::PyMem_New::<u32>(2);
/// // SAFETY: `p` and `q` are live Mem blocks.
/// unsafe {
///     p.write(5);
///     assert!(pymalloc::PyMem_Resize(p, usize::MAX).is_null()); // p kept
///     let q = pymalloc::PyMem_Resize(p, 1000);
///     assert_eq!(q.read(), 5);
///     pymalloc::PyMem_Del(q);
/// }
/// ```
///
/// # Safety
///
/// `p` is null or a live Mem-domain block; after a non-null result it must
/// not be used again.
pub unsafe fn PyMem_Resize<T>(p: *mut T, n: usize) -> *mut T {
    match n.checked_mul(size_of::<T>()) {
        // SAFETY: caller's contract.
        Some(bytes) if bytes <= isize::MAX as usize => unsafe {
            PyMem_Realloc(p.cast(), bytes).cast()
        },
        _ => null_mut(),
    }
}

/// Frees a block from [`PyMem_New`] or [`PyMem_Resize`]; null is a no-op.
///
/// ```
/// let p = pymalloc::PyMem_New::<u16>(8);
/// // SAFETY: a live Mem block, freed once.
/// unsafe { pymalloc::PyMem_Del(p) };
/// ```
///
/// # Safety
///
/// As [`PyMem_Free`].
pub unsafe fn PyMem_Del<T>(p: *mut T) {
    // SAFETY: caller's contract.
    unsafe { PyMem_Free(p.cast()) }
}

// ----- the macro set: direct to HEAP, no hooks -----

/// [`PyMem_Malloc`] without hooks: the inlined path to [`HEAP`].
///
/// ```
/// let p = pymalloc::PyMem_MALLOC(24);
/// // SAFETY: a live block of the macro set, freed by it.
/// unsafe { pymalloc::PyMem_FREE(p) };
/// ```
#[inline(always)]
pub fn PyMem_MALLOC(n: usize) -> *mut c_void {
    HEAP.malloc(n).cast()
}

/// [`PyMem_Realloc`] without hooks.
///
/// ```
/// let p = pymalloc::PyMem_MALLOC(8);
/// // SAFETY: blocks of the macro set, resized and freed by it.
/// unsafe {
///     let q = pymalloc::PyMem_REALLOC(p, 4096);
///     assert!(!q.is_null());
///     pymalloc::PyMem_FREE(q);
/// }
/// ```
///
/// # Safety
///
/// `p` is null or a live block of the macro set; after a non-null result it
/// must not be used again.
#[inline(always)]
pub unsafe fn PyMem_REALLOC(p: *mut c_void, n: usize) -> *mut c_void {
    // SAFETY: caller's contract.
    unsafe { HEAP.resize(p.cast(), n).cast() }
}

/// [`PyMem_Free`] without hooks.
///
/// ```
/// // SAFETY: null is a no-op.
/// unsafe { pymalloc::PyMem_FREE(core::ptr::null_mut()) };
/// ```
///
/// # Safety
///
/// `p` is null or a live block of the macro set, not used afterwards.
#[inline(always)]
pub unsafe fn PyMem_FREE(p: *mut c_void) {
    // SAFETY: caller's contract.
    unsafe { HEAP.free(p.cast()) }
}

/// [`PyMem_New`] without hooks.
///
/// ```
/// let p = pymalloc::PyMem_NEW::<u32>(4);
/// assert!(pymalloc::PyMem_NEW::<u32>(usize::MAX).is_null());
/// // SAFETY: a live block of the macro set.
/// unsafe { pymalloc::PyMem_DEL(p) };
/// ```
#[inline(always)]
pub fn PyMem_NEW<T>(n: usize) -> *mut T {
    match n.checked_mul(size_of::<T>()) {
        Some(bytes) if bytes <= isize::MAX as usize => PyMem_MALLOC(bytes).cast(),
        _ => null_mut(),
    }
}

/// [`PyMem_Resize`] without hooks.
///
/// ```
/// let p = pymalloc::PyMem_NEW::<u8>(1);
/// // SAFETY: blocks of the macro set; the failed resize keeps `p`.
/// unsafe {
///     assert!(pymalloc::PyMem_RESIZE(p, usize::MAX).is_null());
///     let q = pymalloc::PyMem_RESIZE(p, 100);
///     pymalloc::PyMem_DEL(q);
/// }
/// ```
///
/// # Safety
///
/// As [`PyMem_REALLOC`].
#[inline(always)]
pub unsafe fn PyMem_RESIZE<T>(p: *mut T, n: usize) -> *mut T {
    match n.checked_mul(size_of::<T>()) {
        // SAFETY: caller's contract.
        Some(bytes) if bytes <= isize::MAX as usize => unsafe {
            PyMem_REALLOC(p.cast(), bytes).cast()
        },
        _ => null_mut(),
    }
}

/// [`PyMem_Del`] without hooks.
///
/// ```
/// let p = pymalloc::PyMem_NEW::<u64>(2);
/// // SAFETY: a live block of the macro set, freed once.
/// unsafe { pymalloc::PyMem_DEL(p) };
/// ```
///
/// # Safety
///
/// As [`PyMem_FREE`].
#[inline(always)]
pub unsafe fn PyMem_DEL<T>(p: *mut T) {
    // SAFETY: caller's contract.
    unsafe { PyMem_FREE(p.cast()) }
}
