//! A global allocator chosen at process start by the `PYMALLOC_BENCH_ALLOC`
//! environment variable, so one benchmark binary can run every workload on
//! each allocator as the real `#[global_allocator]`. The variable is read
//! with `libc::getenv` on the first call (no allocation); afterwards each
//! call costs one relaxed load and a jump-table `match`, the same for every
//! allocator.

/// Defines `pub struct Select` dispatching to the listed allocators (indices
/// `0, 1, …` in order), `pub const NAMES`, `selected()` and
/// `pairs_direct()`.
#[macro_export]
macro_rules! define_select {
    ($($index:literal $name:literal => $alloc:expr),+ $(,)?) => {
        pub const NAMES: &[&str] = &[$($name),+];
        static CHOICE: core::sync::atomic::AtomicUsize = core::sync::atomic::AtomicUsize::new(usize::MAX);

        /// The allocator `PYMALLOC_BENCH_ALLOC` names (the first if unset).
        #[derive(Debug)]
        pub struct Select;

        #[cold]
        fn choose() -> usize {
            // SAFETY: getenv reads the environment; the returned string is
            // valid until the environment changes, which nothing here does.
            let value = unsafe { libc::getenv(c"PYMALLOC_BENCH_ALLOC".as_ptr()) };
            let mut index = 0;
            if !value.is_null() {
                // SAFETY: getenv returns a NUL-terminated string.
                let value = unsafe { core::ffi::CStr::from_ptr(value) }.to_bytes();
                match NAMES.iter().position(|n| n.as_bytes() == value) {
                    Some(i) => index = i,
                    None => {
                        let msg = b"unknown PYMALLOC_BENCH_ALLOC\n";
                        // SAFETY: writes a static buffer to stderr.
                        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
                        std::process::abort();
                    }
                }
            }
            CHOICE.store(index, core::sync::atomic::Ordering::Relaxed);
            index
        }

        #[inline]
        fn choice() -> usize {
            let c = CHOICE.load(core::sync::atomic::Ordering::Relaxed);
            if c == usize::MAX { choose() } else { c }
        }

        /// Name of the allocator in use.
        pub fn selected() -> &'static str {
            NAMES[choice()]
        }

        #[inline(never)]
        fn pairs_loop<A: core::alloc::GlobalAlloc>(a: &A, layout: core::alloc::Layout, count: usize) {
            for _ in 0..count {
                // SAFETY: a non-zero layout, freed with the same layout.
                unsafe {
                    let p = a.alloc(core::hint::black_box(layout));
                    a.dealloc(core::hint::black_box(p), layout);
                }
            }
        }

        /// `count` alloc+free pairs of `size` bytes, calling the selected
        /// allocator's `GlobalAlloc` methods directly (monomorphised, no
        /// dispatch), after one warm-up pair. For instruction counts.
        /// With `PYMALLOC_BENCH_LIVE=n`, `n` blocks of the same size stay
        /// live meanwhile (the steady state: the size's page or pool is not
        /// emptied by each free).
        pub fn pairs_direct(size: usize, count: usize) {
            let layout = core::alloc::Layout::from_size_align(size, 8).unwrap();
            let live: usize = std::env::var("PYMALLOC_BENCH_LIVE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut held = Vec::with_capacity(live);
            match choice() {
                $($index => {
                    for _ in 0..live {
                        // SAFETY: a non-zero layout; freed below.
                        held.push(unsafe { core::alloc::GlobalAlloc::alloc(&$alloc, layout) });
                    }
                    pairs_loop(&$alloc, layout, 1);
                    pairs_loop(&$alloc, layout, count);
                    for p in held.drain(..) {
                        // SAFETY: allocated above with `layout`.
                        unsafe { core::alloc::GlobalAlloc::dealloc(&$alloc, p, layout) };
                    }
                })+
                _ => std::process::abort(),
            }
        }

        // SAFETY: every call goes to the same allocator for the whole process
        // (the choice is made once, before the first allocation), and that
        // allocator upholds the contract itself.
        unsafe impl core::alloc::GlobalAlloc for Select {
            #[inline]
            unsafe fn alloc(&self, l: core::alloc::Layout) -> *mut u8 {
                match choice() {
                    // SAFETY: the caller's contract, forwarded.
                    $($index => unsafe { core::alloc::GlobalAlloc::alloc(&$alloc, l) },)+
                    _ => std::process::abort(),
                }
            }
            #[inline]
            unsafe fn alloc_zeroed(&self, l: core::alloc::Layout) -> *mut u8 {
                match choice() {
                    // SAFETY: the caller's contract, forwarded.
                    $($index => unsafe { core::alloc::GlobalAlloc::alloc_zeroed(&$alloc, l) },)+
                    _ => std::process::abort(),
                }
            }
            #[inline]
            unsafe fn dealloc(&self, p: *mut u8, l: core::alloc::Layout) {
                match choice() {
                    // SAFETY: the caller's contract, forwarded.
                    $($index => unsafe { core::alloc::GlobalAlloc::dealloc(&$alloc, p, l) },)+
                    _ => std::process::abort(),
                }
            }
            #[inline]
            unsafe fn realloc(&self, p: *mut u8, l: core::alloc::Layout, n: usize) -> *mut u8 {
                match choice() {
                    // SAFETY: the caller's contract, forwarded.
                    $($index => unsafe { core::alloc::GlobalAlloc::realloc(&$alloc, p, l, n) },)+
                    _ => std::process::abort(),
                }
            }
        }
    };
}
