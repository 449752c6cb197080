//! The calling thread's thread heaps: a small thread-local cache keyed by
//! heap, and the exit guard that orphans them ([ref:thread-heaps]).
//!
//! The thread-local is `const`-initialised and has no destructor, so
//! reading it runs no code that allocates and costs no liveness check; a
//! separate guard, touched once when the thread first claims a thread heap,
//! orphans the thread's thread heaps at exit with compare-and-swaps only.

use crate::thread::ThreadHeap;
use core::cell::Cell;
use core::ptr::null_mut;

/// Thread heaps a thread keeps at once (for that many heaps). The first
/// entry is the most recently used one; the fast path reads only it.
const CACHE: usize = 4;

/// Key of an empty cache entry: no heap has it (heap keys count up from 1),
/// and a heap whose key is still 0 matches no entry either, so a matching
/// key implies a thread heap and the fast path needs no null check.
const NO_KEY: usize = usize::MAX;

/// The calling thread's thread heaps, keyed by heap key (`NO_KEY`: empty).
struct Local {
    /// Set while `lookup` runs (see there).
    busy: Cell<bool>,
    keys: [Cell<usize>; CACHE],
    heaps: [Cell<*mut ThreadHeap>; CACHE],
    tokens: [Cell<u64>; CACHE],
}

/// Registered (by being touched) when the thread first claims a thread
/// heap; dropped at thread exit, it orphans the thread's thread heaps and
/// empties its cache. `LOCAL` itself has no destructor, so reading it costs
/// no liveness check; after this guard is gone, `lookup` refuses to claim.
struct ExitGuard;

impl Drop for ExitGuard {
    fn drop(&mut self) {
        // `LOCAL` needs no drop, so it stays readable during thread exit.
        let _ = LOCAL.try_with(|l| {
            for i in 0..CACHE {
                ThreadHeap::disown(l.heaps[i].get(), l.tokens[i].get());
                l.keys[i].set(NO_KEY);
                l.heaps[i].set(null_mut());
            }
        });
        front_changed(NO_KEY, null_mut());
    }
}

thread_local! {
    static EXIT: ExitGuard = const { ExitGuard };
    static LOCAL: Local = const {
        Local {
            busy: Cell::new(false),
            keys: [const { Cell::new(NO_KEY) }; CACHE],
            heaps: [const { Cell::new(null_mut()) }; CACHE],
            tokens: [const { Cell::new(0) }; CACHE],
        }
    };
}

/// The calling thread's thread heap for heap `key` if it is the most
/// recently used one (then never null).
#[inline(always)]
pub(crate) fn cached(key: usize) -> Option<*mut ThreadHeap> {
    #[cfg(all(
        feature = "initial-exec-tls",
        target_arch = "x86_64",
        target_os = "linux",
        not(miri)
    ))]
    {
        initial_exec::cached(key)
    }
    #[cfg(not(all(
        feature = "initial-exec-tls",
        target_arch = "x86_64",
        target_os = "linux",
        not(miri)
    )))]
    LOCAL
        .try_with(|l| (l.keys[0].get() == key).then(|| l.heaps[0].get()))
        .ok()
        .flatten()
}

/// Entry 0 of the cache changed: mirror it where `cached` reads it.
#[inline]
fn front_changed(key: usize, th: *mut ThreadHeap) {
    #[cfg(all(
        feature = "initial-exec-tls",
        target_arch = "x86_64",
        target_os = "linux",
        not(miri)
    ))]
    initial_exec::set(key, th);
    #[cfg(not(all(
        feature = "initial-exec-tls",
        target_arch = "x86_64",
        target_os = "linux",
        not(miri)
    )))]
    let _ = (key, th);
}

/// With the `initial-exec-tls` feature on x86_64 Linux (the `LD_PRELOAD`
/// library): the front cache entry in a thread-local of the *initial-exec*
/// model, read at a fixed offset from the thread pointer, where a shared
/// library's `thread_local!` takes the general-dynamic model and calls
/// `__tls_get_addr` on every access (about 11 instructions each way).
/// mimalloc does the same. The slot is static TLS: it has no destructor
/// and outlives every other thread-local, so the exit guard clears it.
/// A library with initial-exec TLS may fail to `dlopen` late in a
/// process when static TLS space is exhausted (it needs 16 bytes); it is
/// meant to be preloaded.
#[cfg(all(
    feature = "initial-exec-tls",
    target_arch = "x86_64",
    target_os = "linux",
    not(miri)
))]
mod initial_exec {
    use super::{NO_KEY, ThreadHeap};

