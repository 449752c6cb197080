//! [`PurgeQueue`]: empty pools whose pages are still mapped, oldest first.
//!
//! # Returning memory
//!
//! A pool that becomes empty joins the queue. On later pool transitions,
//! pools empty for `config::PURGE_DELAY` get their pages purged
//! (`PageSource::purge`): churn at a steady size reuses pools within the
//! delay without a system call, and RSS follows frees without a background
//! thread. A pool taken for reuse, or an arena given back, leaves the queue
//! first. `trim` purges the whole queue at once.

use crate::small::pool::Pool;
use core::ptr::null_mut;
use std::time::{Duration, Instant};

/// The queue, doubly linked through the pools' `purge_next`/`purge_prev`.
/// Lives under the heap's small-object lock.
///
/// Invariants: a pool is on the queue iff its `emptied_at` is `Some`; every
/// queued pool is empty and owned by no one; `emptied_at` never decreases
/// from head to tail.
pub(crate) struct PurgeQueue {
    head: *mut Pool,
    tail: *mut Pool,
    /// Pools queued.
    len: usize,
    /// The fewest pools queued since `reset_low_water`: that many were
    /// not needed over the whole interval.
    low_water: usize,
}

impl PurgeQueue {
    pub(crate) const fn new() -> Self {
        Self {
            head: null_mut(),
            tail: null_mut(),
            len: 0,
            low_water: 0,
        }
    }

    /// Puts empty pool `pool` at the tail, emptied at `now`.
    ///
    /// # Safety
    ///
    /// `pool` is a live empty pool not on the queue, owned by no one;
    /// `now` is no earlier than any queued pool's time.
    pub(crate) unsafe fn push(&mut self, pool: *mut Pool, now: Instant) {
        // SAFETY: caller's contract; `tail` is null or a live queued pool.
        unsafe {
            (*pool).emptied_at = Some(now);
            (*pool).purge_next = null_mut();
            (*pool).purge_prev = self.tail;
            if self.tail.is_null() {
                self.head = pool;
            } else {
                (*self.tail).purge_next = pool;
            }
        }
        self.tail = pool;
        self.len += 1;
    }

    /// Takes `pool` off the queue if it is on it.
    ///
    /// # Safety
    ///
    /// `pool` is a live pool of this heap.
    pub(crate) unsafe fn remove(&mut self, pool: *mut Pool) {
        // SAFETY: `pool` is live; if queued, its queue neighbours are live
        // queued pools.
        unsafe {
            if (*pool).emptied_at.take().is_none() {
                return;
            }
            let (next, prev) = ((*pool).purge_next, (*pool).purge_prev);
            if next.is_null() {
                self.tail = prev;
            } else {
                (*next).purge_prev = prev;
            }
            if prev.is_null() {
                self.head = next;
            } else {
                (*prev).purge_next = next;
            }
        }
        self.len -= 1;
        self.low_water = self.low_water.min(self.len);
    }

    /// The fewest pools queued since the last `reset_low_water`.
    pub(crate) fn low_water(&self) -> usize {
        self.low_water
    }

    /// Starts a new interval for `low_water`.
    pub(crate) fn reset_low_water(&mut self) {
        self.low_water = self.len;
    }

    /// Takes the oldest pool off the queue if it has been empty for at
    /// least `delay` at `now` (`None`: take it whatever its age).
    pub(crate) fn pop_expired(
        &mut self,
        now: Instant,
        delay: Option<Duration>,
    ) -> Option<*mut Pool> {
        // SAFETY: queued pools are live (invariant).
        let emptied = unsafe { self.head.as_ref() }?.emptied_at?;
        if let Some(delay) = delay
            && now.saturating_duration_since(emptied) < delay
        {
            return None;
        }
        let pool = self.head;
        // SAFETY: the head is a live queued pool.
        unsafe { self.remove(pool) };
        Some(pool)
    }

