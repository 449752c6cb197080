//! Layer 0: OS pages. The only layer that talks to the operating system.
//!
//! [`PageSource`] is the interface the upper layers use; [`OsPages`] is the
//! default implementation: `mmap`/`munmap`/`madvise` on Unix, `VirtualAlloc`/
//! `VirtualFree` on Windows, and `std::alloc::System` under Miri (which cannot
//! run `mmap`), so that Miri checks everything above this layer.

use core::ptr::NonNull;

/// A source of zero-filled, page-aligned, read-write memory regions.
///
/// # Safety
///
/// Implementations must uphold what the heap relies on:
/// * `map(size, align)` returns either `None` or a region of `size` bytes,
///   aligned to `align`, readable and writable, reading as zero, and not
///   overlapping any other live region;
/// * the region stays valid until `unmap` is called on it;
/// * `purge` never makes a region unreadable.
pub unsafe trait PageSource {
    /// Maps `size` bytes aligned to `align` (`align` a power of two, `size` a
    /// multiple of the page size). Returns `None` when the OS refuses.
    fn map(&self, size: usize, align: usize) -> Option<NonNull<u8>>;

    /// Returns a region to the OS.
    ///
    /// # Safety
    ///
    /// * `ptr`, `size` and `align` are exactly those of one earlier `map` call
    ///   on this source whose region was not unmapped since;
    /// * nothing reads or writes the region afterwards.
    unsafe fn unmap(&self, ptr: NonNull<u8>, size: usize, align: usize);

    /// Tells the OS the contents of `size` bytes at `ptr` are no longer
    /// needed, so it may reclaim the physical pages. Returns `true` if the
    /// pages are known to read as zero afterwards.
    ///
    /// # Safety
    ///
    /// * `ptr..ptr + size` lies inside one live region of this source, and is
    ///   page-aligned at both ends;
    /// * the caller no longer needs its contents.
    unsafe fn purge(&self, ptr: NonNull<u8>, size: usize) -> bool;

    /// Resizes the live region at `ptr` from `old_size` to `new_size`
    /// bytes without copying its bytes: in place if it can, else by moving
    /// its pages to a fresh region of this source aligned to `align` (on
    /// Linux, `mremap`: the kernel moves page-table entries).
    ///
    /// Before changing anything it calls `accept` with the address the
    /// region will have (possibly more than once: in place first, then a
    /// destination); if `accept` says `false`, that attempt is dropped. The
    /// caller prepares there whatever it indexes by address (the arena map),
    /// so that nothing can fail after the pages moved.
    ///
    /// On `Some(p)` the region is `new_size` bytes at `p`, aligned to
    /// `align` (what `unmap` must be given from then on): its first
    /// `min(old_size, new_size)` bytes are the old ones, the rest read zero;
    /// if `p != ptr` the old region is gone. On `None` the region is
    /// unchanged at `ptr`, whether `accept` was called or not. The default
    /// (a source without the means, and [`OsPages`] off Linux or under Miri)
    /// returns `None` at once.
    ///
    /// # Safety
    ///
    /// * `ptr`, `old_size` and `align` describe a live region of this source
    ///   (from `map`, or from an earlier `remap`);
    /// * `new_size` is a non-zero multiple of the page size;
    /// * when shrinking, nothing uses the bytes past `new_size` any more.
    unsafe fn remap(
        &self,
        ptr: NonNull<u8>,
        old_size: usize,
        new_size: usize,
        align: usize,
        accept: &mut dyn FnMut(NonNull<u8>) -> bool,
    ) -> Option<NonNull<u8>> {
        let _ = (ptr, old_size, new_size, align, accept);
        None
    }

    /// Makes `size` bytes at `ptr` inaccessible (`guard`), or readable and
    /// writable again (`!guard`): the `hardened` feature's guard pages.
    /// Returns whether it did; the default (a source without the means,
    /// and [`OsPages`] off Unix or under Miri) does nothing and says
    /// `false`, and the pages are then merely unused.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + size` is page-aligned at both ends and lies inside one
    /// live region of this source; when guarding, nothing uses it.
    unsafe fn protect(&self, ptr: NonNull<u8>, size: usize, guard: bool) -> bool {
        let _ = (ptr, size, guard);
        false
    }

