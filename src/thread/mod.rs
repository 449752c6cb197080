//! Per-thread ownership of pools: layer 2's lock-free fast path.
//!
//! # Design [tag:thread-heaps]
//!
//! Each thread that allocates small blocks from a [`PrivateHeap`] gets a
//! [`ThreadHeap`] of that heap: its own `usedpools` table. The pools on it
//! belong to the thread (`PoolHeader::owner`), which allocates and frees
//! their blocks with plain loads and stores: no lock, no atomic
//! read-modify-write. The heap's lock is taken only to move a pool between
//! its arena and a thread (once per pool's worth of blocks).
//!
//! * **Remote frees.** A block freed by a thread that does not own its pool
//!   is pushed onto the owner's `inbox`, an atomic stack, with one
//!   compare-and-swap. The owner takes the whole stack with one swap when a
//!   class of its runs dry, and frees those blocks locally. Nothing waits on
//!   the owner.
//! * **Thread exit and adoption.** A thread heap is owned by a *claim
//!   token*; the owning thread keeps `(heap key, thread heap, token)` in a
//!   small thread-local cache. When the thread exits (or evicts the entry),
//!   it clears the token with one compare-and-swap, and touches nothing else:
//!   the thread heap becomes an *orphan* with its pools, its inbox still
//!   reachable by remote frees. The next thread that needs a thread heap of
//!   that heap adopts an orphan before making a new one, so a program that
//!   starts and joins any number of short threads holds at most as many
//!   thread heaps as it ever ran threads at once. `stats`, `trim` and
//!   `validate` collect orphans' inboxes.
//! * **Memory of thread heaps.** Thread heaps come from a process-wide slab
//!   that is never unmapped: a thread-local cache entry may outlive the heap
//!   it names, and a thread's exit must be able to clear a token without
//!   knowing whether the heap still exists. A dropped heap's thread heaps
//!   return to the slab's free list; a token is never reused, so a stale
//!   clear fails harmlessly.
//! * **No recursion.** The thread-local is `const`-initialised, so setting
//!   it up runs no code that allocates through the global allocator, and
//!   its destructor only does compare-and-swaps. It is read with `try_with`:
//!   once the thread's thread-locals are being destroyed, or when a claim
//!   fails, allocation falls back to the heap's shared, locked lists and
//!   frees of owned pools go through the owner's inbox. std's guarantee
//!   (rust-lang/rust#144465: TLS machinery allocates through `System`) is
//!   all that is assumed.
//!
//! [`PrivateHeap`]: crate::PrivateHeap

// The lock-free protocols of thread heaps, checked with loom.
pub(crate) mod protocol;

use crate::config::ARENA_SIZE;
use crate::lock::SpinLock;
use crate::os::{OsPages, PageSource, page_size};
use crate::small::arena::{ArenaHeader, PoolHeader, pool_of};
use crate::small::pool::{Freed, UsedPools};
use crate::thread::protocol::{Claim, Inbox, Linked};
use core::cell::Cell;
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::Ordering::Relaxed;
use core::sync::atomic::{AtomicU64, AtomicUsize};
use parking_lot::lock_api::Mutex;

/// A value alone on its cache lines, so that remote threads writing it do
/// not slow the owner's fast path (false sharing).
#[repr(align(128))]
struct Padded<T>(T);

