//! CPython's memory interface over a [`PrivateHeap`](crate::PrivateHeap): the `PyMem_*` and
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

// Domains, the allocator type, the default allocators.
mod allocator;
// The arena allocator hooks and the PyMem heap's page source.
mod arena_allocator;
// The installed allocators and their set-up.
mod slots;

pub use allocator::{
    CallocFn, FreeFn, HEAP, MallocFn, PyMemAllocatorDomain, PyMemAllocatorEx, ReallocFn,
    default_allocator,
};
use allocator::{
    heap_calloc, heap_free, heap_malloc, heap_realloc, raw_calloc, raw_free, raw_malloc,
    raw_realloc,
};
pub use arena_allocator::{
    ARENA_ALLOC_SIZE, PyMemPages, PyObject_GetArenaAllocator, PyObject_SetArenaAllocator,
    PyObjectArenaAllocator,
};
use core::ffi::c_void;
use core::ptr::null_mut;

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
    slots::with_writer(|| slots::set_slot(domain, allocator));
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
    slots::installed(domain)
}

/// Installs the debug hooks on every domain (see [`crate::pymem::debug`])
/// over its current allocator, unless that is a debug one already: after
/// [`PyMem_SetAllocator`], calling it again wraps the new allocator.
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
    slots::install_debug_hooks();
}

/// The allocators in use, by CPython's names (`_PyMem_GetCurrentAllocatorName`):
/// `"pymalloc"`, `"pymalloc_debug"`, `"malloc"` or `"malloc_debug"` when
/// every domain has that allocator (the modes `PYMALLOC` selects), `None`
/// when some domain has a custom one.
///
/// ```
/// // Without PYMALLOC set, and before any hook is installed:
/// # if std::env::var_os("PYMALLOC").is_none() {
/// assert_eq!(pymalloc::PyMem_GetCurrentAllocatorName(), Some("pymalloc"));
/// # }
/// ```
pub fn PyMem_GetCurrentAllocatorName() -> Option<&'static str> {
    slots::current_allocator_name()
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
            if slots::all_default() {
                // SAFETY: the default allocator takes any size.
                return unsafe { $dflt_malloc(null_mut(), n) };
            }
            // As CPython: sizes no `Py_ssize_t` holds never reach a hook.
            if n > isize::MAX as usize {
                return null_mut();
            }
            let a = slots::installed($domain);
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
            if slots::all_default() {
                // SAFETY: the default allocator takes any sizes.
                return unsafe { $dflt_calloc(null_mut(), nelem, elsize) };
            }
            if elsize != 0 && nelem > isize::MAX as usize / elsize {
                return null_mut();
            }
            let a = slots::installed($domain);
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
            if slots::all_default() {
                // SAFETY: caller's contract.
                return unsafe { $dflt_realloc(null_mut(), p, n) };
            }
            if n > isize::MAX as usize {
                return null_mut();
            }
            let a = slots::installed($domain);
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
            if slots::all_default() {
                // SAFETY: caller's contract.
                return unsafe { $dflt_free(null_mut(), p) };
            }
            let a = slots::installed($domain);
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
    array_bytes::<T>(n).map_or(null_mut(), |bytes| PyMem_Malloc(bytes).cast())
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
    // SAFETY: caller's contract.
    array_bytes::<T>(n).map_or(null_mut(), |bytes| unsafe {
        PyMem_Realloc(p.cast(), bytes).cast()
    })
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

/// Bytes of an array of `n` values of `T`, if that fits in `isize` (the
/// overflow check of CPython's typed forms).
#[inline]
fn array_bytes<T>(n: usize) -> Option<usize> {
    n.checked_mul(size_of::<T>())
        .filter(|&bytes| bytes <= isize::MAX as usize)
}

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
    array_bytes::<T>(n).map_or(null_mut(), |bytes| PyMem_MALLOC(bytes).cast())
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
    // SAFETY: caller's contract.
    array_bytes::<T>(n).map_or(null_mut(), |bytes| unsafe {
        PyMem_REALLOC(p.cast(), bytes).cast()
    })
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
