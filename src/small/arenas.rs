//! [`Arenas`]: a heap's arenas that have free pools, fullest first, and its
//! spare empty arenas.
//!
//! # Usable arenas [tag:usable-arenas]
//!
//! Arenas with a free pool are kept on the *usable* list, sorted by
//! `nfreepools` ascending: new pools come from the fullest arena, so nearly
//! empty arenas drain and can be returned. As in CPython (`nfp2lasta`),
//! `last_with[n]` points at the last arena on the list with
//! `nfreepools == n`, so keeping the order costs O(1) per transition: an
//! arena whose count changes by one moves to the edge of its neighbouring
//! group. An arena whose pools are all empty leaves the list: it is kept as
//! a spare (up to `config::SPARE_ARENAS`), or given back to layer 1.

use crate::config::{SPARE_ARENAS, USABLE_POOLS_PER_ARENA};
use crate::small::arena::Arena;
use core::ptr::null_mut;

/// The usable list and the spares. Lives under the heap's small-object
/// lock.
///
/// Invariants: the usable list holds exactly the arenas with
/// `0 < nfreepools < USABLE_POOLS_PER_ARENA` that are not being changed,
/// doubly linked through `next`/`prev`, sorted by `nfreepools` ascending;
/// `last_with[n]` is the last of them with `nfreepools == n` (null if
/// none); the spares (at most `SPARE_ARENAS`) have every pool empty and are
/// linked through `next`.
pub(crate) struct Arenas {
    /// Head of the usable list: the fullest arena with a free pool.
    usable: *mut Arena,
    last_with: [*mut Arena; USABLE_POOLS_PER_ARENA + 1],
    spare: *mut Arena,
    spares: usize,
}

impl Arenas {
    pub(crate) const fn new() -> Self {
        Self {
            usable: null_mut(),
            last_with: [null_mut(); USABLE_POOLS_PER_ARENA + 1],
            spare: null_mut(),
            spares: 0,
        }
    }

    /// The fullest usable arena, from which the next pool comes; null if no
    /// arena has a free pool.
    pub(crate) fn fullest(&self) -> *mut Arena {
        self.usable
    }

    /// Puts `arena`, on no list, with `0 < nfreepools`, on the usable list
    /// at its place.
    ///
    /// # Safety
    ///
    /// `arena` is live and on no list; every arena on the list is live.
    pub(crate) unsafe fn insert(&mut self, arena: *mut Arena) {
        // SAFETY: caller's contract.
        let nf = unsafe { Arena::free_pools(arena) };
        debug_assert!(nf > 0);
        // Place it right after the last arena with fewer free pools.
        let after = (1..nf)
            .rev()
            .map(|n| self.last_with[n])
            .find(|a| !a.is_null())
            .unwrap_or(null_mut());
        // SAFETY: `after` is null or a live arena on the list.
        unsafe { self.insert_after(arena, after) };
        if self.last_with[nf].is_null() {
            self.last_with[nf] = arena;
        }
    }

    /// The head arena gave out a pool (its `nfreepools` went from k to
    /// k − 1, already counted by `Arena::take_pool`). It stays at the head,
    /// or leaves the list when it has no free pool left.
    ///
    /// # Safety
    ///
    /// `arena` is the head of the usable list; list members are live.
    pub(crate) unsafe fn lost_pool(&mut self, arena: *mut Arena) {
        debug_assert_eq!(arena, self.usable);
        // SAFETY: caller's contract.
        unsafe {
            let k = Arena::free_pools(arena) + 1;
            if self.last_with[k] == arena {
                let next = (*arena).next;
                self.last_with[k] = if !next.is_null() && Arena::free_pools(next) == k {
                    next
                } else {
                    null_mut()
                };
            }
            if k - 1 == 0 {
                self.unlink(arena);
            } else {
                // The head had the fewest free pools, so no arena had k − 1.
                debug_assert!(self.last_with[k - 1].is_null());
                self.last_with[k - 1] = arena;
            }
        }
    }

