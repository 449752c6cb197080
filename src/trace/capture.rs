//! Stack walks into a fixed array, without allocating.
//!
//! `backtrace`'s unsynchronized walk calls the platform's unwinder
//! (`_Unwind_Backtrace` on Unix), which reads unwind tables and allocates
//! nothing; the synchronized one would take a global lock that symbol
//! resolution also holds while it allocates. On Windows (`dbghelp`, not
//! thread-safe) the synchronized walk is used. Under Miri nothing is walked.

/// Instruction pointers a trace may hold: the frames asked for plus
/// [`ALLOCATOR_SLACK`], at most this.
pub(super) const MAX_CAPTURE: usize = 128;

/// Frames walked beyond the ones asked for: the allocator's own and std's
/// allocation shims (`__rust_alloc`, `RawVec`, …) above the caller, which
/// are dropped when the traceback is resolved. An unoptimised build has
/// about 12 between a `Vec::push` and the heap.
pub(super) const ALLOCATOR_SLACK: usize = 24;

/// Fills `ips` with the return addresses of the calling stack, innermost
/// first, starting at this function's caller; returns how many.
#[inline(never)]
pub(super) fn capture(ips: &mut [usize]) -> usize {
    #[cfg(miri)]
    {
        let _ = ips;
        0
    }
    #[cfg(not(miri))]
    {
        // Frames whose canonical frame address lies below this local are
        // the unwinder's and `backtrace`'s own (callees of this function).
        let marker = 0u8;
        let here = core::ptr::from_ref(&marker).addr();
        let mut n = 0;
        let mut each = |frame: &backtrace::Frame| {
            let sp = frame.sp().addr();
            if sp != 0 && sp < here {
                return true;
            }
            ips[n] = frame.ip().addr();
            n += 1;
            n < ips.len()
        };
        #[cfg(unix)]
        // SAFETY: `trace_unsynchronized` is unsafe only because some
        // platforms' unwinders are not thread-safe; Unix's
        // `_Unwind_Backtrace` is. The closure does not unwind.
        unsafe {
            backtrace::trace_unsynchronized(&mut each)
        };
        #[cfg(not(unix))]
        backtrace::trace(&mut each);
        n
    }
}

#[cfg(all(test, not(miri)))]
mod tests {
    #[test]
    #[inline(never)]
    fn walks_from_the_caller() {
        let mut ips = [0; 8];
        let n = super::capture(&mut ips);
        assert!(n >= 2, "at least this test and its caller");
        let mut names = Vec::new();
        backtrace::resolve(ips[0] as *mut _, |s| {
            names.push(s.name().map(|n| format!("{n:#}")).unwrap_or_default())
        });
        assert!(
            names.iter().any(|n| n.contains("capture")),
            "the innermost frame kept is `capture` itself: {names:?}"
        );
    }
}
