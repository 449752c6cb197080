//! `fork()` in a multi-threaded program, with no call from the user.
//!
//! The child of a `fork()` has one thread: a lock that another thread held
//! at the fork would stay held forever, over data it was halfway through
//! changing. glibc's malloc, jemalloc and tcmalloc take their locks in a
//! `pthread_atfork` handler before the fork; their heaps live at fixed
//! addresses they can list. A [`PrivateHeap`](crate::PrivateHeap) is a
//! value that may live anywhere and move, so its locks cannot be listed.
//! Instead every lock of the crate is a [`ForkSafe`](crate::lock::ForkSafe)
//! lock, whose holders pass a process-wide *gate*:
//!
//! * a thread about to hold its first crate lock enters the gate (one
//!   atomic add on a counter), then *tries* the lock; if it is taken, the
//!   thread leaves the gate and waits for it outside, so the gate counts
//!   lock holders only. Nested locks count a thread-local depth;
//! * the gate's count is striped: `STRIPES` counters on cache lines of
//!   their own, a lock's stripe chosen by its address, so that threads
//!   taking different locks (the medium allocator's shards) do not bounce
//!   one counter between their cores. With a single counter, the gate's
//!   two atomics were nine tenths of `alloc_medium_as`'s time in two
//!   threads parsing JSON (`perf`, `workloads time =json_2t`);
//! * the `prepare` handler closes every stripe and waits until no thread
//!   holds a crate lock; meanwhile no thread can take one, except the
//!   forking thread itself (other libraries' prepare handlers may
//!   allocate);
//! * `parent` and `child` reopen it. The child starts with every structure
//!   consistent and every lock free.
//!
//! The handlers are registered on the first lock taken by any heap
//! (`pthread_atfork` may call `malloc`, which may be this crate under
//! `LD_PRELOAD`: that nested call finds the registration under way and goes
//! on). Threads that do not exist in the child keep their thread heaps,
//! never adopted there; their blocks stay valid.
//!
//! Cost: two atomic read-modify-writes on the lock's stripe per outermost
//! lock acquisition (a slow path: the fast paths take no lock).
//!
//! Limit: a thread that forks while it holds a crate lock (a PyMem hook
//! calling `fork`) waits for threads that hold other crate locks; if one of
//! them waits for the forking thread's lock, they deadlock.

use core::cell::Cell;
use core::sync::atomic::AtomicUsize;
use core::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};

/// Stripes of the gate.
const STRIPES: usize = 16;

/// One stripe of the gate: bit 0 set while a fork is being prepared; the
/// rest counts the threads inside whose outermost lock maps here (in steps
/// of 2). Stripe 0's bit also tells closers apart: whoever sets it closes.
#[repr(align(128))]
struct Stripe(AtomicUsize);

static GATE: [Stripe; STRIPES] = [const { Stripe(AtomicUsize::new(0)) }; STRIPES];
const CLOSED: usize = 1;
const ONE: usize = 2;

/// The stripe of the lock at address `lock`: locks a cache line or more
/// apart (shards, heaps) take different stripes.
#[inline]
fn stripe_of(lock: usize) -> usize {
    (lock >> 7) % STRIPES
}

thread_local! {
    /// Crate locks the calling thread holds (or is acquiring), and the
    /// stripe its outermost one counted in, plus one (0: not counted). No
    /// destructor, `const`: readable at any time, set-up allocates nothing.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
    static COUNTED: Cell<usize> = const { Cell::new(0) };
    /// Set on the thread running the `prepare` handler while the gate is
    /// closed: it passes without counting.
    static CLOSER: Cell<bool> = const { Cell::new(false) };
}

/// Registration state of the handlers: 0 none, 1 under way, 2 done.
static HANDLERS: AtomicUsize = AtomicUsize::new(0);

/// Before taking a crate lock: if the thread already holds one (or is the
/// closer), counts the new one in its depth and returns `true`: the caller
/// then takes the lock as it is. Otherwise returns `false` and the caller
/// enters with [`enter_outer`] or [`try_enter_outer`].
#[inline]
pub(crate) fn enter_nested() -> bool {
    if HANDLERS.load(Relaxed) != 2 {
        register_handlers();
    }
    let depth = DEPTH.try_with(Cell::get).unwrap_or(0);
    if depth > 0 || CLOSER.try_with(Cell::get).unwrap_or(false) {
        let _ = DEPTH.try_with(|d| d.set(depth + 1));
        return true;
    }
    false
}

/// Enters the gate for a thread's outermost lock, the lock at address
/// `lock`, waiting while a fork is being prepared. The caller then tries
/// the lock, and [`leave`]s if it is taken.
#[inline]
pub(crate) fn enter_outer(lock: usize) {
    // A failed try counted us in and out again: the gate turned out
    // closed. The closer waits for the count, so whoever got in before it
    // closed is waited for.
    while !try_enter_outer(lock) {
        wait_open(stripe_of(lock));
    }
}

/// As [`enter_outer`], but gives up (`false`) instead of waiting.
#[inline]
pub(crate) fn try_enter_outer(lock: usize) -> bool {
    let stripe = stripe_of(lock);
    let gate = &GATE[stripe].0;
    if gate.fetch_add(ONE, Acquire) & CLOSED != 0 {
        gate.fetch_sub(ONE, Relaxed);
        return false;
    }
    let _ = DEPTH.try_with(|d| d.set(1));
    let _ = COUNTED.try_with(|c| c.set(stripe + 1));
    true
}

