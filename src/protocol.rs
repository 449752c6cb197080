//! The lock-free protocols of remote frees and thread heaps
//! ([ref:thread-heaps]), kept apart from the heap so that `loom` can check
//! them over every interleaving (`.ci/loom`, or
//! `RUSTFLAGS="--cfg loom" cargo test --release --lib loom`):
//!
//! * [`RemoteList`]: a pool's blocks freed by threads other than its owner
//!   (free-list sharding, as mimalloc's per-page thread-free lists). Any
//!   thread pushes a block with one successful compare-and-swap on the
//!   pool's own list (Release: the block's link and contents are visible
//!   to whoever takes it), so remote frees of different pools never touch
//!   one line. The list's low bit says the pool is queued for its owner;
//!   the one push that sets it is told so, and queues the pool.
//! * [`Inbox`]: a multi-producer stack drained whole by its consumer. An
//!   owner's inbox of pools with remote blocks: pushed once per pool per
//!   batch of remote frees (by the push that set the queued bit), taken
//!   with one swap (Acquire) on the owner's slow paths. For each pool taken
//!   the owner reads the pool's inbox link, then takes its remote list
//!   (clearing the bit), in that order: once the bit is clear another
//!   thread may queue the pool again, rewriting the link. A push-only stack
//!   drained by swap has no ABA problem: a node is never popped alone, and
//!   a taken node is not pushed again until its owner has processed it.
//! * [`Claim`]: ownership by token. The owner stores its token; at exit it
//!   clears the token with a compare-and-swap (Release: everything it wrote
//!   is visible to an adopter); an adopter sees the orphan with an Acquire
//!   load. A stale release (old token) fails and changes nothing.
//!
//! Built with `--cfg pymalloc_broken_ordering`, both use Relaxed where
//! Release/Acquire are needed; the loom tests then fail, which shows they
//! can catch a wrong ordering.

use core::sync::atomic::Ordering::{self, Relaxed};
#[cfg(not(loom))]
use core::sync::atomic::{AtomicPtr, AtomicU64, fence};
#[cfg(loom)]
use loom::sync::atomic::{AtomicPtr, AtomicU64, fence};

#[cfg(not(pymalloc_broken_ordering))]
const RELEASE: Ordering = Ordering::Release;
#[cfg(not(pymalloc_broken_ordering))]
const ACQUIRE: Ordering = Ordering::Acquire;
#[cfg(not(pymalloc_broken_ordering))]
const ACQ_REL: Ordering = Ordering::AcqRel;
#[cfg(pymalloc_broken_ordering)]
const RELEASE: Ordering = Relaxed;
#[cfg(pymalloc_broken_ordering)]
const ACQUIRE: Ordering = Relaxed;
#[cfg(pymalloc_broken_ordering)]
const ACQ_REL: Ordering = Relaxed;

/// A node that links to the next one through a field of its own (a freed
/// block: its first word).
pub(crate) trait Linked {
    /// Sets the link of `this`.
    ///
    /// # Safety
    ///
    /// `this` is a live node that the caller may write.
    unsafe fn set_next(this: *mut Self, next: *mut Self);

    /// Reads the link of `this`.
    ///
    /// # Safety
    ///
    /// `this` is a live node the caller owns (taken from an inbox).
    unsafe fn next(this: *mut Self) -> *mut Self;
}

/// A freed small block, linked as on its pool's free list (encoded with
/// the `hardened` feature).
impl Linked for u8 {
    unsafe fn set_next(this: *mut Self, next: *mut Self) {
        crate::valgrind::defined(this, size_of::<usize>());
        // SAFETY: a freed block is at least a word long (caller).
        unsafe {
            this.cast::<*mut u8>()
                .write(crate::harden::encode(next, this))
        };
        crate::valgrind::noaccess(this, size_of::<usize>());
    }

    unsafe fn next(this: *mut Self) -> *mut Self {
        crate::valgrind::defined(this, size_of::<usize>());
        // SAFETY: as above.
        let next = crate::harden::decode(unsafe { this.cast::<*mut u8>().read() }, this);
        crate::valgrind::noaccess(this, size_of::<usize>());
        next
    }
}

