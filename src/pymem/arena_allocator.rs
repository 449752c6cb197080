//! CPython's arena allocator hooks: `PyObjectArenaAllocator`,
//! `PyObject_GetArenaAllocator`, `PyObject_SetArenaAllocator`. The arenas
//! of the PyMem heap ([`HEAP`](crate::pymem::HEAP)) come from the installed
//! functions — for huge pages, accounting, or a memory pool of the host
//! program.
//!
//! pymalloc finds a block's arena by masking its address, so arenas must be
//! `ARENA_SIZE`-aligned; the functions may return memory of any alignment,
//! as in CPython. So each arena asks an installed allocator for
//! [`ARENA_ALLOC_SIZE`] bytes (two arenas' worth) and is placed at the
//! first aligned address inside; a record at the end of its first pool
//! (bytes layer 2 leaves to the page source) keeps the pointer, size and
//! `free` function of that allocation: `free` later receives exactly the
//! pointer and size `alloc` gave, even if another allocator was installed
//! meanwhile. Every small block lies inside memory the functions returned.
//! Memory from an installed allocator is zeroed before use (it may not be)
//! and, once one was installed, no page of the heap is purged (they may be
//! file-backed or huge pages). With the default allocator an arena is an
//! aligned mapping of its own, as in every other heap.
//!
//! The functions run under the PyMem heap's layer-1 lock: they must not
//! allocate from the PyMem heap.

use crate::config::{ARENA_SIZE, POOL_SIZE};
use crate::lock::GlobalLock;
use crate::os::{ARENA_SPARE, OsPages, PageSource, page_size};
use core::ffi::c_void;
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::AtomicBool;
use core::sync::atomic::Ordering::Relaxed;
use parking_lot::lock_api::Mutex;

/// CPython's `PyObjectArenaAllocator`: a context and two functions that
/// provide the memory of the object allocator's arenas.
///
/// ```
/// use pymalloc::*;
/// let a = PyObject_GetArenaAllocator();
/// // The default: anonymous mappings from the OS.
/// assert!(a.ctx.is_null());
/// ```
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PyObjectArenaAllocator {
    /// Passed as the first argument of both functions.
    pub ctx: *mut c_void,
    /// `alloc(ctx, size)`: `size` bytes of any alignment, or null.
    pub alloc: unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
    /// `free(ctx, ptr, size)`: gives back exactly what `alloc` returned.
    pub free: unsafe extern "C" fn(*mut c_void, *mut c_void, usize),
}

// SAFETY: the context is an opaque value its functions are responsible
// for; the heap calls them from any thread, as CPython's contract allows
// with the GIL replaced by the heap's lock.
unsafe impl Send for PyObjectArenaAllocator {}
// SAFETY: as above.
unsafe impl Sync for PyObjectArenaAllocator {}

/// Bytes each arena asks an installed allocator for: room for one
/// `ARENA_SIZE`-aligned arena at any alignment of the returned memory.
pub const ARENA_ALLOC_SIZE: usize = 2 * ARENA_SIZE;

/// Where an arena keeps its record: the end of its first pool, which
/// layer 2 leaves to the page source (`os::ARENA_SPARE`).
const RECORD_AT: usize = POOL_SIZE - ARENA_SPARE;

/// What an arena remembers of the allocation it lies in.
#[repr(C)]
struct Record {
    magic: usize,
    raw: *mut c_void,
    size: usize,
    ctx: *mut c_void,
    free: unsafe extern "C" fn(*mut c_void, *mut c_void, usize),
}
const _: () = assert!(size_of::<Record>() <= ARENA_SPARE);
const MAGIC: usize = 0x7079_6d61_6c6c_6f63_u64 as usize; // "pymalloc" (truncated on 32-bit)

/// Frees an arena the default path mapped aligned from the OS.
unsafe extern "C" fn os_arena_free(_: *mut c_void, ptr: *mut c_void, size: usize) {
    if let Some(p) = NonNull::new(ptr.cast::<u8>()) {
        // SAFETY: mapped by `OsPages.map(size, ARENA_SIZE)` (the record's
        // contract).
        unsafe { OsPages.unmap(p, size, ARENA_SIZE) };
    }
}

unsafe extern "C" fn default_alloc(_: *mut c_void, size: usize) -> *mut c_void {
    let size = size.next_multiple_of(page_size());
    OsPages
        .map(size, page_size())
        .map_or(null_mut(), |p| p.as_ptr().cast())
}

unsafe extern "C" fn default_free(_: *mut c_void, ptr: *mut c_void, size: usize) {
    if let Some(p) = NonNull::new(ptr.cast::<u8>()) {
        // SAFETY: `ptr` and `size` are those `default_alloc` mapped (the
        // record's contract), rounded the same way.
        unsafe { OsPages.unmap(p, size.next_multiple_of(page_size()), page_size()) };
    }
}

const DEFAULT: PyObjectArenaAllocator = PyObjectArenaAllocator {
    ctx: null_mut(),
    alloc: default_alloc,
    free: default_free,
};

/// The installed arena allocator.
static CURRENT: Mutex<GlobalLock, PyObjectArenaAllocator> = Mutex::const_new(
    <GlobalLock as parking_lot::lock_api::RawMutex>::INIT,
    DEFAULT,
);
/// Whether an allocator other than the default was ever installed: then
/// no page of the heap is purged (it may lie in such memory).
static CUSTOM: AtomicBool = AtomicBool::new(false);

/// The arena allocator of the PyMem heap (CPython's
/// `PyObject_GetArenaAllocator`).
pub fn PyObject_GetArenaAllocator() -> PyObjectArenaAllocator {
    *CURRENT.lock()
}