/// One thread's share of a heap's layer 2.
///
/// Invariants:
/// * `used` and the pools on it are touched only by the owning thread (the
///   one whose cache holds `token`), or, while `token == 0` (orphan), by a
///   holder of the heap's small-object lock;
/// * every pool whose `owner` is this thread heap is on `used`, or full;
/// * a block on `inbox` is a live-until-collected block of a pool owned by
///   this thread heap, linked through its first word.
#[repr(C)]
pub(crate) struct ThreadHeap {
    pub(crate) used: UsedPools,
    /// Bytes requested by blocks this owner allocated minus those it freed
    /// (its own or others', wrapping): the sum over all owners is exact.
    /// Written by the owner with a load and a store; read by `stats()`.
    requested: AtomicUsize,
    /// The claim token of the owner; 0 for an orphan.
    token: Claim,
    /// Next thread heap of the same heap (under the small-object lock).
    pub(crate) next: *mut ThreadHeap,
    /// Next thread heap on the slab's free list.
    free_next: *mut ThreadHeap,
    /// Medium blocks freed by this thread and kept for reuse (see
    /// [`medium_bin`]): one LIFO list per bin, linked through the blocks'
    /// first word; the second word holds the block's usable size.
    medium: [*mut u8; MEDIUM_BINS],
    /// Owner-written, `stats()`-read counters of the medium cache: requested
    /// bytes freed into it minus those allocated from it (wrapping), usable
    /// bytes and blocks it holds.
    medium_requested: AtomicUsize,
    medium_bytes: AtomicUsize,
    medium_blocks: AtomicUsize,
    /// Blocks freed by other threads, not yet collected.
    inbox: Padded<Inbox<u8>>,
}

/// Largest request the per-thread medium cache serves.
pub(crate) const MEDIUM_CACHE_MAX: usize = 128 * 1024;
/// Most usable bytes one thread heap keeps in its medium cache: enough for
/// steady churn (a few 64 KiB buffers, hundreds of 1 KiB ones), small
/// enough that what it pins (a medium chunk at most, per thread) is minor.
pub(crate) const MEDIUM_CACHE_BYTES: usize = 256 * 1024;
/// Bins per doubling of size: a cached request is rounded up by at most
/// 1/8 (12.5%).
const BIN_STEPS: u32 = 8;
const BIN_STEP_BITS: u32 = BIN_STEPS.trailing_zeros();
/// First doubling of the medium bins: requests just above the small
/// threshold.
const BIN_BASE_LOG: u32 = crate::config::SMALL_REQUEST_THRESHOLD.trailing_zeros();
const MEDIUM_BINS: usize =
    ((MEDIUM_CACHE_MAX.trailing_zeros() - BIN_BASE_LOG) * BIN_STEPS) as usize;
const _: () = assert!(crate::config::SMALL_REQUEST_THRESHOLD.is_power_of_two());
const _: () =
    assert!(MEDIUM_CACHE_MAX.is_power_of_two() && MEDIUM_CACHE_MAX <= crate::config::MEDIUM_MAX);

/// The medium bin of a request of `size` bytes (above the small threshold,
/// at most `MEDIUM_CACHE_MAX`) and the size to allocate for it: the bin's
/// bound, so that every block in the bin can serve every request of it.
#[inline]
pub(crate) fn medium_bin(size: usize) -> Option<(usize, usize)> {
    if size <= crate::config::SMALL_REQUEST_THRESHOLD || size > MEDIUM_CACHE_MAX {
        return None;
    }
    let r = size - 1;
    let log = usize::BITS - 1 - r.leading_zeros();
    let step = (r >> (log - BIN_STEP_BITS)) & (BIN_STEPS as usize - 1);
    let bin = ((log - BIN_BASE_LOG) * BIN_STEPS) as usize + step;
    Some((bin, bin_bound(bin)))
}

/// The request size bin `bin` serves up to (its blocks hold at least this).
#[inline]
fn bin_bound(bin: usize) -> usize {
    let log = BIN_BASE_LOG + (bin as u32 >> BIN_STEP_BITS);
    (BIN_STEPS as usize + (bin & (BIN_STEPS as usize - 1)) + 1) << (log - BIN_STEP_BITS)
}

/// The bin a freed block of `usable` bytes joins: the largest whose bound
/// it holds.
#[inline]
fn bin_of_usable(usable: usize) -> Option<usize> {
    if usable < bin_bound(0) {
        return None;
    }
    Some(match medium_bin(usable + 1) {
        Some((bin, _)) => bin - 1,
        None => MEDIUM_BINS - 1,
    })
}