/// The queued bit of a [`RemoteList`]'s head (nodes are at least
/// 2-aligned).
const QUEUED: usize = 1;

/// A multi-producer stack of nodes, taken whole by its single consumer,
/// whose head carries a *queued* bit: set by a push, cleared by
/// `take_all`. Between the two, the list's holder is queued for the
/// consumer exactly once.
pub(crate) struct RemoteList<T> {
    head: AtomicPtr<T>,
}

impl<T: Linked> RemoteList<T> {
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// Pushes `node` and sets the queued bit. Returns `true` if the bit was
    /// clear: the caller must then queue the list's holder for the
    /// consumer (and is the only one told to).
    ///
    /// # Safety
    ///
    /// `node` is live, at least 2-aligned, owned by the caller, and is
    /// given up: only the list's consumer touches it afterwards.
    #[inline]
    pub(crate) unsafe fn push(&self, node: *mut T) -> bool {
        debug_assert_eq!(node.addr() & QUEUED, 0);
        let tagged = node.map_addr(|a| a | QUEUED);
        let mut head = self.head.load(Relaxed);
        loop {
            // SAFETY: the node is still ours (caller).
            unsafe { T::set_next(node, head.map_addr(|a| a & !QUEUED)) };
            match self
                .head
                .compare_exchange_weak(head, tagged, RELEASE, Relaxed)
            {
                Ok(_) => {
                    let queue = head.addr() & QUEUED == 0;
                    if queue {
                        // The consumer's last `take_all` (which we read
                        // from) finished with the holder's queue link
                        // before it released the bit: order our coming
                        // write of that link after it.
                        fence(ACQUIRE);
                    }
                    return queue;
                }
                Err(now) => head = now,
            }
        }
    }

    /// Takes every node pushed so far, as a list linked through `next`
    /// (null if none), and clears the queued bit. Acquire: the pushers'
    /// nodes are visible; Release: whatever the consumer did with the
    /// holder's queue link before is ordered before the next queuer's.
    #[inline]
    pub(crate) fn take_all(&self) -> *mut T {
        self.head
            .swap(core::ptr::null_mut(), ACQ_REL)
            .map_addr(|a| a & !QUEUED)
    }
}

/// A multi-producer stack emptied all at once by its single consumer.
pub(crate) struct Inbox<T> {
    head: AtomicPtr<T>,
}

