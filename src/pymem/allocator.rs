//! The domains, the allocator type of CPython's memory interface, and the
//! default allocators over [`HEAP`].

use crate::heap::PrivateHeap;
use core::ffi::c_void;
use core::ptr::null_mut;

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

pub(crate) unsafe extern "C" fn raw_malloc(_: *mut c_void, n: usize) -> *mut c_void {
    HEAP.raw().malloc(n).cast()
}
pub(crate) unsafe extern "C" fn raw_calloc(
    _: *mut c_void,
    nelem: usize,
    elsize: usize,
) -> *mut c_void {
    HEAP.raw().calloc(nelem, elsize).cast()
}
pub(crate) unsafe extern "C" fn raw_realloc(
    _: *mut c_void,
    p: *mut c_void,
    n: usize,
) -> *mut c_void {
    // SAFETY: the caller passes a block of this domain (allocator contract).
    unsafe { HEAP.raw().resize(p.cast(), n).cast() }
}
pub(crate) unsafe extern "C" fn raw_free(_: *mut c_void, p: *mut c_void) {
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
