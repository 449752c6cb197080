//! Fault injection: a page source that refuses its N-th request, for every N
//! a workload makes. Each refusal must surface as a clean `AllocError`; the
//! heap must stay consistent (`validate()`), usable, and leak nothing.

use allocator_api2::alloc::Allocator;
use core::alloc::Layout;
use core::ptr::NonNull;
use pymalloc::{OsPages, PageSource, PrivateHeap};
use std::cell::Cell;

/// Refuses the `fail_at`-th `map` call (1-based; 0: never). Counts maps and
/// unmaps so leaks show.
#[derive(Default)]
struct FailingPages {
    calls: Cell<usize>,
    fail_at: Cell<usize>,
    mapped: Cell<usize>,
    unmapped: Cell<usize>,
    /// The refused request, `(size, align)`.
    refused: Cell<Option<(usize, usize)>>,
    /// The heap asked again for the refused request at once (after giving
    /// back its cached huge mappings) and got it.
    retried: Cell<bool>,
}

// SAFETY: forwards to `OsPages` (which upholds the contract) or refuses.
unsafe impl PageSource for &FailingPages {
    fn map(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        self.calls.set(self.calls.get() + 1);
        if self.calls.get() == self.fail_at.get() {
            self.refused.set(Some((size, align)));
            return None;
        }
        if self.calls.get() == self.fail_at.get() + 1 && self.refused.get() == Some((size, align)) {
            self.retried.set(true);
        }
        let p = OsPages.map(size, align)?;
        self.mapped.set(self.mapped.get() + size);
        Some(p)
    }
    unsafe fn unmap(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        self.unmapped.set(self.unmapped.get() + size);
        // SAFETY: forwarded contract.
        unsafe { OsPages.unmap(ptr, size, align) }
    }
    unsafe fn purge(&self, ptr: NonNull<u8>, size: usize) -> bool {
        // SAFETY: forwarded contract.
        unsafe { OsPages.purge(ptr, size) }
    }
}

// SAFETY: the heap below is used from this thread only; `Cell` is fine.
unsafe impl Sync for FailingPages {}

/// The workload: small, medium and huge blocks, grown, shrunk and freed.
/// Returns how many operations failed.
fn workload(heap: &PrivateHeap<&FailingPages>) -> usize {
    let a = &heap;
    let mut failures = 0;
    let mut live: Vec<(NonNull<u8>, Layout)> = Vec::new();
    let n = if cfg!(miri) { 60 } else { 800 };
    for i in 0..n {
        let size = match i % 10 {
            0 => pymalloc::config::MEDIUM_MAX + 4096,
            1 | 2 => 1000 + i * 37 % 60_000,
            _ => 8 + i * 13 % 500,
        };
        let layout = Layout::from_size_align(size, 1 << (i % 7)).unwrap();
        match a.allocate(layout) {
            Ok(p) => {
                let p = p.cast::<u8>();
                // SAFETY: a fresh block of `size` bytes: its ends carry a mark.
                unsafe {
                    p.as_ptr().write(i as u8);
                    p.as_ptr().add(size - 1).write(i as u8);
                }
                live.push((p, layout));
            }
            Err(_) => failures += 1,
        }
        if i % 3 == 0 && !live.is_empty() {
            let (p, old) = live.swap_remove(i % live.len());
            let new = Layout::from_size_align(old.size() * 2 + 100, old.align()).unwrap();
            // SAFETY: live block with layout `old`; `new` is larger.
            match unsafe { a.grow(p, old, new) } {
                Ok(q) => {
                    let q = q.cast::<u8>();
                    // SAFETY: a live block of `new.size()` bytes whose first
                    // `old.size()` were kept: move the end mark.
                    unsafe { q.as_ptr().add(new.size() - 1).write(q.as_ptr().read()) };
                    live.push((q, new));
                }
                Err(_) => {
                    failures += 1;
                    // The old block must still be valid and intact.
                    // SAFETY: the failed grow left `p` live with `old`.
                    let first = unsafe { p.as_ptr().read() };
                    // SAFETY: as above.
                    let last = unsafe { p.as_ptr().add(old.size() - 1).read() };
                    assert_eq!(first, last, "a failed grow damaged its block");
                    live.push((p, old));
                }
            }
        }
        if i % 4 == 0 && live.len() > 8 {
            let (p, layout) = live.swap_remove(0);
            // SAFETY: live block with this layout, freed once.
            unsafe { a.deallocate(p, layout) };
        }
    }
    heap.validate();
    for (p, layout) in live {
        // SAFETY: live blocks with their layouts, freed once.
        unsafe { a.deallocate(p, layout) };
    }
    failures
}

#[test]
fn every_failed_os_request_is_a_clean_error() {
    // A clean run counts the OS requests the workload makes.
    let probe = FailingPages::default();
    {
        let heap = PrivateHeap::with_source(&probe);
        assert_eq!(workload(&heap), 0);
    }
    let requests = probe.calls.get();
    assert!(
        requests > 10,
        "the workload should map many chunks ({requests})"
    );
    let step = if cfg!(miri) { requests.div_ceil(4) } else { 1 };
    for fail_at in (1..=requests).step_by(step) {
        let pages = FailingPages::default();
        pages.fail_at.set(fail_at);
        {
            let heap = PrivateHeap::with_source(&pages);
            let failures = workload(&heap);
            assert!(
                failures >= 1 || pages.retried.get(),
                "request {fail_at} failed silently"
            );
            heap.validate();
            let s = heap.stats();
            assert_eq!(
                (s.bytes_in_use, s.bytes_requested),
                (0, 0),
                "request {fail_at}: {s:?}"
            );
            // Still usable after the failure.
            let p = (&heap)
                .allocate(Layout::new::<[u64; 4]>())
                .expect("usable after failure");
            // SAFETY: just allocated with this layout.
            unsafe { (&heap).deallocate(p.cast(), Layout::new::<[u64; 4]>()) };
        }
        assert_eq!(
            pages.mapped.get(),
            pages.unmapped.get(),
            "request {fail_at}: leaked a mapping"
        );
    }
}
