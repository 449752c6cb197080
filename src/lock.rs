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
        loop {
            crate::backoff::wait_while(|| self.locked.load(Ordering::Relaxed));
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

/// A lock of the crate: `R` behind the process-wide fork gate
/// (`src/fork.rs`), so that `fork()` never leaves it held in the child.
/// Taking it enters the gate first (a thread's outermost crate lock only),
/// releasing it leaves. Every heap's and every global lock of the crate is
/// one; [`PrivateHeap`](crate::PrivateHeap)'s `R` is wrapped in it.
#[derive(Debug)]
pub struct ForkSafe<R> {
    inner: R,
}

// SAFETY: mutual exclusion and its happens-before edges come from `R`:
// every acquisition goes through `R::lock` or a successful `R::try_lock`,
// every release through `R::unlock`; the gate calls around them only delay
// acquisition. Guards are not `Send`: the gate counts per thread.
unsafe impl<R: lock_api::RawMutex> lock_api::RawMutex for ForkSafe<R> {
    #[allow(clippy::declare_interior_mutable_const)]
    const INIT: Self = ForkSafe { inner: R::INIT };
    type GuardMarker = lock_api::GuardNoSend;

    #[inline]
    fn lock(&self) {
        if crate::fork::enter_nested() {
            self.inner.lock();
            return;
        }
        // The outermost lock: be counted in the gate only while holding
        // it, so that a fork waits for holders, never for waiters.
        loop {
            crate::fork::enter_outer(self.addr());
            if self.inner.try_lock() {
                return;
            }
            crate::fork::leave(self.addr());
            self.wait_unlocked();
        }
    }

    #[inline]
    fn try_lock(&self) -> bool {
        let entered = crate::fork::enter_nested() || crate::fork::try_enter_outer(self.addr());
        if !entered {
            return false;
        }
        let taken = self.inner.try_lock();
        if !taken {
            crate::fork::leave(self.addr());
        }
        taken
    }

    #[inline]
    unsafe fn unlock(&self) {
        // SAFETY: the caller holds the lock (RawMutex contract).
        unsafe { self.inner.unlock() };
        crate::fork::leave(self.addr());
    }

    #[inline]
    fn is_locked(&self) -> bool {
        self.inner.is_locked()
    }
}

impl<R: lock_api::RawMutex> ForkSafe<R> {
    /// The lock's address: its stripe of the fork gate.
    #[inline]
    fn addr(&self) -> usize {
        core::ptr::from_ref(self).addr()
    }

    /// Waits, outside the gate, until the lock looks free.
    #[cold]
    #[inline(never)]
    fn wait_unlocked(&self) {
        crate::backoff::wait_while(|| self.inner.is_locked());
    }
}

/// The lock of the crate's global structures.
pub(crate) type GlobalLock = ForkSafe<SpinLock>;

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