    /// Maps an arena chunk for layer 2: `ARENA_SIZE` bytes aligned to
    /// `ARENA_SIZE`, with `map`'s guarantees. A source may take arenas from
    /// elsewhere (the PyMem heap's arena allocator hooks); by default,
    /// `map`. The last `ARENA_SPARE` bytes of the arena's first pool are
    /// the source's to use (layer 2 never touches them).
    fn map_arena(&self) -> Option<NonNull<u8>> {
        self.map(crate::config::ARENA_SIZE, crate::config::ARENA_SIZE)
    }

    /// Returns an arena chunk from `map_arena`.
    ///
    /// # Safety
    ///
    /// `ptr` was returned by `map_arena` on this source and not unmapped
    /// since; nothing reads or writes the arena afterwards.
    unsafe fn unmap_arena(&self, ptr: NonNull<u8>) {
        // SAFETY: caller's contract: `map_arena`'s default mapped it so.
        unsafe { self.unmap(ptr, crate::config::ARENA_SIZE, crate::config::ARENA_SIZE) }
    }
}

/// Bytes at the end of an arena's first pool that layer 2 leaves to the
/// page source (see [`PageSource::map_arena`]).
pub const ARENA_SPARE: usize = 64;

/// The operating system's page allocator (or `System` under Miri).
#[derive(Debug, Clone, Copy, Default)]
pub struct OsPages;

/// The OS page size (4 KiB when it cannot be asked).
pub fn page_size() -> usize {
    use core::sync::atomic::{AtomicUsize, Ordering};
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    let cached = PAGE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let size = sys::query_page_size();
    let size = if size.is_power_of_two() { size } else { 4096 };
    PAGE.store(size, Ordering::Relaxed);
    size
}

/// A reading of a monotonic clock that is cheap but coarse, for the purge
/// delays: on Linux `CLOCK_MONOTONIC_COARSE`, the last scheduler tick, read
/// from the vDSO without the timestamp counter that `Instant::now` reads
/// (huge alloc+free pairs read the clock; `suite/instructions.sh 4194304`
/// counts them). It lags the true time by a tick (1-10 ms), more on a busy
/// machine, so a delay measured with it may be that much short or long:
/// `PURGE_DELAY` (10 ms) is one to ten ticks, and a cached huge mapping may
/// be purged sooner or later than that after its free. Elsewhere, and
/// under Miri, an [`Instant`](std::time::Instant).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp(
    #[cfg(all(target_os = "linux", not(miri)))] core::time::Duration,
    #[cfg(not(all(target_os = "linux", not(miri))))] std::time::Instant,
);

impl Stamp {
    /// Now, on this clock.
    #[cfg(all(target_os = "linux", not(miri)))]
    pub(crate) fn now() -> Self {
        let read = |clock| {
            // SAFETY: all-zero bytes are a valid `timespec` (whatever
            // private padding a target gives it).
            let mut t: libc::timespec = unsafe { core::mem::zeroed() };
            // SAFETY: `t` is a valid `timespec` to write.
            (unsafe { libc::clock_gettime(clock, &mut t) } == 0).then_some(t)
        };
        // The coarse clock exists on every Linux since 2.6.32; should it
        // fail, the precise one, and failing both, zero (the delays then
        // never end: pages stay cached until `trim`, never freed early).
        let t = read(libc::CLOCK_MONOTONIC_COARSE)
            .or_else(|| read(libc::CLOCK_MONOTONIC))
            .map_or((0, 0), |t| {
                (t.tv_sec as u64, t.tv_nsec.clamp(0, 999_999_999) as u32)
            });
        Stamp(core::time::Duration::new(t.0, t.1))
    }