impl ThreadHeap {
    /// A medium block for a request of `size` bytes in `bin`, from the
    /// cache.
    ///
    /// # Safety
    ///
    /// The caller owns `th`; `bin` is `medium_bin(size)`'s.
    #[inline]
    pub(crate) unsafe fn medium_pop(
        th: *mut ThreadHeap,
        bin: usize,
        size: usize,
    ) -> Option<NonNull<u8>> {
        // SAFETY: the owner alone touches the bins; cached blocks are live
        // medium blocks holding (next, usable) in their first two words.
        unsafe {
            let head = *(*th).medium.get_unchecked(bin);
            let block = NonNull::new(head)?;
            crate::valgrind::defined(head, 2 * size_of::<usize>());
            let usable = head.cast::<usize>().add(1).read();
            *(*th).medium.get_unchecked_mut(bin) = head.cast::<*mut u8>().read();
            bump(&(*th).medium_requested, size);
            bump(&(*th).medium_bytes, usable.wrapping_neg());
            bump(&(*th).medium_blocks, usize::MAX);
            Some(block)
        }
    }

    /// Keeps freed medium block `ptr` (`usable` bytes, requested with
    /// `size`) for reuse; `false` if it does not fit a bin or the cache is
    /// full, and then the caller frees it.
    ///
    /// # Safety
    ///
    /// The caller owns `th`; `ptr` is a live medium block of `th`'s heap
    /// with `usable` usable bytes, not used afterwards if `true` is
    /// returned.
    #[inline]
    pub(crate) unsafe fn medium_push(
        th: *mut ThreadHeap,
        ptr: NonNull<u8>,
        usable: usize,
        size: usize,
    ) -> bool {
        let Some(bin) = bin_of_usable(usable) else {
            return false;
        };
        // SAFETY: as for `medium_pop`; the block is ours to write.
        unsafe {
            let cached = (*th).medium_bytes.load(Relaxed);
            if cached + usable > MEDIUM_CACHE_BYTES {
                return false;
            }
            let p = ptr.as_ptr();
            crate::valgrind::defined(p, 2 * size_of::<usize>());
            p.cast::<*mut u8>().write(*(*th).medium.get_unchecked(bin));
            p.cast::<usize>().add(1).write(usable);
            crate::valgrind::noaccess(p, 2 * size_of::<usize>());
            *(*th).medium.get_unchecked_mut(bin) = p;
            bump(&(*th).medium_requested, size.wrapping_neg());
            (*th).medium_bytes.store(cached + usable, Relaxed);
            bump(&(*th).medium_blocks, 1);
        }
        true
    }

    /// Empties the medium cache, passing each block to `free` (which gives
    /// it back to layer 1, as requested with 0 bytes: the requested bytes
    /// left the counters when it was cached).
    ///
    /// # Safety
    ///
    /// The caller owns `th` (or holds the lock and `th` is an orphan).
    pub(crate) unsafe fn take_medium(th: *mut ThreadHeap, mut free: impl FnMut(NonNull<u8>)) {
        // SAFETY: as for `medium_pop`.
        unsafe {
            for bin in 0..MEDIUM_BINS {
                let mut p = core::mem::replace(&mut (*th).medium[bin], null_mut());
                while let Some(block) = NonNull::new(p) {
                    crate::valgrind::defined(p, 2 * size_of::<usize>());
                    p = p.cast::<*mut u8>().read();
                    free(block);
                }
            }
            (*th).medium_bytes.store(0, Relaxed);
            (*th).medium_blocks.store(0, Relaxed);
        }
    }

    /// The medium cache's counters: (requested delta, usable bytes held,
    /// blocks held).
    ///
    /// # Safety
    ///
    /// `th` is a thread heap from the slab.
    pub(crate) unsafe fn medium_counters(th: *mut ThreadHeap) -> (usize, usize, usize) {
        // SAFETY: slab memory is never unmapped.
        unsafe {
            (
                (*th).medium_requested.load(Relaxed),
                (*th).medium_bytes.load(Relaxed),
                (*th).medium_blocks.load(Relaxed),
            )
        }
    }

