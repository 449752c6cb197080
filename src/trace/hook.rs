//! The hooks at the heap's public entry points, the per-thread state
//! (re-entrancy flag, sampling countdown) and the control functions.
//!
//! [tag:trace-mode] `MODE` is the only thing an entry point reads while
//! tracing is off: `OFF` iff no block is traced and none will be until
//! `start`. Its other values are changed only under the tracer's lock.
//! `UNREAD` (the initial value) sends the first allocation out of line to
//! read `PYMALLOC_TRACE`; it then becomes `OFF`, `EXACT` or `SAMPLING`.

use super::capture::{self, MAX_CAPTURE};
use super::table::{self, TRACER};
use crate::fatal::Message;
use core::cell::Cell;
use core::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};

const OFF: u8 = 0;
const UNREAD: u8 = 1;
const EXACT: u8 = 2;
const SAMPLING: u8 = 3;

/// See [tag:trace-mode].
static MODE: AtomicU8 = AtomicU8::new(UNREAD);
/// Frames kept per traceback (outside the allocator).
static FRAMES: AtomicUsize = AtomicUsize::new(1);
/// Mean bytes between samples (0 in exact mode).
static MEAN: AtomicUsize = AtomicUsize::new(0);
/// Bumped by every start, so that threads draw a new countdown.
static EPOCH: AtomicU32 = AtomicU32::new(1);
/// Seeds of the threads' generators.
static SEEDS: AtomicU64 = AtomicU64::new(0);

/// The most frames a traceback keeps (`start(frames)` accepts 1 to this).
pub const MAX_FRAMES: usize = 96;

/// The default mean of sampling: one sample per 512 KiB allocated, as
/// jemalloc's `lg_prof_sample = 19` (tcmalloc's is 2 MiB).
pub const DEFAULT_SAMPLE_MEAN: usize = 512 << 10;

/// Fixed-point unit of the estimated block counts.
pub(super) const ONE: u64 = 1 << 16;

/// The calling thread's tracer state. `const`-initialised, no destructor:
/// reading it never allocates and works during thread exit.
struct Local {
    /// Set while the thread runs the tracer: allocations it makes then
    /// are not traced, frees not looked up.
    busy: Cell<bool>,
    /// Bytes left before the next sample point.
    countdown: Cell<u64>,
    /// The `EPOCH` the countdown was drawn in.
    epoch: Cell<u32>,
    /// xorshift64* state; 0 until seeded.
    rng: Cell<u64>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            busy: Cell::new(false),
            countdown: Cell::new(0),
            epoch: Cell::new(0),
            rng: Cell::new(0),
        }
    };
}

/// The calling thread runs the tracer while this lives.
pub(super) struct Busy(());

impl Busy {
    /// `None` if the thread is already in the tracer (a re-entrant call).
    /// (Lazily built: a `Busy` made and dropped would clear the flag.)
    pub(super) fn enter() -> Option<Busy> {
        LOCAL
            .try_with(|l| (!l.busy.replace(true)).then(|| Busy(())))
            .ok()
            .flatten()
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = LOCAL.try_with(|l| l.busy.set(false));
    }
}

// ----- the hooks (inline: one load and a branch while off) -----

/// Whether an entry point must call the tracer ([ref:trace-mode]).
#[inline(always)]
fn active() -> bool {
    MODE.load(Relaxed) != OFF
}

/// After an allocation entry point: `ptr` (null if it failed) was
/// allocated for `size` bytes. Off: one load and a branch. Sampling: the
/// calling thread's countdown too, inline; out of line only when a sample
/// point falls in the block.
#[inline(always)]
pub(crate) fn allocated(ptr: *mut u8, size: usize) {
    let mode = MODE.load(Relaxed);
    if mode != OFF && !(mode == SAMPLING && count_down(size)) {
        allocated_slow(ptr, size);
    }
}

/// Takes `size` bytes off the calling thread's countdown if no sample
/// point falls in them (`true`); `false` leaves it to `sampled`. The
/// countdown of an earlier epoch runs out first (its gap was drawn with
/// the earlier mean: one gap per thread per restart).
#[inline(always)]
fn count_down(size: usize) -> bool {
    LOCAL
        .try_with(|l| {
            let left = l.countdown.get();
            let fits = (size as u64) < left;
            if fits {
                l.countdown.set(left - size as u64);
            }
            fits
        })
        .unwrap_or(false)
}