    /// `arena` got an empty pool back (`nfreepools` went from k to k + 1,
    /// already counted by `Arena::return_pool`): it moves towards the tail.
    /// Returns `true` when every pool of it is now empty: it has left the
    /// list, and the caller keeps it as a spare or gives it back.
    ///
    /// # Safety
    ///
    /// `arena` is live, on the list unless it was full (k == 0); list
    /// members are live.
    pub(crate) unsafe fn gained_pool(&mut self, arena: *mut Arena) -> bool {
        // SAFETY: caller's contract.
        unsafe {
            let k = Arena::free_pools(arena) - 1;
            if k == 0 {
                // It was full, hence on no list.
                self.insert(arena);
                return false;
            }
            // Leave the k group.
            let prev = (*arena).prev;
            let last_k = self.last_with[k];
            if last_k == arena {
                self.last_with[k] = if !prev.is_null() && Arena::free_pools(prev) == k {
                    prev
                } else {
                    null_mut()
                };
            }
            if k + 1 == USABLE_POOLS_PER_ARENA {
                self.unlink(arena);
                return true;
            }
            if last_k != arena {
                // Move to just after the last of the k group: the front of
                // the k + 1 group.
                self.unlink(arena);
                self.insert_after(arena, last_k);
            }
            if self.last_with[k + 1].is_null() {
                self.last_with[k + 1] = arena;
            }
            false
        }
    }

    /// Keeps wholly empty `arena`, on no list, as a spare; `false` if there
    /// are `SPARE_ARENAS` already.
    ///
    /// # Safety
    ///
    /// `arena` is live, every pool of it empty, on no list.
    pub(crate) unsafe fn push_spare(&mut self, arena: *mut Arena) -> bool {
        if self.spares >= SPARE_ARENAS {
            return false;
        }
        // SAFETY: caller's contract.
        unsafe { (*arena).next = self.spare };
        self.spare = arena;
        self.spares += 1;
        true
    }

    /// Takes a spare arena off the spares.
    pub(crate) fn pop_spare(&mut self) -> Option<*mut Arena> {
        if self.spare.is_null() {
            return None;
        }
        let arena = self.spare;
        // SAFETY: spares are live, linked through `next` (invariant).
        unsafe {
            self.spare = (*arena).next;
            (*arena).next = null_mut();
        }
        self.spares -= 1;
        Some(arena)
    }

    /// Whether `arena` is one of the spares.
    pub(crate) fn is_spare(&self, arena: *mut Arena) -> bool {
        let mut a = self.spare;
        while !a.is_null() {
            if a == arena {
                return true;
            }
            // SAFETY: spares are live, linked through `next`.
            a = unsafe { (*a).next };
        }
        false
    }

    /// # Safety
    ///
    /// `arena` is live and on no list; `after` is null (insert at head) or on
    /// the list.
    unsafe fn insert_after(&mut self, arena: *mut Arena, after: *mut Arena) {
        // SAFETY: caller's contract.
        unsafe {
            let next = if after.is_null() {
                self.usable
            } else {
                (*after).next
            };
            (*arena).prev = after;
            (*arena).next = next;
            if !next.is_null() {
                (*next).prev = arena;
            }
            if after.is_null() {
                self.usable = arena;
            } else {
                (*after).next = arena;
            }
        }
    }

    /// # Safety
    ///
    /// `arena` is on the usable list.
    unsafe fn unlink(&mut self, arena: *mut Arena) {
        // SAFETY: caller's contract.
        unsafe {
            let (next, prev) = ((*arena).next, (*arena).prev);
            if !next.is_null() {
                (*next).prev = prev;
            }
            if prev.is_null() {
                self.usable = next;
            } else {
                (*prev).next = next;
            }
            (*arena).next = null_mut();
            (*arena).prev = null_mut();
        }
    }