    /// Adds `delta` (wrapping) to the owner's requested bytes.
    ///
    /// # Safety
    ///
    /// The caller owns `th`.
    #[inline(always)]
    pub(crate) unsafe fn add_requested(th: *mut ThreadHeap, delta: usize) {
        // SAFETY: `th` is live (slab memory is never unmapped); only the
        // owner writes the counter, so load + store loses no update.
        unsafe { bump(&(*th).requested, delta) }
    }

    /// Adds `delta` (wrapping) to the owner's requested bytes of medium and
    /// huge blocks (summed into layer 1's count by `stats()`).
    ///
    /// # Safety
    ///
    /// The caller owns `th`.
    pub(crate) unsafe fn add_medium_requested(th: *mut ThreadHeap, delta: usize) {
        // SAFETY: as for `add_requested`.
        unsafe { bump(&(*th).medium_requested, delta) }
    }

    /// The owner's requested bytes (wrapping), for `stats()`.
    ///
    /// # Safety
    ///
    /// `th` is a thread heap from the slab.
    pub(crate) unsafe fn requested(th: *mut ThreadHeap) -> usize {
        // SAFETY: slab memory is never unmapped.
        unsafe { (*th).requested.load(Relaxed) }
    }

    /// Pushes block `ptr`, freed by a thread that does not own its pool,
    /// onto owner `th`'s inbox: one successful compare-and-swap.
    ///
    /// # Safety
    ///
    /// `ptr` is a live block of a pool owned by `th`, not used afterwards.
    #[inline]
    pub(crate) unsafe fn push_remote(th: *mut ThreadHeap, ptr: NonNull<u8>) {
        // SAFETY: `th` is live; the block is ours and is given up.
        unsafe { (*th).inbox.0.push(ptr.as_ptr()) }
    }

    /// Frees locally every block on the inbox. Pools that become empty
    /// leave `used` and are returned as a chain through `next`, for the
    /// caller to release under the small-object lock.
    ///
    /// # Safety
    ///
    /// The caller owns `th` (or holds the lock and `th` is an orphan).
    pub(crate) unsafe fn collect(th: *mut ThreadHeap) -> *mut PoolHeader {
        // SAFETY: `th` is live.
        let mut block = unsafe { (*th).inbox.0.take_all() };
        let mut emptied = null_mut::<PoolHeader>();
        while !block.is_null() {
            // SAFETY: inbox blocks are live blocks of pools owned by `th`
            // (invariant); each carries its chunk's provenance, so its
            // arena and pool header are reachable from it.
            unsafe {
                let next = <u8 as Linked>::next(block);
                let arena = block
                    .map_addr(|a| a & !(ARENA_SIZE - 1))
                    .cast::<ArenaHeader>();
                let pool = pool_of(arena, block);
                if (*th).used.push(pool, NonNull::new_unchecked(block)) == Freed::Emptied {
                    (*pool).next = emptied;
                    emptied = pool;
                }
                block = next;
            }
        }
        emptied
    }

    /// Whether `th` has no owner.
    ///
    /// # Safety
    ///
    /// `th` is a thread heap from the slab.
    pub(crate) unsafe fn is_orphan(th: *mut ThreadHeap) -> bool {
        // SAFETY: slab memory is never unmapped. Acquire pairs with the
        // releasing thread's Release, so its last writes are visible.
        unsafe { (*th).token.is_orphan() }
    }

    /// Makes the calling thread the owner of orphan `th`; returns the token.
    ///
    /// # Safety
    ///
    /// `th` is an orphan of a heap whose small-object lock the caller holds.
    pub(crate) unsafe fn adopt(th: *mut ThreadHeap) -> u64 {
        let token = NEXT_TOKEN.fetch_add(1, Relaxed);
        // SAFETY: `th` is live; claims happen under the lock, so no one else
        // adopts it meanwhile.
        unsafe { (*th).token.adopt(token) };
        token
    }