/// Before a free entry point frees `ptr` (non-null). Before, not after: a
/// block freed first could be allocated again by another thread, and
/// traced, before its old trace is gone. Off: one load and a branch. On:
/// the filter too, inline; out of line only for an address that may be
/// traced.
#[inline(always)]
pub(crate) fn freeing(ptr: *mut u8) {
    if active() && table::may_contain(ptr.addr()) {
        freeing_slow(ptr);
    }
}

/// Around a resize entry point: `resize` moves or resizes live block
/// `old` to `new_size` bytes, returning null (and leaving `old`) on failure.
#[inline(always)]
pub(crate) fn realloc(old: *mut u8, new_size: usize, resize: impl FnOnce() -> *mut u8) -> *mut u8 {
    if active() {
        // An untraced block (the filter says so): an allocation event only.
        if old.is_null() || !table::may_contain(old.addr()) {
            let new = resize();
            allocated(new, new_size);
            return new;
        }
        return realloc_slow(old, new_size, resize);
    }
    resize()
}

#[cold]
#[inline(never)]
fn allocated_slow(ptr: *mut u8, size: usize) {
    if ptr.is_null() {
        return;
    }
    event(ptr.addr(), size, 0);
}

/// An allocation event of `size` bytes at `addr` in `domain`, in whatever
/// mode is on: traced (exact), or counted down and maybe traced
/// (sampling). Returns whether it was traced.
fn event(addr: usize, size: usize, domain: u32) -> bool {
    let mut mode = MODE.load(Relaxed);
    if mode == UNREAD {
        mode = read_env();
    }
    match mode {
        EXACT => record(addr, size, domain, 0),
        SAMPLING => {
            let mean = MEAN.load(Relaxed);
            sampled(size, mean) && record(addr, size, domain, mean)
        }
        _ => false,
    }
}

/// Counts `size` bytes down the calling thread's countdown; `true` if a
/// sample point falls in them. Each thread's sample points are a Poisson
/// process of rate `1 / mean` over the bytes it allocates (gaps drawn
/// exponential), so a block of `s` bytes is sampled with probability
/// `1 - exp(-s / mean)` whatever came before.
fn sampled(size: usize, mean: usize) -> bool {
    LOCAL
        .try_with(|l| {
            let epoch = EPOCH.load(Relaxed);
            let mut left = l.countdown.get();
            if l.epoch.get() != epoch {
                l.epoch.set(epoch);
                left = draw_gap(l, mean);
            }
            if (size as u64) < left {
                l.countdown.set(left - size as u64);
                false
            } else {
                l.countdown.set(draw_gap(l, mean));
                true
            }
        })
        .unwrap_or(false)
}

/// A gap between sample points: exponential with mean `mean` bytes, at
/// least 1.
fn draw_gap(l: &Local, mean: usize) -> u64 {
    let mut x = l.rng.get();
    if x == 0 {
        let seed = SEEDS.fetch_add(0x9E37_79B9_7F4A_7C15, Relaxed)
            ^ (core::ptr::from_ref(l).addr() as u64).rotate_left(32);
        x = splitmix(seed) | 1;
    }
    let (x, u) = next_uniform(x);
    l.rng.set(x);
    exponential(u, mean)
}

/// splitmix64's finaliser: a well-mixed seed from any word.
fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One step of xorshift64* from non-zero state `x`: the new state and a
/// uniform number in (0, 1].
fn next_uniform(mut x: u64) -> (u64, f64) {
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
    (x, ((r >> 11) + 1) as f64 * (1.0 / (1u64 << 53) as f64))
}

/// `-ln(u) * mean`, the inverse of the exponential distribution's CDF,
/// at least 1.
fn exponential(u: f64, mean: usize) -> u64 {
    ((-u.ln() * mean as f64) as u64).max(1)
}

/// What a traced block of `size` bytes stands for: `(bytes, blocks *
/// ONE)`. Exact: itself. Sampled with mean `mean`: divided by its
/// probability of being sampled, `p = 1 - exp(-size / mean)`.
pub(super) fn estimate(size: usize, mean: usize) -> (u64, u64) {
    if mean == 0 || size == 0 {
        return (size as u64, ONE);
    }
    let p = -(-(size as f64) / mean as f64).exp_m1();
    (
        (size as f64 / p).round() as u64,
        (ONE as f64 / p).round() as u64,
    )
}