    /// Whether no pool waits.
    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// Checks the invariants; panics on a violation. Returns the queue's
    /// length.
    ///
    /// # Safety
    ///
    /// Every queued pool is live and quiescent.
    pub(crate) unsafe fn validate(&self) -> usize {
        let mut len = 0;
        let mut q = self.head;
        let mut prev_q: *mut Pool = null_mut();
        // SAFETY: caller's contract.
        unsafe {
            while !q.is_null() {
                let pool = &*q;
                assert_eq!(pool.purge_prev, prev_q, "purge queue broken at {q:p}");
                assert_eq!(
                    Pool::in_use(q),
                    0,
                    "non-empty pool {q:p} on the purge queue"
                );
                assert!(
                    Pool::owner(q).is_null(),
                    "owned pool {q:p} on the purge queue"
                );
                let emptied = pool
                    .emptied_at
                    .unwrap_or_else(|| panic!("queued pool {q:p} without a time"));
                if let Some(prev) = prev_q.as_ref() {
                    assert!(
                        prev.emptied_at.is_some_and(|t| t <= emptied),
                        "purge queue out of order at {q:p}"
                    );
                }
                prev_q = q;
                q = pool.purge_next;
                len += 1;
            }
        }
        assert_eq!(self.tail, prev_q, "purge queue's tail is not its last pool");
        assert_eq!(self.len, len, "purge queue's length is off");
        assert!(
            self.low_water <= len,
            "purge queue's low water is above its length"
        );
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::MaybeUninit;

    fn pools(n: usize) -> Vec<MaybeUninit<Pool>> {
        (0..n)
            .map(|_| {
                let mut p = MaybeUninit::<Pool>::uninit();
                // SAFETY: the header is ours; it describes no real blocks,
                // which the queue never touches.
                unsafe {
                    Pool::init(p.as_mut_ptr(), null_mut(), 0, null_mut());
                }
                p
            })
            .collect()
    }

    #[test]
    fn expired_pools_leave_oldest_first() {
        let mut boxes = pools(4);
        let all: Vec<*mut Pool> = {
            let base = boxes.as_mut_ptr().cast::<Pool>();
            (0..boxes.len()).map(|i| base.wrapping_add(i)).collect()
        };
        let mut q = PurgeQueue::new();
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        // SAFETY: the fake pools live for the test and are empty.
        unsafe {
            for (i, &p) in all.iter().enumerate() {
                q.push(p, t0 + ms(10 * i as u64));
                q.validate();
            }
            // A pool taken for reuse leaves from the middle.
            q.remove(all[1]);
            q.validate();
            q.remove(all[1]); // not queued any more: no effect
            q.validate();
        }
        // The low water: the fewest queued since the reset.
        assert_eq!(q.low_water(), 0);
        q.reset_low_water();
        assert_eq!(q.low_water(), 3);
        let delay = Some(ms(15));
        assert_eq!(q.pop_expired(t0 + ms(14), delay), None);
        assert_eq!(q.pop_expired(t0 + ms(40), delay), Some(all[0]));
        assert_eq!(q.pop_expired(t0 + ms(40), delay), Some(all[2]));
        assert_eq!(q.low_water(), 1);
        assert_eq!(
            q.pop_expired(t0 + ms(40), delay),
            None,
            "all[3] is 10 ms old"
        );
        assert_eq!(q.pop_expired(t0, None), Some(all[3]));
        assert!(q.is_empty());
        // SAFETY: as above.
        unsafe { q.validate() };
    }

    #[test]
    #[should_panic(expected = "non-empty pool")]
    fn validate_catches_a_live_pool_on_the_queue() {
        let mut boxes = pools(2);
        let all: Vec<*mut Pool> = {
            let base = boxes.as_mut_ptr().cast::<Pool>();
            (0..boxes.len()).map(|i| base.wrapping_add(i)).collect()
        };
        let mut q = PurgeQueue::new();
        // SAFETY: the fake pools live for the test.
        unsafe {
            q.push(all[0], Instant::now());
            q.push(all[1], Instant::now());
            // A pool reused without leaving the queue first.
            (*all[1])
                .ref_count
                .store(1, core::sync::atomic::Ordering::Relaxed);
            q.validate();
        }
    }

    #[test]
    #[should_panic(expected = "purge queue broken")]
    fn validate_catches_a_broken_link() {
        let mut boxes = pools(3);
        let mut all: Vec<*mut Pool> = {
            let base = boxes.as_mut_ptr().cast::<Pool>();
            (0..boxes.len()).map(|i| base.wrapping_add(i)).collect()
        };
        let mut q = PurgeQueue::new();
        // SAFETY: the fake pools live for the test.
        unsafe {
            for &p in &all {
                q.push(p, Instant::now());
            }
            (*all[2]).purge_prev = all[0];
            q.validate();
        }
    }
}
