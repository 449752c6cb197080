//! The domains, the allocator type of CPython's memory interface, and the
//! default allocators over [`HEAP`].

use crate::heap::PrivateHeap;
use crate::pymem::arena_allocator::PyMemPages;
use core::ffi::c_void;
use core::ptr::null_mut;

/// The heap behind the default allocators of every domain. Its arenas come
/// from the installed arena allocator ([`PyMemPages`]).
pub static HEAP: PrivateHeap<PyMemPages> = PrivateHeap::with_source(PyMemPages);

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

// The raw domain is layer 1 directly, under `PrivateHeap`'s hooks: traced
// here, as CPython's tracemalloc traces PyMem_RawMalloc.
pub(crate) unsafe extern "C" fn raw_malloc(_: *mut c_void, n: usize) -> *mut c_void {
    let p = HEAP.raw().malloc(n);
    crate::trace::hook::allocated(p, n);
    p.cast()
}
pub(crate) unsafe extern "C" fn raw_calloc(
    _: *mut c_void,
    nelem: usize,
    elsize: usize,
) -> *mut c_void {
    let p = HEAP.raw().calloc(nelem, elsize);
    crate::trace::hook::allocated(p, nelem.wrapping_mul(elsize));
    p.cast()
}
pub(crate) unsafe extern "C" fn raw_realloc(
    _: *mut c_void,
    p: *mut c_void,
    n: usize,
) -> *mut c_void {
    crate::trace::hook::realloc(p.cast(), n, || {
        // SAFETY: the caller passes a block of this domain (allocator
        // contract).
        unsafe { HEAP.raw().resize(p.cast(), n) }
    })
    .cast()
}
pub(crate) unsafe extern "C" fn raw_free(_: *mut c_void, p: *mut c_void) {
    if !p.is_null() {
        crate::trace::hook::freeing(p.cast());
    }
    // SAFETY: as above.
    unsafe { HEAP.raw().free(p.cast()) }
}
pub(crate) unsafe extern "C" fn heap_malloc(_: *mut c_void, n: usize) -> *mut c_void {
    HEAP.malloc(n).cast()
}
pub(crate) unsafe extern "C" fn heap_calloc(
    _: *mut c_void,
    nelem: usize,
    elsize: usize,
) -> *mut c_void {
    HEAP.calloc(nelem, elsize).cast()
}
pub(crate) unsafe extern "C" fn heap_realloc(
    _: *mut c_void,
    p: *mut c_void,
    n: usize,
) -> *mut c_void {
    // SAFETY: as above.
    unsafe { HEAP.resize(p.cast(), n).cast() }
}
pub(crate) unsafe extern "C" fn heap_free(_: *mut c_void, p: *mut c_void) {
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

// ----- the C library's allocator (`PYMALLOC=malloc`) -----

/// `malloc` on the C library, as CPython's `_PyMem_RawMalloc`: a request
/// of 0 bytes asks for 1, so the result is a distinct pointer.
#[cfg(all(unix, not(miri)))]
pub(crate) unsafe extern "C" fn c_malloc(_: *mut c_void, n: usize) -> *mut c_void {
    // SAFETY: any size is valid for malloc.
    unsafe { libc::malloc(n.max(1)) }
}
#[cfg(all(unix, not(miri)))]
pub(crate) unsafe extern "C" fn c_calloc(
    _: *mut c_void,
    nelem: usize,
    elsize: usize,
) -> *mut c_void {
    let (nelem, elsize) = if nelem == 0 || elsize == 0 {
        (1, 1)
    } else {
        (nelem, elsize)
    };
    // SAFETY: calloc checks the product itself.
    unsafe { libc::calloc(nelem, elsize) }
}
#[cfg(all(unix, not(miri)))]
pub(crate) unsafe extern "C" fn c_realloc(_: *mut c_void, p: *mut c_void, n: usize) -> *mut c_void {
    // SAFETY: `p` is null or a block of the C library's (allocator
    // contract).
    unsafe { libc::realloc(p, n.max(1)) }
}
#[cfg(all(unix, not(miri)))]
pub(crate) unsafe extern "C" fn c_free(_: *mut c_void, p: *mut c_void) {
    // SAFETY: as above.
    unsafe { libc::free(p) }
}

/// The C library's allocator, for every domain (`PYMALLOC=malloc`): what
/// AddressSanitizer and valgrind users run under. `None` where there is no
/// C library to call (Windows, Miri).
pub(crate) fn malloc_allocator() -> Option<PyMemAllocatorEx> {
    #[cfg(all(unix, not(miri)))]
    {
        Some(PyMemAllocatorEx {
            ctx: null_mut(),
            malloc: c_malloc,
            calloc: c_calloc,
            realloc: c_realloc,
            free: c_free,
        })
    }
    #[cfg(not(all(unix, not(miri))))]
    {
        None
    }
}

/// Whether `a` and `b` are the same functions (contexts aside).
pub(crate) fn same_functions(a: &PyMemAllocatorEx, b: &PyMemAllocatorEx) -> bool {
    core::ptr::fn_addr_eq(a.malloc, b.malloc)
        && core::ptr::fn_addr_eq(a.calloc, b.calloc)
        && core::ptr::fn_addr_eq(a.realloc, b.realloc)
        && core::ptr::fn_addr_eq(a.free, b.free)
}