/// Walks the stack and stores the trace. `false` if not traced: re-entrant
/// call, tracing stopped meanwhile, or no memory for the tables.
#[inline(never)]
fn record(addr: usize, size: usize, domain: u32, mean: usize) -> bool {
    let Some(_busy) = Busy::enter() else {
        return false;
    };
    let mut ips = [0usize; MAX_CAPTURE];
    let want = (FRAMES.load(Relaxed) + capture::ALLOCATOR_SLACK).min(MAX_CAPTURE);
    let n = capture::capture(&mut ips[..want]);
    let (bytes, count) = estimate(size, mean);
    let mut t = TRACER.lock();
    // Stopped since the mode was read: the tables were cleared.
    if MODE.load(Relaxed) < EXACT {
        return false;
    }
    t.insert(addr, domain, bytes, count, &ips[..n])
}

#[cold]
#[inline(never)]
fn freeing_slow(ptr: *mut u8) {
    forget(ptr.addr(), 0);
}

/// Removes the trace of `addr` in `domain`, if any.
fn forget(addr: usize, domain: u32) {
    if !table::may_contain(addr) {
        return;
    }
    let Some(_busy) = Busy::enter() else {
        return;
    };
    TRACER.lock().remove(addr, domain);
}

#[cold]
#[inline(never)]
fn realloc_slow(old: *mut u8, new_size: usize, resize: impl FnOnce() -> *mut u8) -> *mut u8 {
    // The old trace leaves before the block may (as CPython, the resized
    // block gets a new traceback), and comes back if the resize fails.
    let taken = if !old.is_null() && table::may_contain(old.addr()) {
        Busy::enter().and_then(|_busy| TRACER.lock().take(old.addr()))
    } else {
        None
    };
    let new = resize();
    if new.is_null() {
        if let Some(taken) = taken
            && let Some(_busy) = Busy::enter()
        {
            TRACER.lock().restore(old.addr(), taken);
        }
        return new;
    }
    event(new.addr(), new_size, 0);
    new
}

// ----- PYMALLOC_TRACE -----

/// Reads `PYMALLOC_TRACE` and `PYMALLOC_TRACE_SAMPLE` once (at the first
/// allocation, without allocating) and starts tracing if they ask.
#[cold]
#[inline(never)]
fn read_env() -> u8 {
    let frames = env_number(c"PYMALLOC_TRACE");
    let mean = env_number(c"PYMALLOC_TRACE_SAMPLE");
    let _t = TRACER.lock();
    if MODE.load(Relaxed) != UNREAD {
        return MODE.load(Relaxed);
    }
    let mode = match (frames, mean) {
        (None | Some(0), None) => OFF,
        (frames, Some(mean)) if mean > 0 => {
            configure(frames.unwrap_or(32), mean);
            SAMPLING
        }
        (Some(frames), _) => {
            configure(frames, 0);
            EXACT
        }
        (None, Some(_)) => OFF,
    };
    MODE.store(mode, Relaxed);
    mode
}

/// The decimal value of environment variable `name`, if set and not empty.
/// Anything but digits is a fatal error, as a bad `PYTHONTRACEMALLOC`.
fn env_number(name: &core::ffi::CStr) -> Option<usize> {
    #[cfg(all(unix, not(miri)))]
    {
        // SAFETY: a NUL-terminated name; getenv returns null or a
        // NUL-terminated string that we only read, at once.
        let value = unsafe {
            let v = libc::getenv(name.as_ptr());
            if v.is_null() {
                return None;
            }
            core::ffi::CStr::from_ptr(v).to_bytes()
        };
        if value.is_empty() {
            return None;
        }
        let mut n: usize = 0;
        for &b in value {
            if !b.is_ascii_digit() {
                bad_number(name, value);
            }
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add(usize::from(b - b'0')))
                .unwrap_or_else(|| bad_number(name, value));
        }
        Some(n)
    }
    #[cfg(not(all(unix, not(miri))))]
    {
        let _ = name;
        None
    }
}

#[cfg_attr(not(all(unix, not(miri))), allow(dead_code))]
fn bad_number(name: &core::ffi::CStr, value: &[u8]) -> ! {
    crate::fatal::bad_variable(name.to_bytes(), value, &["is not a number"])
}

/// Sets frames and mean (clamped) and starts a new epoch. Under the
/// tracer's lock.
fn configure(frames: usize, mean: usize) {
    FRAMES.store(frames.clamp(1, MAX_FRAMES), Relaxed);
    MEAN.store(mean, Relaxed);
    EPOCH.fetch_add(1, Relaxed);
}

// ----- control -----

