//! `fork()` in a multi-threaded program. The child has one thread: a lock
//! that another thread held at the fork would stay held forever, over data
//! it was halfway through changing. So, as glibc does for its own malloc,
//! `pthread_atfork` handlers take every lock of the registered heaps (and
//! the process-wide ones) before the fork and release them in both
//! processes after it: the child starts with every structure consistent
//! and every lock free. Threads that do not exist in the child keep their
//! thread heaps (never adopted there); their blocks stay valid.
//!
//! A heap is registered with [`PrivateHeap::enable_fork`], which needs a
//! `&'static` heap (the handlers keep its address). The PyMem heap
//! registers itself.

use crate::heap::PrivateHeap;
use crate::lock::{SpinLock, hold_for_fork, release_after_fork};
use crate::os::PageSource;
use parking_lot::lock_api::{Mutex, RawMutex};

/// A heap whose locks the fork handlers take and release.
#[cfg_attr(not(all(unix, not(miri))), allow(dead_code))]
pub(crate) trait ForkLocks: Sync {
    /// Takes every lock of the heap (in the heap's lock order).
    fn lock_for_fork(&self);
    /// Releases what `lock_for_fork` took.
    ///
    /// # Safety
    ///
    /// Called once after `lock_for_fork`, by the thread that called it (or
    /// its single-threaded child copy).
    unsafe fn unlock_after_fork(&self);
}

const MAX_HEAPS: usize = 16;

struct Registry {
    heaps: [Option<&'static dyn ForkLocks>; MAX_HEAPS],
    len: usize,
    installed: bool,
}

static REGISTRY: Mutex<SpinLock, Registry> = Mutex::const_new(
    <SpinLock as RawMutex>::INIT,
    Registry {
        heaps: [None; MAX_HEAPS],
        len: 0,
        installed: false,
    },
);

/// Registers `heap` for the fork handlers (installed on first use).
/// Returns `false` if the registry is full.
pub(crate) fn register(heap: &'static dyn ForkLocks) -> bool {
    let mut r = REGISTRY.lock();
    let me = heap as *const dyn ForkLocks as *const ();
    if r.heaps[..r.len]
        .iter()
        .flatten()
        .any(|h| core::ptr::eq(*h as *const dyn ForkLocks as *const (), me))
    {
        return true;
    }
    if r.len == MAX_HEAPS {
        return false;
    }
    let len = r.len;
    r.heaps[len] = Some(heap);
    r.len += 1;
    if !r.installed {
        r.installed = true;
        install();
    }
    true
}

#[cfg(all(unix, not(miri)))]
fn install() {
    // SAFETY: the handlers are `extern "C"` functions that never unwind.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

#[cfg(not(all(unix, not(miri))))]
fn install() {}

#[cfg(all(unix, not(miri)))]
extern "C" fn prepare() {
    // The registry lock is held across the fork, so that no heap is
    // registered meanwhile; then every heap's locks, then the global ones,
    // in the order the rest of the crate nests them.
    core::mem::forget(REGISTRY.lock());
    // SAFETY: we hold the registry lock.
    let r = unsafe { &*REGISTRY.data_ptr() };
    for heap in r.heaps[..r.len].iter().flatten() {
        heap.lock_for_fork();
    }
    hold_for_fork(crate::thread::slab_lock());
    hold_for_fork(crate::pymem::writer_lock());
    hold_for_fork(crate::pymem::debug::live_lock());
}

#[cfg(all(unix, not(miri)))]
extern "C" fn parent() {
    release();
}

#[cfg(all(unix, not(miri)))]
extern "C" fn child() {
    release();
}

#[cfg(all(unix, not(miri)))]
fn release() {
    // SAFETY: `prepare` took exactly these locks, on this thread (or on the
    // thread the child was forked from).
    unsafe {
        release_after_fork(crate::pymem::debug::live_lock());
        release_after_fork(crate::pymem::writer_lock());
        release_after_fork(crate::thread::slab_lock());
        let r = &*REGISTRY.data_ptr();
        for heap in r.heaps[..r.len].iter().flatten().rev() {
            heap.unlock_after_fork();
        }
        REGISTRY.force_unlock();
    }
}

impl<S: PageSource + Sync, R: RawMutex + Sync> ForkLocks for PrivateHeap<S, R> {
    fn lock_for_fork(&self) {
        // In the heap's lock order: small before raw.
        hold_for_fork(&self.small);
        hold_for_fork(self.raw.fork_lock());
    }

    unsafe fn unlock_after_fork(&self) {
        // SAFETY: caller's contract: `lock_for_fork` took both.
        unsafe {
            release_after_fork(self.raw.fork_lock());
            release_after_fork(&self.small);
        }
    }
}

impl<S: PageSource + Sync + 'static, R: RawMutex + Sync + 'static> PrivateHeap<S, R> {
    /// Makes `fork()` safe for this heap in a multi-threaded program: before
    /// a fork, handlers take the heap's locks; after it, both processes
    /// release them, so the child can allocate and free normally even if
    /// another thread was inside the heap when `fork()` was called. Call
    /// once, on a `static` (or leaked) heap; at most 16 heaps. Returns
    /// `false` if no more heaps can be registered. A no-op off Unix.
    ///
    /// ```
    /// #[global_allocator]
    /// static HEAP: pymalloc::PrivateHeap = pymalloc::PrivateHeap::new();
    ///
    /// assert!(HEAP.enable_fork());
    /// ```
    pub fn enable_fork(&'static self) -> bool {
        register(self)
    }
}