/// Installs `allocator` for the PyMem heap's future arenas (CPython's
/// `PyObject_SetArenaAllocator`). Arenas mapped before are freed by the
/// allocator that made them. Each arena asks for [`ARENA_ALLOC_SIZE`]
/// bytes; the functions must not allocate from the PyMem heap.
///
/// ```
/// use core::ffi::c_void;
/// use core::sync::atomic::{AtomicUsize, Ordering};
/// use pymalloc::*;
///
/// static LIVE: AtomicUsize = AtomicUsize::new(0);
/// unsafe extern "C" fn alloc(_: *mut c_void, size: usize) -> *mut c_void {
///     LIVE.fetch_add(1, Ordering::Relaxed);
///     // SAFETY: the C library's malloc, for any size.
///     unsafe { libc::malloc(size) }
/// }
/// unsafe extern "C" fn free(_: *mut c_void, p: *mut c_void, _size: usize) {
///     LIVE.fetch_sub(1, Ordering::Relaxed);
///     // SAFETY: a block of `alloc`'s.
///     unsafe { libc::free(p) }
/// }
/// let old = PyObject_GetArenaAllocator();
/// PyObject_SetArenaAllocator(&PyObjectArenaAllocator { ctx: core::ptr::null_mut(), alloc, free });
/// // Small objects now live in malloc'd arenas.
/// let blocks: Vec<_> = (0..100_000).map(|_| PyObject_Malloc(64)).collect();
/// assert!(LIVE.load(Ordering::Relaxed) > 0);
/// for b in blocks {
///     // SAFETY: live Obj blocks, freed once.
///     unsafe { PyObject_Free(b) };
/// }
/// pymalloc::pymem::HEAP.trim();
/// PyObject_SetArenaAllocator(&old);
/// ```
pub fn PyObject_SetArenaAllocator(allocator: &PyObjectArenaAllocator) {
    let mut current = CURRENT.lock();
    if !core::ptr::fn_addr_eq(allocator.alloc, DEFAULT.alloc) {
        CUSTOM.store(true, Relaxed);
    }
    *current = *allocator;
}

/// The pages of the PyMem heap: arenas (`PageSource::map_arena`) from the
/// installed arena allocator, everything else (medium chunks, huge blocks)
/// from the OS.
#[derive(Debug, Clone, Copy, Default)]
pub struct PyMemPages;

// SAFETY: arenas are `ARENA_SIZE`-aligned, zeroed (mapped fresh from the
// OS, or zeroed here) but for the record in the spare bytes layer 2 leaves
// to the source, and inside memory nothing else uses until freed; other
// requests go to `OsPages`, which keeps the contract. Nothing is purged
// once an installed allocator may own memory of the heap.
unsafe impl PageSource for PyMemPages {
    fn map(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        OsPages.map(size, align)
    }

    unsafe fn unmap(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: caller's contract, with `OsPages`'s region.
        unsafe { OsPages.unmap(ptr, size, align) }
    }

    unsafe fn purge(&self, ptr: NonNull<u8>, size: usize) -> bool {
        if CUSTOM.load(Relaxed) {
            return false;
        }
        // SAFETY: caller's contract; default arenas and other regions are
        // anonymous mappings of the OS.
        unsafe { OsPages.purge(ptr, size) }
    }

    fn map_arena(&self) -> Option<NonNull<u8>> {
        let a = *CURRENT.lock();
        let (arena, record) = if core::ptr::fn_addr_eq(a.alloc, DEFAULT.alloc) && a.ctx.is_null() {
            // The default: an aligned mapping of the arena alone.
            let arena = OsPages.map(ARENA_SIZE, ARENA_SIZE)?;
            let record = Record {
                magic: MAGIC,
                raw: arena.as_ptr().cast(),
                size: ARENA_SIZE,
                ctx: null_mut(),
                free: os_arena_free,
            };
            (arena, record)
        } else {
            // SAFETY: the allocator's contract.
            let raw = NonNull::new(unsafe { (a.alloc)(a.ctx, ARENA_ALLOC_SIZE) }.cast::<u8>())?;
            let arena = raw.map_addr(|r| {
                // `next_multiple_of` of a non-zero address is non-zero.
                core::num::NonZeroUsize::new(r.get().next_multiple_of(ARENA_SIZE)).unwrap_or(r)
            });
            // SAFETY: `arena .. arena + ARENA_SIZE` lies inside the
            // `ARENA_ALLOC_SIZE` bytes just returned, which are ours and
            // may hold anything.
            unsafe { arena.as_ptr().write_bytes(0, ARENA_SIZE) };
            let record = Record {
                magic: MAGIC,
                raw: raw.as_ptr().cast(),
                size: ARENA_ALLOC_SIZE,
                ctx: a.ctx,
                free: a.free,
            };
            (arena, record)
        };
        // SAFETY: the spare bytes of the arena's first pool are ours.
        unsafe {
            arena
                .as_ptr()
                .add(RECORD_AT)
                .cast::<Record>()
                .write_unaligned(record)
        };
        Some(arena)
    }

    unsafe fn unmap_arena(&self, ptr: NonNull<u8>) {
        // SAFETY: an arena `map_arena` made, so its record is in place.
        let r = unsafe {
            ptr.as_ptr()
                .add(RECORD_AT)
                .cast::<Record>()
                .read_unaligned()
        };
        if r.magic != MAGIC {
            crate::fatal::bad_pointer("PyMemPages::unmap_arena (arena record)", ptr.as_ptr());
        }
        // SAFETY: exactly what the allocator returned, as its contract asks.
        unsafe { (r.free)(r.ctx, r.raw, r.size) };
    }
}
