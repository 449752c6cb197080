//! pymalloc as the C library's allocator. Preloaded
//! (`LD_PRELOAD=libpymalloc_preload.so program`), this library's `malloc`,
//! `free`, `calloc`, `realloc`, `reallocarray`, `posix_memalign`,
//! `aligned_alloc`, `memalign`, `valloc`, `pvalloc`, `malloc_usable_size`
//! and `cfree` (and glibc's `__libc_*` aliases) take the place of glibc's,
//! with glibc's semantics: `errno` is `ENOMEM` on exhaustion and `EINVAL`
//! on a bad alignment, `calloc`/`reallocarray` overflow fails cleanly,
//! `realloc(p, 0)` frees `p` and returns null, `free(NULL)` does nothing.
//! C++'s `operator new`/`delete` call `malloc`/`free`, so they follow.
//!
//! * **No initialisation**: the heap is a `const` static; the first call,
//!   even from the dynamic loader or from thread-local storage set-up,
//!   works. Re-entrant calls (the C library allocating while the heap sets
//!   up a thread's state) take the heap's shared, locked path.
//! * **fork()**: `pthread_atfork` handlers take the heap's locks around a
//!   fork (installed at the first call).
//! * **Foreign pointers**: a pointer given to `free`/`realloc` that the
//!   heap never handed out is found by the arena map (no memory around it
//!   is read) and reported with its address, then the process aborts. This
//!   includes a second copy of this library loaded with `dlopen` (its own
//!   heap): memory must be freed by the copy that allocated it.

use core::ffi::{c_int, c_void};
use core::ptr::null_mut;
use pymalloc::PrivateHeap;

/// The heap behind every exported function.
static HEAP: PrivateHeap = PrivateHeap::new();

/// The heap. Fork-safe without set-up: its first lock registers the
/// `pthread_atfork` handlers (a nested malloc from `pthread_atfork` finds the
/// registration under way and goes on).
#[inline]
fn heap() -> &'static PrivateHeap {
    &HEAP
}

fn set_errno(e: c_int) {
    // SAFETY: errno is this thread's; writing it is always allowed.
    unsafe { *libc::__errno_location() = e };
}

fn enomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// glibc's `malloc`.
#[unsafe(no_mangle)]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    enomem(heap().malloc(size))
}

/// glibc's `calloc`: zeroed; overflow of `nmemb * size` fails with ENOMEM.
#[unsafe(no_mangle)]
pub extern "C" fn calloc(nmemb: usize, size: usize) -> *mut c_void {
    enomem(heap().calloc(nmemb, size))
}

/// glibc's `free`: null does nothing.
///
/// # Safety
///
/// `p` is null or a live block from this library, not used afterwards.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: C's contract: `p` is null or a live block from this library.
    unsafe { heap().free(p.cast()) }
}

/// glibc's `cfree` (obsolete alias of `free`).
///
/// # Safety
///
/// As `free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: as `free`.
    unsafe { free(p) }
}

/// glibc's `realloc`: null `p` allocates; size 0 frees `p` and returns
/// null; failure returns null with ENOMEM and leaves `p` valid.
///
/// # Safety
///
/// `p` is null or a live block from this library; after a non-null result
/// (or a size of 0) it is not used again.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    if size == 0 && !p.is_null() {
        // SAFETY: C's contract.
        unsafe { free(p) };
        return null_mut();
    }
    // SAFETY: C's contract.
    enomem(unsafe { heap().resize(p.cast(), size) })
}

/// glibc's `reallocarray`: `realloc(p, nmemb * size)`, failing with ENOMEM
/// on overflow (and leaving `p` valid).
///
/// # Safety
///
/// As `realloc`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, nmemb: usize, size: usize) -> *mut c_void {
    match nmemb.checked_mul(size) {
        // SAFETY: C's contract.
        Some(n) => unsafe { realloc(p, n) },
        None => {
            set_errno(libc::ENOMEM);
            null_mut()
        }
    }
}

/// glibc's `posix_memalign`: `align` a power of two and a multiple of
/// `sizeof(void *)`, else EINVAL; ENOMEM on exhaustion; errno untouched.
///
/// # Safety
///
/// `out` is valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    if !align.is_power_of_two() || align % size_of::<usize>() != 0 {
        return libc::EINVAL;
    }
    let p = heap().malloc_aligned(align, size);
    if p.is_null() {
        return libc::ENOMEM;
    }
    // SAFETY: C's contract: `out` is writable.
    unsafe { out.write(p.cast()) };
    0
}

/// glibc's `aligned_alloc`: `align` must be a power of two (EINVAL).
#[unsafe(no_mangle)]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return null_mut();
    }
    enomem(heap().malloc_aligned(align, size))
}

/// glibc's `memalign`: an alignment that is not a power of two is rounded
/// up to one (as glibc does).
#[unsafe(no_mangle)]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    match align.checked_next_power_of_two() {
        Some(a) => enomem(heap().malloc_aligned(a, size)),
        None => {
            set_errno(libc::EINVAL);
            null_mut()
        }
    }
}

fn page() -> usize {
    pymalloc::os::page_size()
}

/// glibc's `valloc`: page-aligned.
#[unsafe(no_mangle)]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    enomem(heap().malloc_aligned(page(), size))
}

/// glibc's `pvalloc`: page-aligned, size rounded up to whole pages (one
/// page for 0).
#[unsafe(no_mangle)]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    let page = page();
    match size.max(1).checked_next_multiple_of(page) {
        Some(n) => enomem(heap().malloc_aligned(page, n)),
        None => {
            set_errno(libc::ENOMEM);
            null_mut()
        }
    }
}

/// glibc's `malloc_usable_size`: 0 for null.
///
/// # Safety
///
/// `p` is null or a live block from this library.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    match core::ptr::NonNull::new(p.cast::<u8>()) {
        // SAFETY: C's contract: a live block from this library.
        Some(p) => unsafe { heap().usable_size(p) },
        None => 0,
    }
}

/// glibc's internal names, which some programs and libraries call directly.
mod aliases {
    use super::*;

    /// `malloc`.
    #[unsafe(no_mangle)]
    pub extern "C" fn __libc_malloc(size: usize) -> *mut c_void {
        malloc(size)
    }
    /// `calloc`.
    #[unsafe(no_mangle)]
    pub extern "C" fn __libc_calloc(n: usize, size: usize) -> *mut c_void {
        calloc(n, size)
    }
    /// `free`.
    ///
    /// # Safety
    ///
    /// As `free`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __libc_free(p: *mut c_void) {
        // SAFETY: as `free`.
        unsafe { free(p) }
    }
    /// `realloc`.
    ///
    /// # Safety
    ///
    /// As `realloc`.
    #[unsafe(no_mangle)]
    pub unsafe extern "C" fn __libc_realloc(p: *mut c_void, size: usize) -> *mut c_void {
        // SAFETY: as `realloc`.
        unsafe { realloc(p, size) }
    }
    /// `memalign`.
    #[unsafe(no_mangle)]
    pub extern "C" fn __libc_memalign(align: usize, size: usize) -> *mut c_void {
        memalign(align, size)
    }
    /// `valloc`.
    #[unsafe(no_mangle)]
    pub extern "C" fn __libc_valloc(size: usize) -> *mut c_void {
        valloc(size)
    }
    /// `pvalloc`.
    #[unsafe(no_mangle)]
    pub extern "C" fn __libc_pvalloc(size: usize) -> *mut c_void {
        pvalloc(size)
    }
}