impl<T: Linked> Inbox<T> {
    pub(crate) fn new() -> Self {
        Self {
            head: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// Pushes `node`.
    ///
    /// # Safety
    ///
    /// `node` is live, owned by the caller, and is given up: only the
    /// inbox's consumer touches it afterwards.
    #[inline]
    pub(crate) unsafe fn push(&self, node: *mut T) {
        let mut head = self.head.load(Relaxed);
        loop {
            // SAFETY: the node is still ours (caller).
            unsafe { T::set_next(node, head) };
            match self
                .head
                .compare_exchange_weak(head, node, RELEASE, Relaxed)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Takes every node pushed so far, as a list linked through `next`
    /// (null if none).
    #[inline]
    pub(crate) fn take_all(&self) -> *mut T {
        self.head.swap(core::ptr::null_mut(), ACQUIRE)
    }

    /// Whether nothing was pushed since the last `take_all` (a hint: a push
    /// may land right after).
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.head.load(Relaxed).is_null()
    }

    /// Forgets the nodes (their memory is being released with the heap).
    pub(crate) fn clear(&self) {
        self.head.store(core::ptr::null_mut(), Relaxed);
    }
}

/// Ownership of a thread heap by a token; 0 means orphan. All-zero memory
/// is a valid (orphan) claim: fresh slab slots are used as they are.
pub(crate) struct Claim {
    token: AtomicU64,
}

impl Claim {
    #[cfg(loom)]
    pub(crate) fn new() -> Self {
        Self {
            token: AtomicU64::new(0),
        }
    }

    /// Whether no thread owns it; if so, the last owner's writes are
    /// visible to the caller.
    pub(crate) fn is_orphan(&self) -> bool {
        self.token.load(ACQUIRE) == 0
    }

    /// Takes ownership of an orphan. The caller excludes other adopters
    /// (the heap's lock).
    pub(crate) fn adopt(&self, token: u64) {
        debug_assert_ne!(token, 0);
        self.token.store(token, Relaxed);
    }

    /// Gives up ownership if still held under `token`; publishes the
    /// owner's writes to the next adopter.
    pub(crate) fn release(&self, token: u64) -> bool {
        self.token
            .compare_exchange(token, 0, RELEASE, Relaxed)
            .is_ok()
    }

    /// Makes it an orphan whatever its token (the heap is being dropped).
    pub(crate) fn reset(&self) {
        self.token.store(0, Relaxed);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::Arc;
    use loom::thread;

    /// A freed block in the model: a link and contents written by the
    /// freeing thread before the push.
    struct Node {
        next: UnsafeCell<*mut Node>,
        value: UnsafeCell<u64>,
    }

    impl Linked for Node {
        unsafe fn set_next(this: *mut Self, next: *mut Self) {
            // SAFETY: caller's contract; loom checks the access.
            unsafe { (*this).next.with_mut(|p| *p = next) }
        }
        unsafe fn next(this: *mut Self) -> *mut Self {
            // SAFETY: caller's contract; loom checks the access.
            unsafe { (*this).next.with(|p| *p) }
        }
    }

    fn node(value: u64) -> *mut Node {
        Box::into_raw(Box::new(Node {
            next: UnsafeCell::new(core::ptr::null_mut()),
            value: UnsafeCell::new(value),
        }))
    }

    /// Drains `inbox`, checking each node's contents, freeing it; returns
    /// the sum of the values.
    fn drain(inbox: &Inbox<Node>) -> u64 {
        let mut sum = 0;
        let mut p = inbox.take_all();
        while !p.is_null() {
            // SAFETY: taken nodes are ours; loom checks that the pusher's
            // writes happen before these reads.
            unsafe {
                let next = Node::next(p);
                sum += (*p).value.with(|v| *v);
                drop(Box::from_raw(p));
                p = next;
            }
        }
        sum
    }

    struct Shared {
        inbox: Inbox<Node>,
        claim: Claim,
        /// The owner's private state, handed over with ownership.
        state: UnsafeCell<u64>,
    }

    // SAFETY: the model's threads follow the protocols under test; loom
    // reports any access they fail to order.
    unsafe impl Send for Shared {}
    // SAFETY: as above.
    unsafe impl Sync for Shared {}

    /// Two threads free into one owner's inbox while the owner drains it:
    /// every node arrives exactly once, with its contents.
    #[test]
    fn loom_two_remote_frees_while_the_owner_drains() {
        loom::model(|| {
            let inbox = Arc::new(Inbox::<Node>::new());
            let pushers: Vec<_> = [1u64, 10]
                .into_iter()
                .map(|v| {
                    let inbox = inbox.clone();
                    thread::spawn(move || {
                        let n = node(v);
                        // SAFETY: a fresh node, given up.
                        unsafe { inbox.push(n) };
                    })
                })
                .collect();
            let mut got = drain(&inbox);
            for p in pushers {
                p.join().unwrap();
            }
            got += drain(&inbox);
            assert_eq!(got, 11);
        });
    }

    /// A pool in the model: its remote list and its link on the owner's
    /// inbox of pools.
    struct Pool {
        remote: RemoteList<Node>,
        pending_next: UnsafeCell<*mut Pool>,
    }

    impl Linked for Pool {
        unsafe fn set_next(this: *mut Self, next: *mut Self) {
            // SAFETY: caller's contract; loom checks the access.
            unsafe { (*this).pending_next.with_mut(|p| *p = next) }
        }
        unsafe fn next(this: *mut Self) -> *mut Self {
            // SAFETY: caller's contract; loom checks the access.
            unsafe { (*this).pending_next.with(|p| *p) }
        }
    }

    struct Owner {
        pending: Inbox<Pool>,
        pools: [Pool; 2],
    }

    // SAFETY: as for `Shared`.
    unsafe impl Send for Owner {}
    // SAFETY: as above.
    unsafe impl Sync for Owner {}

    /// A remote free as the heap does it: onto the pool's list, and the
    /// pool onto the owner's inbox if that push queued it.
    fn free_remote(owner: &Owner, pool: usize, value: u64) {
        let p = (&raw const owner.pools[pool]).cast_mut();
        // SAFETY: a fresh node, given up; the pool is queued only by the
        // push that set its bit.
        unsafe {
            if owner.pools[pool].remote.push(node(value)) {
                owner.pending.push(p);
            }
        }
    }

    /// The owner's collection: every pending pool's link read before its
    /// remote list is taken. Returns the sum of the values.
    fn collect(owner: &Owner) -> u64 {
        let mut sum = 0;
        let mut p = owner.pending.take_all();
        while !p.is_null() {
            // SAFETY: a taken pool's link is ours to read until its list is
            // taken (loom checks that no queuer writes it meanwhile).
            unsafe {
                let next = Pool::next(p);
                let mut b = (*p).remote.take_all();
                while !b.is_null() {
                    let after = Node::next(b);
                    sum += (*b).value.with(|v| *v);
                    drop(Box::from_raw(b));
                    b = after;
                }
                p = next;
            }
        }
        sum
    }

    /// Two threads free blocks of the owner's pools (both into one pool,
    /// or one each) while the owner collects: every block arrives exactly
    /// once, with its contents, and a pool is never queued twice at once
    /// (loom would see two writers of its link).
    #[test]
    fn loom_remote_frees_into_pools_while_the_owner_collects() {
        for (first, second) in [(0, 0), (0, 1)] {
            loom::model(move || {
                let pool = || Pool {
                    remote: RemoteList::new(),
                    pending_next: UnsafeCell::new(core::ptr::null_mut()),
                };
                let owner = Arc::new(Owner {
                    pending: Inbox::new(),
                    pools: [pool(), pool()],
                });
                let freers: Vec<_> = [(first, 1u64), (second, 10)]
                    .into_iter()
                    .map(|(p, v)| {
                        let owner = owner.clone();
                        thread::spawn(move || free_remote(&owner, p, v))
                    })
                    .collect();
                let mut got = collect(&owner);
                for f in freers {
                    f.join().unwrap();
                }
                got += collect(&owner);
                assert_eq!(got, 11);
                assert!(owner.pending.take_all().is_null());
            });
        }
    }

    /// The owner exits (releases its claim) while a remote free is in
    /// flight; an adopter takes over the owner's state and collects every
    /// node, whichever order the push, the release and the adoption take.
    #[test]
    fn loom_owner_exits_while_a_remote_free_is_in_flight() {
        loom::model(|| {
            let shared = Arc::new(Shared {
                inbox: Inbox::new(),
                claim: Claim::new(),
                state: UnsafeCell::new(0),
            });
            shared.claim.adopt(1);
            let owner = {
                let shared = shared.clone();
                thread::spawn(move || {
                    let sum = drain(&shared.inbox);
                    // SAFETY: the owner alone touches `state` while it
                    // holds the claim.
                    unsafe { shared.state.with_mut(|s| *s += 100 + sum) };
                    assert!(shared.claim.release(1));
                })
            };
            let remote = {
                let shared = shared.clone();
                thread::spawn(move || {
                    // SAFETY: a fresh node, given up.
                    unsafe { shared.inbox.push(node(7)) };
                })
            };
            // The adopter (another thread) waits for the orphan.
            let adopter = {
                let shared = shared.clone();
                thread::spawn(move || {
                    while !shared.claim.is_orphan() {
                        thread::yield_now();
                    }
                    shared.claim.adopt(2);
                    assert!(!shared.claim.release(1), "a stale release must fail");
                    // SAFETY: adopted: the previous owner's writes are
                    // visible (loom checks it).
                    let before = unsafe { shared.state.with(|s| *s) };
                    (before, drain(&shared.inbox))
                })
            };
            owner.join().unwrap();
            remote.join().unwrap();
            let (before, collected) = adopter.join().unwrap();
            let late = drain(&shared.inbox);
            // The node was collected by the owner (in `before`) or by the
            // adopter, exactly once.
            assert_eq!(before - 100 + collected + late, 7);
        });
    }
}