    /// A fresh thread heap from the slab, owned by the calling thread with
    /// the returned token; `None` if the OS refuses memory.
    pub(crate) fn new_owned() -> Option<(*mut ThreadHeap, u64)> {
        let th = SLAB.lock().take()?;
        // SAFETY: a slab slot no heap uses (taken off the free list, or
        // fresh and zeroed). Every field but `token` is written plainly;
        // `token` is only ever written atomically, because a stale cache
        // entry of a dropped heap may still try to release it (its CAS
        // fails: the slot's token is 0, or new).
        unsafe {
            (&raw mut (*th).used).write(UsedPools::new());
            (&raw mut (*th).requested).write(AtomicUsize::new(0));
            (&raw mut (*th).next).write(null_mut());
            (&raw mut (*th).free_next).write(null_mut());
            (&raw mut (*th).medium).write([null_mut(); MEDIUM_BINS]);
            (&raw mut (*th).medium_requested).write(AtomicUsize::new(0));
            (&raw mut (*th).medium_bytes).write(AtomicUsize::new(0));
            (&raw mut (*th).medium_blocks).write(AtomicUsize::new(0));
            (&raw mut (*th).inbox).write(Padded(Inbox::new()));
            Some((th, Self::adopt(th)))
        }
    }

    /// Returns a dropped heap's thread heap to the slab.
    ///
    /// # Safety
    ///
    /// `th`'s heap is being dropped (no thread uses it, its pools are gone);
    /// `th` is not used afterwards except by stale cache entries, whose
    /// releases fail because the token is cleared here.
    pub(crate) unsafe fn recycle(th: *mut ThreadHeap) {
        // SAFETY: `th` is a live slab slot (caller).
        unsafe {
            (*th).token.reset();
            (*th).used.clear();
            (*th).medium = [null_mut(); MEDIUM_BINS];
            (*th).inbox.0.clear();
        }
        SLAB.lock().give_back(th);
    }
}

/// Adds `delta` (wrapping) to a counter only its owner writes: a load and
/// a store, no read-modify-write.
#[inline(always)]
fn bump(counter: &AtomicUsize, delta: usize) {
    counter.store(counter.load(Relaxed).wrapping_add(delta), Relaxed);
}

/// Source of claim tokens; 0 means "orphan", and tokens are never reused.
static NEXT_TOKEN: AtomicU64 = AtomicU64::new(1);

/// The process-wide home of thread heaps: slabs mapped from the OS, never
/// unmapped ([ref:thread-heaps]), and a free list of recycled slots.
struct Slab {
    free: *mut ThreadHeap,
    /// Next never-used slot, and the end of the current slab.
    cursor: *mut ThreadHeap,
    end: usize,
}

// SAFETY: the pointers refer to process-wide slab memory; the slab is only
// reached under its lock.
unsafe impl Send for Slab {}

static SLAB: Mutex<SpinLock, Slab> = Mutex::const_new(
    <SpinLock as parking_lot::lock_api::RawMutex>::INIT,
    Slab {
        free: null_mut(),
        cursor: null_mut(),
        end: 0,
    },
);

/// Takes the slab lock and keeps it (fork handlers).
#[cfg_attr(not(all(unix, not(miri))), allow(dead_code))]
pub(crate) fn lock_slab_for_fork() {
    core::mem::forget(SLAB.lock());
}

/// Releases the slab lock taken by `lock_slab_for_fork`.
///
/// # Safety
///
/// `lock_slab_for_fork` took it, on this thread or in the parent of this
/// single-threaded child.
#[cfg_attr(not(all(unix, not(miri))), allow(dead_code))]
pub(crate) unsafe fn unlock_slab_after_fork() {
    // SAFETY: caller's contract.
    unsafe { SLAB.force_unlock() }
}