    // The slot: the key of the front entry (initially `NO_KEY`) and its
    // thread heap, in `.tdata` (initialised TLS). Global, so that every
    // codegen unit of the crate links to it; hidden, so that it is not
    // exported and two copies of the library keep two slots.
    core::arch::global_asm!(
        ".pushsection .tdata,\"awT\",@progbits",
        ".p2align 4",
        ".globl pymalloc_front_slot",
        ".hidden pymalloc_front_slot",
        "pymalloc_front_slot:",
        ".quad -1",
        ".quad 0",
        ".popsection",
    );
    const _: () = assert!(NO_KEY == usize::MAX);

    /// The slot's offset from the thread pointer.
    #[inline(always)]
    fn offset() -> usize {
        let off: usize;
        // SAFETY: loads the slot's TLS offset from the GOT (filled in by the
        // dynamic loader); touches nothing else.
        unsafe {
            core::arch::asm!(
                "mov {off}, qword ptr [rip + pymalloc_front_slot@GOTTPOFF]",
                off = out(reg) off,
                options(pure, readonly, nostack, preserves_flags),
            );
        }
        off
    }

    #[inline(always)]
    pub(super) fn cached(key: usize) -> Option<*mut ThreadHeap> {
        let off = offset();
        let (k, th): (usize, usize);
        // SAFETY: the slot is this thread's, 16 bytes at `fs:off`; only
        // this thread reads or writes it.
        unsafe {
            core::arch::asm!(
                "mov {k}, qword ptr fs:[{off}]",
                "mov {th}, qword ptr fs:[{off} + 8]",
                off = in(reg) off,
                k = out(reg) k,
                th = out(reg) th,
                options(readonly, nostack, preserves_flags),
            );
        }
        // The pointer was exposed by `set`.
        (k == key).then(|| core::ptr::with_exposed_provenance_mut(th))
    }

    pub(super) fn set(key: usize, th: *mut ThreadHeap) {
        let off = offset();
        let th = th.expose_provenance();
        // SAFETY: as in `cached`.
        unsafe {
            core::arch::asm!(
                "mov qword ptr fs:[{off}], {k}",
                "mov qword ptr fs:[{off} + 8], {th}",
                off = in(reg) off,
                k = in(reg) key,
                th = in(reg) th,
                options(nostack, preserves_flags),
            );
        }
    }
}

/// The calling thread's thread heap for heap `key` (non-zero): from the
/// cache, moved to its front, or `claim`ed and cached (evicting, hence
/// orphaning, the least recently used entry). Null when thread-locals are
/// gone or `claim` fails.
#[cold]
#[inline(never)]
pub(crate) fn lookup(
    key: usize,
    claim: impl FnOnce() -> Option<(*mut ThreadHeap, u64)>,
) -> *mut ThreadHeap {
    debug_assert_ne!(key, 0);
    // Re-entrancy: registering the guard's destructor, or claiming, may
    // call the C library's malloc, which may be this heap (an `LD_PRELOAD`
    // build): a nested call finds `busy` set and takes the shared path.
    let entered = LOCAL.try_with(|l| !l.busy.replace(true)).unwrap_or(false);
    if !entered {
        return null_mut();
    }
    let th = lookup_entered(key, claim);
    let _ = LOCAL.try_with(|l| l.busy.set(false));
    th
}

fn lookup_entered(
    key: usize,
    claim: impl FnOnce() -> Option<(*mut ThreadHeap, u64)>,
) -> *mut ThreadHeap {
    // Touching the guard registers its destructor; once it has run (thread
    // exit), the thread gets no thread heap again.
    if EXIT.try_with(|_| ()).is_err() {
        return null_mut();
    }
    LOCAL
        .try_with(|l| {
            let found = (0..CACHE).find(|&i| l.keys[i].get() == key);
            let (th, token, from) = match found {
                Some(i) => (l.heaps[i].get(), l.tokens[i].get(), i),
                None => {
                    let Some((th, token)) = claim() else {
                        return null_mut();
                    };
                    ThreadHeap::disown(l.heaps[CACHE - 1].get(), l.tokens[CACHE - 1].get());
                    (th, token, CACHE - 1)
                }
            };
            for i in (0..from).rev() {
                l.keys[i + 1].set(l.keys[i].get());
                l.heaps[i + 1].set(l.heaps[i].get());
                l.tokens[i + 1].set(l.tokens[i].get());
            }
            l.keys[0].set(key);
            l.heaps[0].set(th);
            l.tokens[0].set(token);
            front_changed(key, th);
            th
        })
        .unwrap_or(null_mut())
}
