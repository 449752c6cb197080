//! The C ABI of [`pymalloc`]: CPython's memory interface under its exact C
//! names (`PyMem_Malloc`, `PyMem_RawMalloc`, `PyObject_Malloc`, …,
//! `PyMem_GetAllocator`, `PyMem_SetAllocator`, `PyMem_SetupDebugHooks`),
//! plus `pymalloc_malloc`/`_calloc`/`_realloc`/`_free`, the direct path
//! behind the header's macro set (`PyMem_MALLOC` …). See
//! `include/pymem.h` for the C declarations and contracts.
//!
//! Every function forwards to the Rust function of the same name; the
//! semantics (zero sizes, null pointers, failure, overflow) are the Rust
//! crate's, tested from C by `tests/test_pymem.c`.

#![allow(non_snake_case)]

use core::ffi::{c_int, c_void};
use pymalloc::{PyMemAllocatorDomain, PyMemAllocatorEx};

macro_rules! export_domain {
    ($malloc:ident, $calloc:ident, $realloc:ident, $free:ident) => {
        /// See `include/pymem.h`.
        #[unsafe(no_mangle)]
        pub extern "C" fn $malloc(n: usize) -> *mut c_void {
            pymalloc::$malloc(n)
        }

        /// See `include/pymem.h`.
        #[unsafe(no_mangle)]
        pub extern "C" fn $calloc(nelem: usize, elsize: usize) -> *mut c_void {
            pymalloc::$calloc(nelem, elsize)
        }

        /// See `include/pymem.h`.
        ///
        /// # Safety
        ///
        /// `p` is null or a live block of this domain; after a non-null
        /// result it is not used again.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $realloc(p: *mut c_void, n: usize) -> *mut c_void {
            // SAFETY: the caller's contract is the Rust function's.
            unsafe { pymalloc::$realloc(p, n) }
        }

        /// See `include/pymem.h`.
        ///
        /// # Safety
        ///
        /// `p` is null or a live block of this domain, not used afterwards.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $free(p: *mut c_void) {
            // SAFETY: the caller's contract is the Rust function's.
            unsafe { pymalloc::$free(p) }
        }
    };
}

export_domain!(
    PyMem_RawMalloc,
    PyMem_RawCalloc,
    PyMem_RawRealloc,
    PyMem_RawFree
);
export_domain!(PyMem_Malloc, PyMem_Calloc, PyMem_Realloc, PyMem_Free);
export_domain!(
    PyObject_Malloc,
    PyObject_Calloc,
    PyObject_Realloc,
    PyObject_Free
);

fn domain(d: c_int) -> Option<PyMemAllocatorDomain> {
    match d {
        0 => Some(PyMemAllocatorDomain::Raw),
        1 => Some(PyMemAllocatorDomain::Mem),
        2 => Some(PyMemAllocatorDomain::Obj),
        _ => None,
    }
}

/// Copies the allocator of domain `d` into `*out`; for an unknown domain
/// every field of `*out` is set to NULL, as CPython does.
///
/// # Safety
///
/// `out` points to writable memory for one `PyMemAllocatorEx`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn PyMem_GetAllocator(d: c_int, out: *mut PyMemAllocatorEx) {
    match domain(d) {
        // SAFETY: caller's contract.
        Some(d) => unsafe { out.write(pymalloc::PyMem_GetAllocator(d)) },
        // SAFETY: caller's contract; the C struct's fields are nullable
        // pointers, written as bytes (no Rust value with null function
        // pointers is made).
        None => unsafe {
            out.cast::<u8>()
                .write_bytes(0, core::mem::size_of::<PyMemAllocatorEx>())
        },
    }
}

/// Installs `*allocator` for domain `d`; an unknown domain is ignored.
///
/// # Safety
///
/// `allocator` points to a valid `PyMemAllocatorEx` whose functions keep
/// the domain's contract.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn PyMem_SetAllocator(d: c_int, allocator: *const PyMemAllocatorEx) {
    if let Some(d) = domain(d) {
        // SAFETY: caller's contract.
        pymalloc::PyMem_SetAllocator(d, unsafe { &*allocator });
    }
}

/// Installs the debug hooks on every domain over its current allocator
/// (unless it is a debug one already).
#[unsafe(no_mangle)]
pub extern "C" fn PyMem_SetupDebugHooks() {
    pymalloc::PyMem_SetupDebugHooks();
}