    /// Now, on this clock.
    #[cfg(not(all(target_os = "linux", not(miri))))]
    pub(crate) fn now() -> Self {
        Stamp(std::time::Instant::now())
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub(crate) fn since(self, earlier: Stamp) -> core::time::Duration {
        #[cfg(all(target_os = "linux", not(miri)))]
        return self.0.saturating_sub(earlier.0);
        #[cfg(not(all(target_os = "linux", not(miri))))]
        return self.0.saturating_duration_since(earlier.0);
    }
}

/// Rounds `n` up to a multiple of `align` (a power of two), or `None` on
/// overflow.
#[inline]
pub const fn checked_align_up(n: usize, align: usize) -> Option<usize> {
    match n.checked_add(align - 1) {
        Some(v) => Some(v & !(align - 1)),
        None => None,
    }
}

// SAFETY: each `sys` backend below returns fresh, zeroed, aligned regions
// from the OS (or `System::alloc_zeroed`), valid until unmapped, and `purge`
// only discards contents.
unsafe impl PageSource for OsPages {
    fn map(&self, size: usize, align: usize) -> Option<NonNull<u8>> {
        debug_assert!(align.is_power_of_two() && size != 0);
        sys::map(size, align.max(page_size()))
    }

    unsafe fn unmap(&self, ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: forwarded from the caller's contract.
        unsafe { sys::unmap(ptr, size, align.max(page_size())) }
    }

    unsafe fn purge(&self, ptr: NonNull<u8>, size: usize) -> bool {
        // SAFETY: forwarded from the caller's contract.
        unsafe { sys::purge(ptr, size) }
    }

    #[cfg(all(unix, not(miri)))]
    unsafe fn protect(&self, ptr: NonNull<u8>, size: usize, guard: bool) -> bool {
        let prot = if guard {
            libc::PROT_NONE
        } else {
            libc::PROT_READ | libc::PROT_WRITE
        };
        // SAFETY: a page-aligned range of a live mapping of ours (caller).
        unsafe { libc::mprotect(ptr.as_ptr().cast(), size, prot) == 0 }
    }

    /// `mremap` rather than reserving address space ahead (mapping a block
    /// with room to grow, `PROT_NONE` past its end): a reservation must
    /// guess how far a block will grow, holds address space (and arena-map
    /// slots) nobody may use, and still needs a move once outgrown; `mremap`
    /// grows in place when the address space after the block happens to be
    /// free and otherwise moves the page-table entries to a fresh aligned
    /// region, a cost in the number of pages, with no byte copied and no
    /// page faulted in again.
    #[cfg(all(target_os = "linux", not(miri)))]
    unsafe fn remap(
        &self,
        ptr: NonNull<u8>,
        old_size: usize,
        new_size: usize,
        align: usize,
        accept: &mut dyn FnMut(NonNull<u8>) -> bool,
    ) -> Option<NonNull<u8>> {
        let align = align.max(page_size());
        // SAFETY: `ptr..ptr + old_size` is a live mapping of ours (caller);
        // a shrink drops only bytes the caller no longer uses.
        if accept(ptr) && unsafe { sys::remap_in_place(ptr, old_size, new_size) } {
            return Some(ptr);
        }
        if new_size <= old_size {
            return None;
        }
        let to = sys::map(new_size, align)?;
        if !accept(to) {
            // SAFETY: mapped just above, never published.
            unsafe { sys::unmap(to, new_size, align) };
            return None;
        }
        // SAFETY: two distinct live mappings of ours; `to` is unused.
        unsafe { sys::remap_onto(ptr, old_size, to, new_size) }.then_some(to)
    }
}

#[cfg(miri)]
mod sys {
    use core::alloc::{GlobalAlloc, Layout};
    use core::ptr::NonNull;
    use std::alloc::System;

    pub(super) fn query_page_size() -> usize {
        4096
    }

    pub(super) fn map(size: usize, align: usize) -> Option<NonNull<u8>> {
        let layout = Layout::from_size_align(size, align).ok()?;
        // SAFETY: `size` is non-zero (checked by the caller).
        NonNull::new(unsafe { System.alloc_zeroed(layout) })
    }

