//! Locks that are safe on the global allocator's path.
//!
//! `parking_lot`'s mutex parks contended threads through a global hash table
//! that allocates (parking_lot #305, #361): used by a global allocator, a
//! contended lock would re-enter the allocator. [`SpinLock`] never allocates:
//! it spins briefly, then yields the CPU with `sched_yield`/`SwitchToThread`
//! (a system call, no allocation). Heaps are generic over
//! [`lock_api::RawMutex`], so a private heap that is never the global
//! allocator may use `parking_lot::RawMutex` instead.

use core::sync::atomic::{AtomicBool, Ordering};
use parking_lot::lock_api;

/// A test-and-test-and-set spin lock that yields to the OS under contention
/// and never allocates.
#[derive(Debug)]
pub struct SpinLock {
    /// `true` iff some thread holds the lock.
    locked: AtomicBool,
}

impl SpinLock {
    #[cold]
    #[inline(never)]
    fn lock_contended(&self) {
        let mut spins = 0u32;
        loop {
            while self.locked.load(Ordering::Relaxed) {
                if spins < 64 {
                    spins += 1;
                    core::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
            if self.try_lock_once() {
                return;
            }
        }
    }

    #[inline]
    fn try_lock_once(&self) -> bool {
        self.locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }
}

// SAFETY: `locked` is set with Acquire by exactly one thread at a time (a
// successful CAS from `false`) and cleared with Release by the holder, so the
// lock provides mutual exclusion and the needed happens-before edges.
unsafe impl lock_api::RawMutex for SpinLock {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = SpinLock {
        locked: AtomicBool::new(false),
    };
    type GuardMarker = lock_api::GuardSend;

    #[inline]
    fn lock(&self) {
        if !self.try_lock_once() {
            self.lock_contended();
        }
    }

    #[inline]
    fn try_lock(&self) -> bool {
        // Strong CAS: `try_lock` must not fail while the lock is free.
        !self.locked.load(Ordering::Relaxed)
            && self
                .locked
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
    }

    #[inline]
    unsafe fn unlock(&self) {
        self.locked.store(false, Ordering::Release);
    }

    #[inline]
    fn is_locked(&self) -> bool {
        self.locked.load(Ordering::Relaxed)
    }
}

/// Holds `lock` across `fork()` (the fork handlers, `src/heap/fork.rs`):
/// taken before the fork, so no other thread is inside what it guards when
/// the child is made, and released in both processes by
/// [`release_after_fork`].
#[cfg_attr(not(all(unix, not(miri))), allow(dead_code))]
pub(crate) fn hold_for_fork<R: lock_api::RawMutex, T: ?Sized>(lock: &lock_api::Mutex<R, T>) {
    core::mem::forget(lock.lock());
}

/// Releases a lock taken by [`hold_for_fork`].
///
/// # Safety
///
/// `hold_for_fork(lock)` took it, on this thread or in the parent of this
/// single-threaded child, and it was not released since.
#[cfg_attr(not(all(unix, not(miri))), allow(dead_code))]
pub(crate) unsafe fn release_after_fork<R: lock_api::RawMutex, T: ?Sized>(
    lock: &lock_api::Mutex<R, T>,
) {
    // SAFETY: caller's contract: the lock is held, by no guard.
    unsafe { lock.force_unlock() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lock_api::{Mutex, RawMutex};

    #[test]
    fn excludes_concurrent_holders() {
        let m: Mutex<SpinLock, u64> = Mutex::const_new(SpinLock::INIT, 0);
        let per_thread = if cfg!(miri) { 50 } else { 20_000 };
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..per_thread {
                        *m.lock() += 1;
                    }
                });
            }
        });
        assert_eq!(*m.lock(), 4 * per_thread);
        let g = m.lock();
        assert!(m.try_lock().is_none());
        drop(g);
        assert!(m.try_lock().is_some());
    }
}