/// Starts tracing every allocation of every [`PrivateHeap`](crate::PrivateHeap),
/// keeping `frames` frames per traceback (Python's
/// `tracemalloc.start(nframe)`). Already tracing: sets the frames for new
/// traces (and leaves sampling); the traces already taken stay.
///
/// # Panics
///
/// If `frames` is 0 or more than [`MAX_FRAMES`].
///
/// ```
/// # let _serial = pymalloc::trace::tests_serial();
/// pymalloc::trace::start(25);
/// assert!(pymalloc::trace::is_tracing());
/// assert_eq!(pymalloc::trace::get_traceback_limit(), 25);
/// pymalloc::trace::stop();
/// ```
pub fn start(frames: usize) {
    assert!(
        (1..=MAX_FRAMES).contains(&frames),
        "frames must be in 1..={MAX_FRAMES}"
    );
    let _t = TRACER.lock();
    configure(frames, 0);
    MODE.store(EXACT, Relaxed);
}

/// Starts sampling: on average one allocation per `mean` bytes allocated
/// (per thread) is traced, with `frames` frames, and counted as the bytes
/// and blocks it stands for (see the [module docs](crate::trace)). `mean` is
/// typically [`DEFAULT_SAMPLE_MEAN`]; 0 means exact tracing, as [`start`].
///
/// # Panics
///
/// If `frames` is 0 or more than [`MAX_FRAMES`].
///
/// ```
/// # let _serial = pymalloc::trace::tests_serial();
/// use pymalloc::trace;
/// trace::start_sampling(trace::DEFAULT_SAMPLE_MEAN, 32);
/// assert_eq!(trace::sample_mean(), Some(512 * 1024));
/// trace::stop();
/// ```
pub fn start_sampling(mean: usize, frames: usize) {
    assert!(
        (1..=MAX_FRAMES).contains(&frames),
        "frames must be in 1..={MAX_FRAMES}"
    );
    let _t = TRACER.lock();
    configure(frames, mean);
    MODE.store(if mean == 0 { EXACT } else { SAMPLING }, Relaxed);
}

/// Stops tracing and forgets every trace (Python's `tracemalloc.stop()`).
/// Snapshots already taken stay valid.
pub fn stop() {
    let mut t = TRACER.lock();
    MODE.store(OFF, Relaxed);
    t.clear();
}

/// Whether tracing is on (exact or sampling).
pub fn is_tracing() -> bool {
    matches!(MODE.load(Relaxed), EXACT | SAMPLING)
}

/// Forgets every trace but keeps tracing (Python's
/// `tracemalloc.clear_traces()`); resets the peak.
pub fn clear_traces() {
    TRACER.lock().clear();
}

/// `(current, peak)`: bytes in traced blocks now and at most since tracing
/// started or the traces were cleared (Python's
/// `tracemalloc.get_traced_memory()`). With sampling, estimates.
///
/// ```
/// # let _serial = pymalloc::trace::tests_serial();
/// use pymalloc::trace;
/// let heap = pymalloc::PrivateHeap::new();
/// trace::start(1);
/// let b = allocator_api2::boxed::Box::new_in([0u8; 1000], &heap);
/// let (current, peak) = trace::get_traced_memory();
/// assert!(current >= 1000 && peak >= current);
/// drop(b);
/// assert_eq!(trace::get_traced_memory().0, current - 1000);
/// trace::stop();
/// ```
pub fn get_traced_memory() -> (usize, usize) {
    TRACER.lock().memory()
}

/// Sets the peak of [`get_traced_memory`] to the current bytes (Python's
/// `tracemalloc.reset_peak()`).
pub fn reset_peak() {
    TRACER.lock().reset_peak();
}

/// The frames kept per traceback (Python's
/// `tracemalloc.get_traceback_limit()`).
pub fn get_traceback_limit() -> usize {
    FRAMES.load(Relaxed)
}

/// The mean bytes between samples while sampling; `None` when tracing
/// exactly or not at all.
pub fn sample_mean() -> Option<usize> {
    (MODE.load(Relaxed) == SAMPLING).then(|| MEAN.load(Relaxed))
}

/// Traces a block of memory that no pymalloc heap allocated, in `domain`
/// (CPython's `PyTraceMalloc_Track`): an allocation event, traced as any
/// other in the current mode, with the caller's traceback. A block already
/// traced at `ptr` in `domain` is replaced. `Err` if tracing is off or the
/// tracer has no memory.
///
/// ```
/// # let _serial = pymalloc::trace::tests_serial();
/// use pymalloc::trace;
/// assert!(trace::track(7, 0x1000, 64).is_err()); // not tracing
/// trace::start(1);
/// trace::track(7, 0x1000, 64).unwrap();
/// assert_eq!(trace::get_traced_memory().0, 64);
/// trace::untrack(7, 0x1000).unwrap();
/// trace::stop();
/// ```
pub fn track(domain: u32, ptr: usize, size: usize) -> Result<(), TrackError> {
    if !is_tracing() {
        return Err(TrackError::NotTracing);
    }
    if ptr == 0 || (!event(ptr, size, domain) && MODE.load(Relaxed) == EXACT) {
        return Err(TrackError::NoMemory);
    }
    Ok(())
}