    /// Unmaps a region `map` returned.
    ///
    /// # Safety
    ///
    /// `ptr`, `size` and `align` are exactly those of a live region `map`
    /// returned, which nothing uses any more.
    pub(super) unsafe fn unmap(ptr: NonNull<u8>, size: usize, align: usize) {
        // SAFETY: `map` allocated this region with exactly this layout
        // (caller's contract), so the layout is valid and matches.
        unsafe { System.dealloc(ptr.as_ptr(), Layout::from_size_align_unchecked(size, align)) }
    }

    /// Gives the pages of a range back to the OS, keeping it mapped;
    /// `true` if they read zero afterwards.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + size` is a page-aligned range inside a live region
    /// `map` returned, whose contents nobody needs.
    pub(super) unsafe fn purge(_ptr: NonNull<u8>, _size: usize) -> bool {
        false
    }
}

#[cfg(all(unix, not(miri)))]
mod sys {
    use core::ptr::{NonNull, null_mut};

    pub(super) fn query_page_size() -> usize {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        usize::try_from(n).unwrap_or(4096)
    }

    fn mmap(size: usize) -> Option<NonNull<u8>> {
        // SAFETY: an anonymous private mapping at an address of the kernel's
        // choice touches no existing memory.
        let p = unsafe {
            libc::mmap(
                null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            None
        } else {
            NonNull::new(p.cast::<u8>())
        }
    }

    pub(super) fn map(size: usize, align: usize) -> Option<NonNull<u8>> {
        let page = super::page_size();
        if align <= page {
            return mmap(size);
        }
        // Over-map by `align - page`, then trim both ends to the aligned part.
        let total = size.checked_add(align - page)?;
        let raw = mmap(total)?;
        let start = raw.as_ptr().map_addr(|a| (a + align - 1) & !(align - 1));
        let head = start.addr() - raw.as_ptr().addr();
        let tail = total - head - size;
        // SAFETY: `raw..start` and `start + size..raw + total` are page-aligned
        // parts of the mapping just made, which nothing else refers to.
        unsafe {
            if head != 0 {
                libc::munmap(raw.as_ptr().cast(), head);
            }
            if tail != 0 {
                libc::munmap(start.add(size).cast(), tail);
            }
        }
        NonNull::new(start)
    }

    /// Unmaps a region `map` returned.
    ///
    /// # Safety
    ///
    /// `ptr`, `size` and `align` are exactly those of a live region `map`
    /// returned, which nothing uses any more.
    pub(super) unsafe fn unmap(ptr: NonNull<u8>, size: usize, _align: usize) {
        // SAFETY: the caller guarantees this is exactly a live mapping of ours.
        unsafe { libc::munmap(ptr.as_ptr().cast(), size) };
    }

    /// Gives the pages of a range back to the OS, keeping it mapped;
    /// `true` if they read zero afterwards.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + size` is a page-aligned range inside a live region
    /// `map` returned, whose contents nobody needs.
    pub(super) unsafe fn purge(ptr: NonNull<u8>, size: usize) -> bool {
        // SAFETY: the caller guarantees a page-aligned range inside one of
        // our mappings whose contents are no longer needed.
        let rc = unsafe { libc::madvise(ptr.as_ptr().cast(), size, libc::MADV_DONTNEED) };
        // On Linux, private anonymous pages read zero after MADV_DONTNEED.
        rc == 0 && cfg!(any(target_os = "linux", target_os = "android"))
    }

    /// Resizes a mapping where it is (`mremap` without `MREMAP_MAYMOVE`):
    /// a shrink always succeeds; a growth only if the address space after
    /// the mapping is free.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + old_size` is a live mapping of ours; on a shrink nothing
    /// uses its bytes past `new_size` any more.
    #[cfg(target_os = "linux")]
    pub(super) unsafe fn remap_in_place(
        ptr: NonNull<u8>,
        old_size: usize,
        new_size: usize,
    ) -> bool {
        // SAFETY: the caller guarantees a live mapping of ours; without
        // MREMAP_MAYMOVE the kernel either resizes it in place or fails and
        // leaves it as it was.
        let p = unsafe { libc::mremap(ptr.as_ptr().cast(), old_size, new_size, 0) };
        p.addr() == ptr.as_ptr().addr()
    }

    /// Moves a mapping's pages onto another mapping of ours, `to`
    /// (`MREMAP_MAYMOVE | MREMAP_FIXED`: the kernel replaces `to` and moves
    /// the page-table entries; no byte is copied). `false` if the kernel
    /// refused: `from` is then intact and `to` has been given back (or, if
    /// that cannot be told safely, left to the process: see below).
    ///
    /// # Safety
    ///
    /// `from..from + old_size` and `to..to + new_size` are distinct live
    /// mappings of ours; nothing uses `to` afterwards unless this returns
    /// `true`.
    #[cfg(target_os = "linux")]
    pub(super) unsafe fn remap_onto(
        from: NonNull<u8>,
        old_size: usize,
        to: NonNull<u8>,
        new_size: usize,
    ) -> bool {
        // SAFETY: both ranges are ours (caller); MREMAP_FIXED only replaces
        // `to..to + new_size`, which is ours and unused.
        let p = unsafe {
            libc::mremap(
                from.as_ptr().cast(),
                old_size,
                new_size,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                to.as_ptr().cast::<libc::c_void>(),
            )
        };
        if p.addr() == to.as_ptr().addr() {
            return true;
        }
        // The kernel may have unmapped `to` before failing (it does so
        // before checking the commit charge of the growth), and another
        // thread may map there since: unmapping `to` blindly could take
        // someone else's pages. Claim the range back without replacing
        // anything: if that works it was free, and is ours to unmap; if
        // something is there, it is `to` untouched only when the kernel
        // failed early (EINVAL); otherwise leave it (untouched address
        // space, on a path that is already out of memory).
        let early = std::io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL);
        // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
        let back = unsafe {
            libc::mmap(
                to.as_ptr().cast(),
                new_size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if back != libc::MAP_FAILED {
            // SAFETY: `back` is the mapping just made (at `to` if the kernel
            // honoured the flag, elsewhere on kernels before 4.17), ours.
            unsafe { libc::munmap(back, new_size) };
            if back.addr() == to.as_ptr().addr() {
                return false;
            }
        }
        if early {
            // SAFETY: the kernel failed before touching `to`, still ours.
            unsafe { libc::munmap(to.as_ptr().cast(), new_size) };
        }
        false
    }
}

#[cfg(all(windows, not(miri)))]
mod sys {
    use core::ptr::{NonNull, null};
    use windows_sys::Win32::System::Memory::{
        MEM_COMMIT, MEM_RELEASE, MEM_RESERVE, MEM_RESET, PAGE_NOACCESS, PAGE_READWRITE,
        VirtualAlloc, VirtualFree,
    };
    use windows_sys::Win32::System::SystemInformation::{GetSystemInfo, SYSTEM_INFO};

    pub(super) fn query_page_size() -> usize {
        // SAFETY: SYSTEM_INFO is plain data; GetSystemInfo fills it.
        let mut info: SYSTEM_INFO = unsafe { core::mem::zeroed() };
        // SAFETY: `info` is a valid, writable SYSTEM_INFO.
        unsafe { GetSystemInfo(&mut info) };
        // Regions must be aligned to the allocation granularity (64 KiB).
        info.dwAllocationGranularity as usize
    }

    pub(super) fn map(size: usize, align: usize) -> Option<NonNull<u8>> {
        for _ in 0..16 {
            // Reserve enough to contain an aligned region, release it, then
            // claim the aligned part; another thread may race us, so retry.
            // SAFETY: reserving address space at the OS's choice.
            let probe = unsafe {
                VirtualAlloc(null(), size.checked_add(align)?, MEM_RESERVE, PAGE_NOACCESS)
            };
            if probe.is_null() {
                return None;
            }
            let aligned = probe
                .cast::<u8>()
                .map_addr(|a| (a + align - 1) & !(align - 1));
            // SAFETY: `probe` is the reservation just made.
            unsafe { VirtualFree(probe, 0, MEM_RELEASE) };
            // SAFETY: asks for a fresh region at a specific free address.
            let p = unsafe {
                VirtualAlloc(
                    aligned.cast(),
                    size,
                    MEM_RESERVE | MEM_COMMIT,
                    PAGE_READWRITE,
                )
            };
            if let Some(p) = NonNull::new(p.cast::<u8>()) {
                return Some(p);
            }
        }
        None
    }

    /// Unmaps a region `map` returned.
    ///
    /// # Safety
    ///
    /// `ptr`, `size` and `align` are exactly those of a live region `map`
    /// returned, which nothing uses any more.
    pub(super) unsafe fn unmap(ptr: NonNull<u8>, _size: usize, _align: usize) {
        // SAFETY: the caller guarantees this is exactly a live region of ours.
        unsafe { VirtualFree(ptr.as_ptr().cast(), 0, MEM_RELEASE) };
    }

    /// Gives the pages of a range back to the OS, keeping it mapped;
    /// `true` if they read zero afterwards.
    ///
    /// # Safety
    ///
    /// `ptr..ptr + size` is a page-aligned range inside a live region
    /// `map` returned, whose contents nobody needs.
    pub(super) unsafe fn purge(ptr: NonNull<u8>, size: usize) -> bool {
        // SAFETY: the caller guarantees a range inside one of our regions
        // whose contents are no longer needed.
        unsafe { VirtualAlloc(ptr.as_ptr().cast(), size, MEM_RESET, PAGE_READWRITE) };
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_purge_clock_advances_with_time() {
        let a = Stamp::now();
        std::thread::sleep(core::time::Duration::from_millis(60));
        let b = Stamp::now();
        // Each reading lags the true time by about a tick (10 ms at most),
        // two on a busy machine.
        let elapsed = b.since(a);
        assert!(
            elapsed >= core::time::Duration::from_millis(40),
            "{elapsed:?}"
        );
        assert!(elapsed < core::time::Duration::from_secs(10), "{elapsed:?}");
        assert_eq!(a.since(b), core::time::Duration::ZERO, "saturates");
        assert!(Stamp::now().since(b) < core::time::Duration::from_secs(10));
    }

    #[test]
    fn maps_aligned_zeroed_regions() {
        let page = page_size();
        assert!(page.is_power_of_two());
        for align in [page, 64 * 1024, 1 << 20] {
            let size = 3 * page;
            let p = OsPages.map(size, align).expect("map");
            assert_eq!(p.as_ptr().addr() % align, 0);
            // SAFETY: `p` is a fresh mapping of `size` bytes.
            let bytes = unsafe { core::slice::from_raw_parts_mut(p.as_ptr(), size) };
            assert!(bytes.iter().all(|&b| b == 0));
            bytes.fill(0xAB);
            // SAFETY: the region is ours and its contents are no longer needed.
            let zeroed = unsafe { OsPages.purge(p, page) };
            if zeroed {
                assert_eq!(bytes[0], 0);
            }
            assert_eq!(bytes[page], 0xAB);
            // SAFETY: exactly the region mapped above, not used afterwards.
            unsafe { OsPages.unmap(p, size, align) };
        }
    }

    #[test]
    fn align_up_rounds_and_detects_overflow() {
        assert_eq!(checked_align_up(0, 16), Some(0));
        assert_eq!(checked_align_up(1, 16), Some(16));
        assert_eq!(checked_align_up(16, 16), Some(16));
        assert_eq!(checked_align_up(17, 16), Some(32));
        assert_eq!(checked_align_up(usize::MAX - 3, 16), None);
    }
}