/// Bytes mapped per slab.
const SLAB_BYTES: usize = 64 * 1024;

impl Slab {
    fn take(&mut self) -> Option<*mut ThreadHeap> {
        if !self.free.is_null() {
            let th = self.free;
            // SAFETY: slots on the free list are live slab memory.
            self.free = unsafe { (*th).free_next };
            return Some(th);
        }
        if self.cursor.is_null() || self.cursor.addr() + size_of::<ThreadHeap>() > self.end {
            let bytes = SLAB_BYTES.max(page_size());
            let base = OsPages.map(bytes, page_size())?;
            self.cursor = base.as_ptr().cast();
            self.end = base.as_ptr().addr() + bytes;
        }
        let th = self.cursor;
        self.cursor = th.wrapping_add(1);
        Some(th)
    }

    fn give_back(&mut self, th: *mut ThreadHeap) {
        // SAFETY: `th` is a live slab slot no one owns.
        unsafe { (*th).free_next = self.free };
        self.free = th;
    }
}

const _: () = assert!(SLAB_BYTES % core::mem::align_of::<ThreadHeap>() == 0);

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
                release(l.heaps[i].get(), l.tokens[i].get());
                l.keys[i].set(NO_KEY);
                l.heaps[i].set(null_mut());
            }
        });
    }
}

/// Gives up ownership of `th` if the caller still owns it under `token`.
fn release(th: *mut ThreadHeap, token: u64) {
    if !th.is_null() {
        // SAFETY: slab memory is never unmapped. Release: whoever adopts
        // `th` sees every write the owner made. Fails harmlessly if the heap
        // was dropped and the slot recycled (token cleared or new).
        let _ = unsafe { (*th).token.release(token) };
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
    LOCAL
        .try_with(|l| (l.keys[0].get() == key).then(|| l.heaps[0].get()))
        .ok()
        .flatten()
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
                    release(l.heaps[CACHE - 1].get(), l.tokens[CACHE - 1].get());
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
            th
        })
        .unwrap_or(null_mut())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medium_bins_serve_their_requests() {
        let mut last = (0, 0);
        // Every size natively; under Miri, every 61st and the bins' bounds.
        let step = if cfg!(miri) { 61 } else { 1 };
        let sizes = (crate::config::SMALL_REQUEST_THRESHOLD + 1..=MEDIUM_CACHE_MAX)
            .filter(|s| s % step == 0 || medium_bin(*s).unwrap().1 == *s);
        for size in sizes {
            let (bin, bound) = medium_bin(size).unwrap();
            assert!(bin < MEDIUM_BINS);
            assert!(
                bound >= size && bound - size <= size / BIN_STEPS as usize,
                "{size}"
            );
            assert_eq!(bound, bin_bound(bin));
            assert!(bin == last.0 || bin == last.0 + 1, "bins are contiguous");
            assert!(
                bin == 0 || size > bin_bound(bin - 1),
                "{size} fits a smaller bin"
            );
            if bin == last.0 + 1 {
                assert!(last.1 < size);
            }
            last = (bin, bound);
            // A block allocated for the bin goes back to it, and any larger
            // block to a bin whose requests it can serve.
            assert_eq!(bin_of_usable(bound), Some(bin));
            let b = bin_of_usable(bound + 17).unwrap();
            assert!(bin_bound(b) <= bound + 17);
        }
        assert_eq!(last.0, MEDIUM_BINS - 1);
        assert_eq!(medium_bin(crate::config::SMALL_REQUEST_THRESHOLD), None);
        assert_eq!(medium_bin(MEDIUM_CACHE_MAX + 1), None);
        assert_eq!(bin_of_usable(bin_bound(0) - 1), None);
        assert_eq!(bin_of_usable(usize::MAX / 2), Some(MEDIUM_BINS - 1));
    }
}