/// Forgets the trace of `ptr` in `domain`, if any (CPython's
/// `PyTraceMalloc_Untrack`). `Err` only if tracing is off.
pub fn untrack(domain: u32, ptr: usize) -> Result<(), TrackError> {
    if !is_tracing() {
        return Err(TrackError::NotTracing);
    }
    forget(ptr, domain);
    Ok(())
}

/// Why [`track`] or [`untrack`] failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrackError {
    /// Tracing is off (CPython's `-2`).
    NotTracing,
    /// The tracer could not store the trace (CPython's `-1`).
    NoMemory,
}

impl core::fmt::Display for TrackError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            TrackError::NotTracing => "tracing is off",
            TrackError::NoMemory => "no memory for the trace",
        })
    }
}

impl std::error::Error for TrackError {}

/// The raw traceback of live block `addr` (domain 0) into `ips`: its
/// length, or `None` if the block is not traced.
pub(super) fn traceback_of(addr: usize, ips: &mut [usize; MAX_CAPTURE]) -> Option<usize> {
    if !is_tracing() || !table::may_contain(addr) {
        return None;
    }
    let _busy = Busy::enter()?;
    TRACER.lock().traceback_of(addr, 0, ips)
}

/// For the debug hooks' reports (CPython's `_PyMem_DumpTraceback`): where
/// block `addr` (the heap's block, under the debug header) was allocated,
/// most recent call first. Resolving symbols allocates; the process is
/// about to abort.
pub(crate) fn dump_traceback(m: &mut Message, addr: usize) {
    if !is_tracing() {
        m.push(
            b"Enable tracing (PYMALLOC_TRACE=N) to get the memory block allocation traceback\n\n",
        );
        return;
    }
    let mut ips = [0usize; MAX_CAPTURE];
    // Not `Busy::enter`'s lock: a report from inside the tracer (which
    // never frees a user's block) would wait for itself.
    let Some(n) = (|| {
        let _busy = Busy::enter()?;
        let t = TRACER.try_lock()?;
        t.traceback_of(addr, 0, &mut ips)
    })() else {
        return;
    };
    m.push(b"Memory block allocated at (most recent call first):\n");
    let Some(_busy) = Busy::enter() else {
        return;
    };
    for frame in super::snapshot::resolve(&ips[..n], get_traceback_limit()).iter() {
        use core::fmt::Write;
        let _ = writeln!(m, "  File \"{}\", line {}", frame.filename, frame.lineno);
    }
    m.push(b"\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_nests_as_a_refusal() {
        let outer = Busy::enter().expect("not busy yet");
        assert!(Busy::enter().is_none());
        assert!(Busy::enter().is_none(), "a refusal leaves the flag set");
        drop(outer);
        assert!(Busy::enter().is_some());
    }

    #[test]
    fn exponential_gaps_have_the_mean() {
        let mut x = splitmix(42) | 1;
        let n = if cfg!(miri) { 2_000 } else { 200_000 };
        let mut sum = 0u64;
        for _ in 0..n {
            let (next, u) = next_uniform(x);
            x = next;
            assert!(u > 0.0 && u <= 1.0);
            sum += exponential(u, 1000);
        }
        let mean = sum as f64 / n as f64;
        // Standard error 1000 / sqrt(n): 2.2 (Miri: 22); 5 sigma and more.
        let tolerance = if cfg!(miri) { 120.0 } else { 15.0 };
        assert!((mean - 1000.0).abs() < tolerance, "mean gap {mean}");
    }

    #[test]
    fn estimates_undo_the_sampling_probability() {
        assert_eq!(estimate(100, 0), (100, ONE));
        assert_eq!(estimate(0, 4096), (0, ONE));
        // A block much larger than the mean is always sampled: itself.
        let (bytes, count) = estimate(100 << 20, 4096);
        assert_eq!((bytes, count), (100 << 20, ONE));
        // A small block stands for about mean / size blocks of its size.
        let (bytes, count) = estimate(16, 512 << 10);
        let blocks = count as f64 / ONE as f64;
        assert!((blocks - 32768.5).abs() < 1.0, "{blocks}");
        assert!((bytes as f64 - 16.0 * blocks).abs() < 16.0);
    }
}