    /// Checks the order of the usable list, `last_with`, the spares, and
    /// every usable or spare arena's own accounting (with `check_arena`);
    /// panics on a violation.
    ///
    /// # Safety
    ///
    /// Every arena on the lists is live and quiescent.
    pub(crate) unsafe fn validate(&self, mut check_arena: impl FnMut(*mut Arena)) {
        let mut a = self.usable;
        let mut prev: *mut Arena = null_mut();
        // SAFETY: caller's contract.
        unsafe {
            while !a.is_null() {
                assert_eq!((*a).prev, prev, "usable arenas: broken link at {a:p}");
                let nf = Arena::free_pools(a);
                assert!(
                    nf > 0 && nf < USABLE_POOLS_PER_ARENA,
                    "usable arena {a:p} with {nf} free pools"
                );
                if !prev.is_null() {
                    assert!(Arena::free_pools(prev) <= nf, "usable arenas out of order");
                }
                let next = (*a).next;
                let is_last = next.is_null() || Arena::free_pools(next) != nf;
                assert_eq!(self.last_with[nf] == a, is_last, "last_with[{nf}] wrong");
                check_arena(a);
                prev = a;
                a = next;
            }
            for (n, &last) in self.last_with.iter().enumerate() {
                if !last.is_null() {
                    assert_eq!(Arena::free_pools(last), n, "last_with[{n}] wrong");
                }
            }
            let mut spares = 0;
            let mut s = self.spare;
            while !s.is_null() {
                assert_eq!(
                    Arena::free_pools(s),
                    USABLE_POOLS_PER_ARENA,
                    "spare arena {s:p} is not empty"
                );
                check_arena(s);
                spares += 1;
                s = (*s).next;
            }
            assert_eq!(spares, self.spares, "spare count wrong");
            assert!(spares <= SPARE_ARENAS);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Arena headers in ordinary memory: the list logic reads and writes
    /// only `nfreepools`, `next` and `prev`.
    fn fake_arenas(n: usize) -> Vec<Arena> {
        (0..n)
            .map(|_| {
                // SAFETY: an all-zero `Arena` is valid (null pointers, zero
                // counts, chunk kind 0 = Arena).
                let mut a: Arena = unsafe { core::mem::zeroed() };
                a.nfreepools = USABLE_POOLS_PER_ARENA;
                a.ncarved = USABLE_POOLS_PER_ARENA; // no pool ever carved here
                a
            })
            .collect()
    }

    /// Raw pointers to each fake arena, all derived from the vector's
    /// buffer.
    fn pointers(boxes: &mut [Arena]) -> Vec<*mut Arena> {
        let base = boxes.as_mut_ptr();
        (0..boxes.len()).map(|i| base.wrapping_add(i)).collect()
    }

    /// The usable list as (index of the arena, its free pools), head first.
    fn order(arenas: &Arenas, all: &[*mut Arena]) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut a = arenas.fullest();
        while !a.is_null() {
            let i = all.iter().position(|&x| x == a).unwrap();
            // SAFETY: fake arenas live for the test.
            unsafe {
                out.push((i, Arena::free_pools(a)));
                a = (*a).next;
            }
        }
        out
    }

    fn check(arenas: &Arenas) {
        // SAFETY: fake arenas live for the test; no pool lists to walk.
        unsafe { arenas.validate(|_| {}) };
    }

    #[test]
    fn pools_come_from_the_fullest_arena_and_order_is_kept() {
        let mut boxes = fake_arenas(3);
        let mut all = pointers(&mut boxes);
        let mut arenas = Arenas::new();
        // SAFETY: the fake arenas live for the whole test; each call's
        // precondition is noted.
        unsafe {
            // Three arenas with 5, 2 and 9 free pools, inserted in that order.
            for (&a, nf) in all.iter().zip([5, 2, 9]) {
                (*a).nfreepools = nf;
                arenas.insert(a);
                check(&arenas);
            }
            assert_eq!(order(&arenas, &all), [(1, 2), (0, 5), (2, 9)]);
            // The head gives out its two pools, then leaves the list.
            for left in [1, 0] {
                assert_eq!(arenas.fullest(), all[1]);
                (*all[1]).nfreepools -= 1;
                arenas.lost_pool(all[1]);
                check(&arenas);
                assert_eq!(Arena::free_pools(all[1]), left);
            }
            assert_eq!(order(&arenas, &all), [(0, 5), (2, 9)]);
            // A full arena that gets a pool back rejoins at the head.
            (*all[1]).nfreepools += 1;
            assert!(!arenas.gained_pool(all[1]));
            check(&arenas);
            assert_eq!(order(&arenas, &all), [(1, 1), (0, 5), (2, 9)]);
            // An arena moving past its group keeps the list sorted.
            for _ in 0..5 {
                (*all[0]).nfreepools += 1;
                assert!(!arenas.gained_pool(all[0]));
                check(&arenas);
            }
            assert_eq!(order(&arenas, &all), [(1, 1), (2, 9), (0, 10)]);
            // The last empty pool coming back takes the arena off the list.
            (*all[2]).nfreepools = USABLE_POOLS_PER_ARENA - 1;
            (*all[0]).nfreepools = USABLE_POOLS_PER_ARENA - 2;
            // Re-sort by removing and inserting (counts changed by more
            // than one above, which transitions never do).
            for &a in &all[..] {
                if arenas.fullest() == a || !(*a).prev.is_null() {
                    arenas.unlink(a);
                }
            }
            arenas.last_with = [null_mut(); USABLE_POOLS_PER_ARENA + 1];
            for &a in &all {
                arenas.insert(a);
            }
            check(&arenas);
            (*all[2]).nfreepools += 1;
            assert!(
                arenas.gained_pool(all[2]),
                "a wholly empty arena leaves the list"
            );
            check(&arenas);
            assert_eq!(
                order(&arenas, &all),
                [(1, 1), (0, USABLE_POOLS_PER_ARENA - 2)]
            );
        }
    }

    #[test]
    fn random_transitions_keep_every_invariant() {
        let mut boxes = fake_arenas(6);
        let all = pointers(&mut boxes);
        let mut arenas = Arenas::new();
        let mut on_list = [false; 6];
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let steps = if cfg!(miri) { 300 } else { 20_000 };
        for _ in 0..steps {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let i = (rng % 6) as usize;
            let a = all[i];
            // SAFETY: the fake arenas live for the whole test; an arena is
            // on the list iff `on_list` says so, and only the head loses a
            // pool, as in the heap.
            unsafe {
                if rng & 0x100 == 0 {
                    let head = arenas.fullest();
                    if head.is_null() {
                        continue;
                    }
                    let h = all.iter().position(|&x| x == head).unwrap();
                    (*head).nfreepools -= 1;
                    arenas.lost_pool(head);
                    on_list[h] = Arena::free_pools(head) > 0;
                } else if Arena::free_pools(a) < USABLE_POOLS_PER_ARENA {
                    if !on_list[i] && Arena::free_pools(a) != 0 {
                        continue; // a spare-to-be: not part of this model
                    }
                    (*a).nfreepools += 1;
                    let emptied = arenas.gained_pool(a);
                    assert_eq!(emptied, Arena::free_pools(a) == USABLE_POOLS_PER_ARENA);
                    on_list[i] = !emptied;
                    if emptied {
                        // Start it over as a fresh arena with one pool out.
                        (*a).nfreepools = USABLE_POOLS_PER_ARENA - 1;
                        arenas.insert(a);
                        on_list[i] = true;
                    }
                } else {
                    // A wholly empty arena (initially): make it usable.
                    (*a).nfreepools = USABLE_POOLS_PER_ARENA - 1;
                    arenas.insert(a);
                    on_list[i] = true;
                }
            }
            check(&arenas);
            let listed = order(&arenas, &all);
            assert_eq!(listed.len(), on_list.iter().filter(|&&x| x).count());
        }
    }

    #[test]
    #[should_panic(expected = "out of order")]
    fn validate_catches_a_misplaced_arena() {
        let mut boxes = fake_arenas(2);
        let mut all = pointers(&mut boxes);
        let mut arenas = Arenas::new();
        // SAFETY: the fake arenas live for the test.
        unsafe {
            (*all[0]).nfreepools = 3;
            (*all[1]).nfreepools = 7;
            arenas.insert(all[0]);
            arenas.insert(all[1]);
            check(&arenas);
            // A count changed behind the list's back.
            (*all[1]).nfreepools = 2;
            check(&arenas);
        }
    }

    #[test]
    fn spares_are_bounded() {
        let mut boxes = fake_arenas(SPARE_ARENAS + 1);
        let all = pointers(&mut boxes);
        let mut arenas = Arenas::new();
        // SAFETY: the fake arenas are empty and live for the test.
        unsafe {
            for &a in &all[..SPARE_ARENAS] {
                assert!(arenas.push_spare(a));
            }
            assert!(!arenas.push_spare(all[SPARE_ARENAS]));
        }
        check(&arenas);
        assert!(arenas.is_spare(all[0]) && !arenas.is_spare(all[SPARE_ARENAS]));
        let mut taken = 0;
        while arenas.pop_spare().is_some() {
            taken += 1;
        }
        assert_eq!(taken, SPARE_ARENAS);
    }
}