/// The allocators in use, by CPython's names: "pymalloc",
/// "pymalloc_debug", "malloc" or "malloc_debug"; NULL for custom ones.
/// The string is static.
#[unsafe(no_mangle)]
pub extern "C" fn _PyMem_GetCurrentAllocatorName() -> *const core::ffi::c_char {
    match pymalloc::PyMem_GetCurrentAllocatorName() {
        Some("pymalloc") => c"pymalloc".as_ptr(),
        Some("pymalloc_debug") => c"pymalloc_debug".as_ptr(),
        Some("malloc") => c"malloc".as_ptr(),
        Some("malloc_debug") => c"malloc_debug".as_ptr(),
        _ => core::ptr::null(),
    }
}

/// Checks every live debug block; returns how many (0 without hooks).
#[unsafe(no_mangle)]
pub extern "C" fn PyMem_DebugCheckAll() -> usize {
    pymalloc::PyMem_DebugCheckAll()
}

/// The macro set's direct path: `PyMem_MALLOC`.
#[unsafe(no_mangle)]
pub extern "C" fn pymalloc_malloc(n: usize) -> *mut c_void {
    pymalloc::PyMem_MALLOC(n)
}

/// The macro set's direct path (zeroed).
#[unsafe(no_mangle)]
pub extern "C" fn pymalloc_calloc(nelem: usize, elsize: usize) -> *mut c_void {
    pymalloc::pymem::HEAP.calloc(nelem, elsize).cast()
}

/// The macro set's direct path: `PyMem_REALLOC`.
///
/// # Safety
///
/// As `PyMem_Realloc`, for blocks of the macro set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pymalloc_realloc(p: *mut c_void, n: usize) -> *mut c_void {
    // SAFETY: caller's contract.
    unsafe { pymalloc::PyMem_REALLOC(p, n) }
}

/// The macro set's direct path: `PyMem_FREE`.
///
/// # Safety
///
/// As `PyMem_Free`, for blocks of the macro set.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pymalloc_free(p: *mut c_void) {
    // SAFETY: caller's contract.
    unsafe { pymalloc::PyMem_FREE(p) }
}

/// Usable bytes of a live block of the Mem/Obj domains or the macro set
/// (without debug hooks).
///
/// # Safety
///
/// `p` is a live, non-null block of `pymalloc`'s default heap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pymalloc_usable_size(p: *mut c_void) -> usize {
    match core::ptr::NonNull::new(p.cast::<u8>()) {
        // SAFETY: caller's contract.
        Some(p) => unsafe { pymalloc::pymem::HEAP.usable_size(p) },
        None => 0,
    }
}

/// Live blocks of the PyMem heap, as CPython's `_Py_GetAllocatedBlocks`
/// (`sys.getallocatedblocks()`).
#[unsafe(no_mangle)]
pub extern "C" fn _Py_GetAllocatedBlocks() -> isize {
    pymalloc::pymem::HEAP.allocated_blocks() as isize
}

/// Writes the PyMem heap's statistics to `out` in the format of CPython's
/// `_PyObject_DebugMallocStats` (`sys._debugmallocstats()`); returns 1, as
/// CPython does when pymalloc is in use.
///
/// # Safety
///
/// `out` is an open, writable `FILE *`.
#[cfg(unix)]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn _PyObject_DebugMallocStats(out: *mut libc::FILE) -> c_int {
    let mut text = pymalloc::pymem::HEAP.stats().to_string();
    text.push('\0');
    // SAFETY: a NUL-terminated string and the caller's open stream.
    unsafe { libc::fputs(text.as_ptr().cast(), out) };
    1
}

/// Copies the arena allocator of the PyMem heap into `*out` (CPython's
/// `PyObject_GetArenaAllocator`).
///
/// # Safety
///
/// `out` points to writable memory for one `PyObjectArenaAllocator`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn PyObject_GetArenaAllocator(out: *mut pymalloc::PyObjectArenaAllocator) {
    // SAFETY: caller's contract.
    unsafe { out.write(pymalloc::PyObject_GetArenaAllocator()) };
}