#[cold]
#[inline(never)]
fn wait_open(stripe: usize) {
    crate::backoff::wait_while(|| GATE[stripe].0.load(Relaxed) & CLOSED != 0);
}

/// After releasing a crate lock, the lock at address `lock` (or failing to
/// take it): leaves the gate if it was the thread's outermost and it
/// counted, on the stripe it counted in. If the thread-locals are gone
/// (thread exit), every lock of the thread entered as its outermost, on
/// its own stripe (see `try_enter_outer`), so it leaves that one.
#[inline]
pub(crate) fn leave(lock: usize) {
    let outermost = DEPTH
        .try_with(|d| {
            let n = d.get().saturating_sub(1);
            d.set(n);
            n == 0
        })
        .unwrap_or(true);
    if !outermost {
        return;
    }
    let counted = COUNTED
        .try_with(|c| c.replace(0))
        .unwrap_or(stripe_of(lock) + 1);
    if counted != 0 {
        GATE[counted - 1].0.fetch_sub(ONE, Release);
    }
}

/// Closes the gate and waits until no thread other than the caller is
/// inside (`prepare`).
fn close() {
    while GATE[0].0.fetch_or(CLOSED, AcqRel) & CLOSED != 0 {
        // Another thread is forking: wait for its turn to end.
        wait_open(0);
    }
    for stripe in &GATE[1..] {
        stripe.0.fetch_or(CLOSED, AcqRel);
    }
    let _ = CLOSER.try_with(|c| c.set(true));
    // A fork from inside a crate lock (a hook forking) must not wait for
    // itself.
    let mine = counted_here();
    for (i, stripe) in GATE.iter().enumerate() {
        let own = if mine == Some(i) { ONE } else { 0 };
        crate::backoff::wait_while(|| stripe.0.load(Acquire) & !CLOSED != own);
    }
}

/// The stripe the calling thread counts in, if it holds a crate lock it
/// entered the gate for.
fn counted_here() -> Option<usize> {
    let holds = DEPTH.try_with(Cell::get).unwrap_or(0) > 0;
    let counted = COUNTED.try_with(Cell::get).unwrap_or(0);
    (holds && counted != 0).then(|| counted - 1)
}

/// Reopens the gate in the parent; stripe 0 last, so that no other
/// closer starts before every stripe is open.
fn reopen() {
    let _ = CLOSER.try_with(|c| c.set(false));
    for stripe in GATE.iter().rev() {
        stripe.0.fetch_and(!CLOSED, Release);
    }
}

/// Reopens the gate in the child: only the forking thread exists, and it
/// is inside iff it was when it forked.
fn reopen_in_child() {
    let _ = CLOSER.try_with(|c| c.set(false));
    let mine = counted_here();
    for (i, stripe) in GATE.iter().enumerate().rev() {
        stripe
            .0
            .store(if mine == Some(i) { ONE } else { 0 }, Release);
    }
}

#[cold]
#[inline(never)]
fn register_handlers() {
    if HANDLERS.compare_exchange(0, 1, Acquire, Relaxed).is_err() {
        // Done, or under way on this thread (a nested malloc) or another.
        return;
    }
    install();
    HANDLERS.store(2, Release);
}

#[cfg(all(unix, not(miri)))]
fn install() {
    extern "C" fn prepare() {
        close();
    }
    extern "C" fn parent() {
        reopen();
    }
    extern "C" fn child() {
        reopen_in_child();
    }
    // SAFETY: the handlers are `extern "C"` functions that never unwind
    // and touch only atomics and a const thread-local.
    unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
}

#[cfg(not(all(unix, not(miri))))]
fn install() {
    // No fork here; the gate still works (the tests run it under Miri).
    let _ = (close as fn(), reopen as fn(), reopen_in_child as fn());
}

/// Whether the fork handlers are registered (for tests).
#[cfg(test)]
pub(crate) fn handlers_registered() -> bool {
    HANDLERS.load(Acquire) == 2
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    #[test]
    fn closing_the_gate_waits_for_holders_and_stops_new_ones() {
        // Two locks on different stripes: the holder's and another one.
        const HELD: usize = 0x1000;
        const OTHER: usize = HELD + 128;
        assert_ne!(stripe_of(HELD), stripe_of(OTHER));
        assert!(!enter_nested());
        enter_outer(HELD);
        assert!(handlers_registered());
        assert!(enter_nested()); // nested: depth only
        assert!(GATE[stripe_of(HELD)].0.load(Relaxed) >= ONE);
        let closed = Arc::new(AtomicBool::new(false));
        let c = closed.clone();
        let closer = std::thread::spawn(move || {
            close();
            c.store(true, Release);
            // While closed, no thread gets in, whatever its lock's stripe.
            assert!(!try_enter_outer(HELD), "try_enter gives up while closed");
            assert!(!try_enter_outer(OTHER), "every stripe is closed");
            let blocked = std::thread::spawn(|| {
                assert!(!enter_nested());
                enter_outer(OTHER);
                leave(OTHER);
            });
            std::thread::sleep(std::time::Duration::from_millis(20));
            assert!(!blocked.is_finished(), "a thread entered a closed gate");
            reopen();
            blocked.join().unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!closed.load(Acquire), "the gate closed over a holder");
        leave(HELD);
        assert!(!closed.load(Acquire), "nested leave let the closer in");
        leave(HELD);
        closer.join().unwrap();
        assert!(closed.load(Acquire));
        assert!(GATE.iter().all(|s| s.0.load(Relaxed) & CLOSED == 0));
    }
}