/// Installs `*allocator` for the PyMem heap's future arenas (CPython's
/// `PyObject_SetArenaAllocator`); each arena asks it for
/// `PYMALLOC_ARENA_ALLOC_SIZE` bytes of any alignment.
///
/// # Safety
///
/// `allocator` points to a valid `PyObjectArenaAllocator` whose functions
/// keep their contract and never allocate from the PyMem heap.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn PyObject_SetArenaAllocator(
    allocator: *const pymalloc::PyObjectArenaAllocator,
) {
    // SAFETY: caller's contract.
    pymalloc::PyObject_SetArenaAllocator(unsafe { &*allocator });
}

// ----- tracemalloc (`pymalloc::trace`) -----

/// CPython's `PyTraceMalloc_Track`: traces `size` bytes at `ptr` in
/// `domain`, memory no pymalloc heap allocated. 0 on success, -2 if
/// tracing is off, -1 if the tracer has no memory.
#[unsafe(no_mangle)]
pub extern "C" fn PyTraceMalloc_Track(domain: core::ffi::c_uint, ptr: usize, size: usize) -> c_int {
    match pymalloc::trace::track(domain, ptr, size) {
        Ok(()) => 0,
        Err(pymalloc::trace::TrackError::NotTracing) => -2,
        Err(pymalloc::trace::TrackError::NoMemory) => -1,
    }
}

/// CPython's `PyTraceMalloc_Untrack`: forgets the trace of `ptr` in
/// `domain` (if any). 0, or -2 if tracing is off.
#[unsafe(no_mangle)]
pub extern "C" fn PyTraceMalloc_Untrack(domain: core::ffi::c_uint, ptr: usize) -> c_int {
    match pymalloc::trace::untrack(domain, ptr) {
        Ok(()) => 0,
        Err(_) => -2,
    }
}

/// Starts tracing every allocation with `nframe` frames per traceback
/// (`tracemalloc.start(nframe)`); with `sample_mean` non-zero, samples one
/// allocation per `sample_mean` bytes instead. 0, or -1 if `nframe` is not
/// in 1..=`PYMALLOC_TRACE_MAX_FRAMES`.
#[unsafe(no_mangle)]
pub extern "C" fn pymalloc_trace_start(nframe: c_int, sample_mean: usize) -> c_int {
    let Ok(frames) = usize::try_from(nframe) else {
        return -1;
    };
    if !(1..=pymalloc::trace::MAX_FRAMES).contains(&frames) {
        return -1;
    }
    pymalloc::trace::start_sampling(sample_mean, frames);
    0
}

/// Stops tracing and forgets every trace (`tracemalloc.stop()`).
#[unsafe(no_mangle)]
pub extern "C" fn pymalloc_trace_stop() {
    pymalloc::trace::stop();
}

/// Bytes traced now and at most (`tracemalloc.get_traced_memory()`);
/// either pointer may be NULL.
///
/// # Safety
///
/// Each pointer is NULL or valid for a write.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pymalloc_trace_get_traced_memory(current: *mut usize, peak: *mut usize) {
    let (c, p) = pymalloc::trace::get_traced_memory();
    // SAFETY: each is null or writable (caller).
    unsafe {
        if !current.is_null() {
            current.write(c);
        }
        if !peak.is_null() {
            peak.write(p);
        }
    }
}

/// Takes a snapshot and prints its `limit` biggest lines to standard
/// error, as `for stat in snapshot.statistics("lineno")[:limit]:
/// print(stat)`. Returns the number of lines printed.
#[unsafe(no_mangle)]
pub extern "C" fn pymalloc_trace_print_top(limit: core::ffi::c_uint) -> c_int {
    let stats = pymalloc::trace::take_snapshot().statistics(pymalloc::trace::Key::Lineno);
    let n = stats.len().min(limit as usize);
    eprint!("{}", pymalloc::trace::top(&stats, n));
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

/// Takes a snapshot and writes it as folded stacks (the input of flame
/// graph tools) to the file `path`. 0, or -1 if the file cannot be written.
///
/// # Safety
///
/// `path` is a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pymalloc_trace_write_folded(path: *const core::ffi::c_char) -> c_int {
    // SAFETY: a NUL-terminated string (caller).
    let path = unsafe { core::ffi::CStr::from_ptr(path) };
    let Ok(path) = path.to_str() else {
        return -1;
    };
    match std::fs::write(path, pymalloc::trace::take_snapshot().folded()) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}
