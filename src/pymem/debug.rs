//! Debug hooks for the PyMem interface, as CPython's `PYTHONMALLOC=debug`.
//!
//! Installed by [`PyMem_SetupDebugHooks`](crate::PyMem_SetupDebugHooks) or
//! `PYMALLOC=debug`, they wrap each domain's allocator. Every block gets a
//! header and a tail around the caller's bytes:
//!
//! ```text
//! | 16 B scratch | prev | next | serial | size | api | 15 x 0xFD | data (size) | 16 x 0xFD |
//! 0              16     24     32       40     48    49          64            64 + size
//! ```
//!
//! * new data is filled with `0xCD`, guard bytes are `0xFD`, and a freed
//!   block's data and tail are filled with `0xDD`, its API byte too;
//! * `api` is the domain's letter (`r`, `m`, `o`); `serial` counts debug
//!   allocations; live blocks are linked (`prev`/`next`) so that
//!   [`PyMem_DebugCheckAll`] can check them all on demand; the first 16
//!   bytes are left to the wrapped allocator, whose free lists write there.
//!
//! Detected, on free and realloc (and for every live block on demand):
//! a write past the end (tail), a write before the start (leading pad), a
//! double free, a pointer the heap never gave out, a free through the wrong
//! domain; and when a freed block is reused by a new allocation, a write
//! into it after it was freed. Each is reported on standard error with the
//! block's address, requested size, serial number, domain and a hex dump of
//! the bad bytes, like CPython's report, and the process aborts. The report
//! is built in a stack buffer: nothing allocates.

#![allow(non_snake_case)]

use crate::fatal::Message;
use crate::lock::GlobalLock;
use crate::pymem::allocator::{PyMemAllocatorDomain, PyMemAllocatorEx, default_allocator};
use core::cell::UnsafeCell;
use core::ffi::c_void;
use core::ptr::null_mut;
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};
use core::sync::atomic::{AtomicBool, AtomicUsize};
use parking_lot::lock_api::Mutex;

const FORBIDDEN: u8 = 0xFD;
const CLEAN: u8 = 0xCD;
const DEAD: u8 = 0xDD;

const OFF_PREV: usize = 16;
const OFF_NEXT: usize = 24;
const OFF_SERIAL: usize = 32;
const OFF_SIZE: usize = 40;
const OFF_API: usize = 48;
const LEAD_PAD: usize = 15;
/// Bytes before the caller's data (a multiple of 16, so data stays
/// 16-aligned).
pub(crate) const HEADER: usize = 64;
/// Guard bytes after the caller's data.
pub(crate) const TAIL: usize = 16;
const _: () = assert!(OFF_API + 1 + LEAD_PAD == HEADER && HEADER.is_multiple_of(16));

/// One wrapping of a domain: its API letter and the allocator it wraps.
/// `inner` is written once, under the PyMem writer lock, before the hooks
/// that read it are published (Release/Acquire through the slot's
/// sequence lock), and never changed afterwards: re-wrapping a domain
/// (after `PyMem_SetAllocator`) takes a fresh context, as a thread may
/// still be running the previous hooks.
struct DebugCtx {
    api: u8,
    inner: UnsafeCell<Option<PyMemAllocatorEx>>,
    /// The wrapped allocator is pymalloc's default one, so pointers can be
    /// checked against the arena map before their header is read.
    inner_is_default: AtomicBool,
}

// SAFETY: `inner` is written once before publication, then only read.
unsafe impl Sync for DebugCtx {}

/// How many times each domain can be wrapped in a process; past it,
/// `PyMem_SetupDebugHooks` leaves a newly set allocator of that domain
/// unwrapped.
const WRAPS: usize = 8;

static CTX: [[DebugCtx; WRAPS]; 3] = [
    [const { DebugCtx::new(b'r') }; WRAPS],
    [const { DebugCtx::new(b'm') }; WRAPS],
    [const { DebugCtx::new(b'o') }; WRAPS],
];
/// Contexts of each domain used so far (under the PyMem writer lock).
static USED: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];

impl DebugCtx {
    const fn new(api: u8) -> Self {
        Self {
            api,
            inner: UnsafeCell::new(None),
            inner_is_default: AtomicBool::new(false),
        }
    }

    fn inner(&self) -> PyMemAllocatorEx {
        // SAFETY: set before this context was published, never changed.
        unsafe { (*self.inner.get()).expect("debug context used before set-up") }
    }
}

static INSTALLED: AtomicBool = AtomicBool::new(false);
static SERIAL: AtomicUsize = AtomicUsize::new(0);
/// Head of the list of live debug blocks (their bases), linked through the
/// `prev`/`next` header words.
static LIVE: Mutex<GlobalLock, LiveHead> = Mutex::const_new(
    <GlobalLock as parking_lot::lock_api::RawMutex>::INIT,
    LiveHead(null_mut()),
);

struct LiveHead(*mut u8);
// SAFETY: the list is only touched under `LIVE`'s lock.
unsafe impl Send for LiveHead {}

/// The debug allocator of `domain`, wrapping `inner` (the domain's
/// current allocator, not itself a debug one); `None` once the domain was
/// wrapped `WRAPS` times. The caller holds the PyMem writer lock, installs
/// the result, then calls `mark_installed`.
pub(crate) fn wrap(
    domain: PyMemAllocatorDomain,
    inner: PyMemAllocatorEx,
) -> Option<PyMemAllocatorEx> {
    let used = &USED[domain as usize];
    let n = used.load(Relaxed);
    let c = CTX[domain as usize].get(n)?;
    used.store(n + 1, Relaxed);
    let default = default_allocator(domain);
    // SAFETY: not yet published (the caller installs the result after).
    unsafe { *c.inner.get() = Some(inner) };
    c.inner_is_default
        .store(core::ptr::fn_addr_eq(inner.malloc, default.malloc), Relaxed);
    Some(PyMemAllocatorEx {
        ctx: (c as *const DebugCtx).cast_mut().cast(),
        malloc: debug_malloc,
        calloc: debug_calloc,
        realloc: debug_realloc,
        free: debug_free,
    })
}

/// The allocator `a` wraps if it is one of the debug hooks: its context is
/// one of `CTX` (told by address: function addresses are not unique).
pub(crate) fn wrapped(a: &PyMemAllocatorEx) -> Option<PyMemAllocatorEx> {
    let start = CTX.as_ptr().addr();
    let offset = a.ctx.addr().checked_sub(start)?;
    if offset >= size_of_val(&CTX) || offset % size_of::<DebugCtx>() != 0 {
        return None;
    }
    // SAFETY: a debug allocator's context is one of `CTX` (just checked),
    // published before the allocator was installed; `a.ctx` is the pointer
    // `wrap` made from it.
    let c = unsafe { &*a.ctx.cast::<DebugCtx>() };
    // SAFETY: as above: `inner` is set before publication.
    unsafe { (*c.inner.get()).is_some() }.then(|| c.inner())
}

/// Records that the hooks are installed on every domain.
pub(crate) fn mark_installed() {
    INSTALLED.store(true, Release);
}

/// Whether the debug hooks are installed.
pub fn debug_hooks_installed() -> bool {
    INSTALLED.load(Acquire)
}

/// The word at `base + off` (unaligned).
///
/// # Safety
///
/// `base..base + off + 8` is readable.
unsafe fn read_word(base: *mut u8, off: usize) -> usize {
    // SAFETY: caller: `base..base + off + 8` is readable.
    unsafe { base.add(off).cast::<usize>().read_unaligned() }
}

/// Writes `v` at `base + off` (unaligned).
///
/// # Safety
///
/// `base..base + off + 8` is writable.
unsafe fn write_word(base: *mut u8, off: usize, v: usize) {
    // SAFETY: caller: `base..base + off + 8` is writable.
    unsafe { base.add(off).cast::<usize>().write_unaligned(v) }
}

unsafe extern "C" fn debug_malloc(ctx: *mut c_void, n: usize) -> *mut c_void {
    // SAFETY: `ctx` is one of `CTX` (installed with it).
    let c = unsafe { &*ctx.cast::<DebugCtx>() };
    let Some(total) = n
        .checked_add(HEADER + TAIL)
        .filter(|&t| t <= isize::MAX as usize)
    else {
        return null_mut();
    };
    let inner = c.inner();
    // SAFETY: the wrapped allocator, called per its contract.
    let base = unsafe { (inner.malloc)(inner.ctx, total) }.cast::<u8>();
    if base.is_null() {
        return null_mut();
    }
    // SAFETY: `base` holds `total` bytes, ours until freed.
    unsafe {
        check_reuse(c, base, total);
        base.write_bytes(FORBIDDEN, 16);
        write_word(base, OFF_SERIAL, SERIAL.fetch_add(1, Relaxed) + 1);
        write_word(base, OFF_SIZE, n);
        base.add(OFF_API).write(c.api);
        base.add(OFF_API + 1).write_bytes(FORBIDDEN, LEAD_PAD);
        base.add(HEADER).write_bytes(CLEAN, n);
        base.add(HEADER + n).write_bytes(FORBIDDEN, TAIL);
        link(base);
        base.add(HEADER).cast()
    }
}

unsafe extern "C" fn debug_calloc(ctx: *mut c_void, nelem: usize, elsize: usize) -> *mut c_void {
    let Some(n) = nelem.checked_mul(elsize) else {
        return null_mut();
    };
    // SAFETY: as `debug_malloc`.
    let p = unsafe { debug_malloc(ctx, n) };
    if !p.is_null() {
        // SAFETY: `p` holds `n` bytes.
        unsafe { p.cast::<u8>().write_bytes(0, n) };
    }
    p
}

unsafe extern "C" fn debug_realloc(ctx: *mut c_void, p: *mut c_void, n: usize) -> *mut c_void {
    if p.is_null() {
        // SAFETY: as `debug_malloc`.
        return unsafe { debug_malloc(ctx, n) };
    }
    // SAFETY: `ctx` is one of `CTX`.
    let c = unsafe { &*ctx.cast::<DebugCtx>() };
    // SAFETY: `p` is checked to be a live debug block of this domain before
    // its bytes are used; the new block is distinct. Never resized in
    // place, so the old block is always filled and marked freed.
    unsafe {
        let base = check_block(c, p.cast(), "realloc");
        let old = read_word(base, OFF_SIZE);
        let new = debug_malloc(ctx, n);
        if new.is_null() {
            return null_mut();
        }
        core::ptr::copy_nonoverlapping(p.cast::<u8>(), new.cast::<u8>(), old.min(n));
        release(c, base);
        new
    }
}

unsafe extern "C" fn debug_free(ctx: *mut c_void, p: *mut c_void) {
    if p.is_null() {
        return;
    }
    // SAFETY: `ctx` is one of `CTX`.
    let c = unsafe { &*ctx.cast::<DebugCtx>() };
    // SAFETY: checked to be a live debug block of this domain first.
    unsafe {
        let base = check_block(c, p.cast(), "free");
        release(c, base);
    }
}

/// Unlinks a checked live block, fills it as freed and frees it.
///
/// # Safety
///
/// `base` is a live debug block of `c`'s domain, checked.
unsafe fn release(c: &DebugCtx, base: *mut u8) {
    // SAFETY: caller's contract; the block is ours until the inner free.
    unsafe {
        unlink(base);
        let n = read_word(base, OFF_SIZE);
        base.write_bytes(DEAD, 16);
        write_word(base, OFF_PREV, usize::MAX);
        write_word(base, OFF_NEXT, usize::MAX);
        base.add(OFF_API).write(DEAD);
        base.add(HEADER).write_bytes(DEAD, n + TAIL);
        let inner = c.inner();
        (inner.free)(inner.ctx, base.cast());
    }
}

/// A live-list link of the debug block at `base`.
///
/// # Safety
///
/// `base` is the header of a live debug block; `off` is `OFF_PREV` or
/// `OFF_NEXT`.
unsafe fn read_link(base: *mut u8, off: usize) -> *mut u8 {
    // SAFETY: caller: a live debug block header (links are pointers, so
    // they keep their provenance).
    unsafe { base.add(off).cast::<*mut u8>().read_unaligned() }
}

/// Sets a live-list link of the debug block at `base`.
///
/// # Safety
///
/// As for `read_link`.
unsafe fn write_link(base: *mut u8, off: usize, v: *mut u8) {
    // SAFETY: caller: a live debug block header.
    unsafe { base.add(off).cast::<*mut u8>().write_unaligned(v) }
}

/// Puts the debug block at `base` on the live list.
///
/// # Safety
///
/// `base` is the header of a live debug block, not on the list.
unsafe fn link(base: *mut u8) {
    let mut head = LIVE.lock();
    // SAFETY: live blocks' headers are valid; the list is under the lock.
    unsafe {
        write_link(base, OFF_PREV, null_mut());
        write_link(base, OFF_NEXT, head.0);
        if !head.0.is_null() {
            write_link(head.0, OFF_PREV, base);
        }
    }
    head.0 = base;
}

/// Takes the debug block at `base` off the live list.
///
/// # Safety
///
/// `base` is the header of a live debug block on the list.
unsafe fn unlink(base: *mut u8) {
    let mut head = LIVE.lock();
    // SAFETY: `base` is on the list; its neighbours are live blocks.
    unsafe {
        let prev = read_link(base, OFF_PREV);
        let next = read_link(base, OFF_NEXT);
        if !next.is_null() {
            write_link(next, OFF_PREV, prev);
        }
        if prev.is_null() {
            head.0 = next;
        } else {
            write_link(prev, OFF_NEXT, next);
        }
    }
}

/// Validates the debug block whose data starts at `p` for a free or realloc
/// through `c`'s domain; returns its base, or reports and aborts.
///
/// # Safety
///
/// `p` is what the caller passed to free/realloc (perhaps bogus: it is
/// checked against the arena map before any byte is read when the wrapped
/// allocator is pymalloc's).
unsafe fn check_block(c: &DebugCtx, p: *mut u8, what: &str) -> *mut u8 {
    if c.inner_is_default.load(Relaxed) {
        let foreign = !p.addr().is_multiple_of(16)
            || p.addr() < HEADER
            || crate::raw::map::ARENA_MAP
                .lookup(p.addr() - HEADER)
                .is_none()
            || crate::raw::map::ARENA_MAP.lookup(p.addr()).is_none();
        if foreign {
            let mut m = Message::new();
            m.push(b"Debug memory block at address p=");
            m.push_hex(p.addr());
            m.push(b": API '");
            m.push(&[c.api]);
            m.push(b"'\n    pointer was never allocated by pymalloc (or not at the start of a block)\n");
            finish(&mut m, what, "pointer never allocated by this allocator");
        }
    }
    let base = p.wrapping_sub(HEADER);
    // SAFETY: a block of the wrapped allocator (checked above when it is
    // ours), so its header is readable.
    unsafe {
        let api = base.add(OFF_API).read();
        let lead_ok = (0..LEAD_PAD).all(|i| base.add(OFF_API + 1 + i).read() == FORBIDDEN);
        if lead_ok && api == DEAD {
            report(c, base, what, "double free (the block was already freed)");
        }
        if !lead_ok {
            report(
                c,
                base,
                what,
                "bad leading pad byte (write before the start of the block)",
            );
        }
        if api != c.api {
            if matches!(api, b'r' | b'm' | b'o') {
                let mut m = Message::new();
                m.push(b"Debug memory block at address p=");
                m.push_hex(p.addr());
                m.push(b": API '");
                m.push(&[api]);
                m.push(b"'\n    allocated through API '");
                m.push(&[api]);
                m.push(b"', verified (freed) through API '");
                m.push(&[c.api]);
                m.push(b"'\n");
                dump_block(&mut m, base);
                finish(&mut m, what, "bad ID: block freed through the wrong domain");
            }
            report(c, base, what, "bad ID: not a block of a debug allocator");
        }
        let n = read_word(base, OFF_SIZE);
        if (0..TAIL).any(|i| base.add(HEADER + n + i).read() != FORBIDDEN) {
            report(
                c,
                base,
                what,
                "bad trailing pad byte (write past the end of the block)",
            );
        }
    }
    base
}

/// On reuse: if the wrapped allocator handed back a block the hooks freed
/// earlier (its header still says so), its old data must still read
/// `0xDD`. Whole pages of zeros are accepted (the heap may have given the
/// pages back to the OS).
///
/// # Safety
///
/// `base` holds `total` readable bytes.
unsafe fn check_reuse(c: &DebugCtx, base: *mut u8, total: usize) {
    // SAFETY: caller's contract; reads stay below `total`.
    unsafe {
        if base.add(OFF_API).read() != DEAD
            || !(0..LEAD_PAD).all(|i| base.add(OFF_API + 1 + i).read() == FORBIDDEN)
        {
            return;
        }
        let old = read_word(base, OFF_SIZE);
        let end = (HEADER + old.saturating_add(TAIL)).min(total);
        let mut i = HEADER;
        while i < end {
            let b = base.add(i).read();
            if b != DEAD {
                let page_start = (base.addr() + i) & !4095;
                let page_end = (page_start + 4096).min(base.addr() + end);
                let zero_page = page_start >= base.addr()
                    && (page_start..page_end).all(|a| base.add(a - base.addr()).read() == 0);
                if zero_page {
                    i = page_end - base.addr();
                    continue;
                }
                let mut m = Message::new();
                m.push(b"Debug memory block at address p=");
                m.push_hex(base.addr() + HEADER);
                m.push(b": API '");
                m.push(&[c.api]);
                m.push(b"' (the allocation reusing it)\n    freed, then written to before reuse; ");
                m.push_dec(old);
                m.push(b" bytes originally requested; freed block made by call #");
                m.push_dec(read_word(base, OFF_SERIAL));
                m.push(b"\n    first changed byte at p+");
                m.push_dec(i - HEADER);
                m.push(b" (expected 0xdd):\n");
                dump(
                    &mut m,
                    base.add(HEADER),
                    i - HEADER,
                    (end - HEADER).min(i - HEADER + 16),
                );
                finish(&mut m, "malloc", "write to a freed block");
            }
            i += 1;
        }
    }
}

/// Checks every live debug block's header and guards; reports and aborts
/// on the first damaged one. Returns how many blocks were checked.
///
/// ```
/// // Without the debug hooks installed there is nothing to check.
/// if !pymalloc::debug_hooks_installed() {
///     assert_eq!(pymalloc::PyMem_DebugCheckAll(), 0);
/// }
/// ```
pub fn PyMem_DebugCheckAll() -> usize {
    let head = LIVE.lock();
    let mut p = head.0;
    let mut count = 0;
    while !p.is_null() {
        // SAFETY: list members are live debug blocks.
        unsafe {
            let api = p.add(OFF_API).read();
            let c = CTX.iter().find(|c| c[0].api == api).unwrap_or(&CTX[1]);
            let c = &c[0];
            if !(0..LEAD_PAD).all(|i| p.add(OFF_API + 1 + i).read() == FORBIDDEN) {
                report(
                    c,
                    p,
                    "check",
                    "bad leading pad byte (write before the start of the block)",
                );
            }
            if c.api != api {
                report(c, p, "check", "bad ID: header overwritten");
            }
            let n = read_word(p, OFF_SIZE);
            if (0..TAIL).any(|i| p.add(HEADER + n + i).read() != FORBIDDEN) {
                report(
                    c,
                    p,
                    "check",
                    "bad trailing pad byte (write past the end of the block)",
                );
            }
            p = read_link(p, OFF_NEXT);
        }
        count += 1;
    }
    count
}

/// Reports a bad block and aborts: CPython's `_PyObject_DebugDumpAddress`
/// lines, in its order, then the fatal line naming the problem.
///
/// # Safety
///
/// `base` is a readable debug block header.
unsafe fn report(c: &DebugCtx, base: *mut u8, what: &str, problem: &str) -> ! {
    let mut m = Message::new();
    m.push(b"Debug memory block at address p=");
    m.push_hex(base.addr() + HEADER);
    m.push(b": API '");
    m.push(&[c.api]);
    m.push(b"'\n");
    // SAFETY: caller's contract.
    unsafe { dump_block(&mut m, base) };
    finish(&mut m, what, problem)
}

fn bad_byte(m: &mut Message, label: &[u8], offset: usize, b: u8) {
    m.push(b"        at ");
    m.push(label);
    m.push_dec(offset);
    m.push(b": 0x");
    m.push_byte(b);
    if b != FORBIDDEN {
        m.push(b" *** OUCH");
    }
    m.push(b"\n");
}

/// The lines of `_PyObject_DebugDumpAddress` after the first: bytes
/// requested, the leading pad bytes, the trailing ones, the serial number,
/// the first and last 8 data bytes. The trailing pad and the data are read
/// only when the header is intact (a corrupted size could lead anywhere).
///
/// # Safety
///
/// `base` is a readable debug block header.
unsafe fn dump_block(m: &mut Message, base: *mut u8) {
    // SAFETY: caller's contract; the tail and data are read only behind an
    // intact header, whose size then bounds the block.
    unsafe {
        let n = read_word(base, OFF_SIZE);
        m.push(b"    ");
        m.push_dec(n);
        m.push(b" bytes originally requested\n");
        m.push(b"    The ");
        m.push_dec(LEAD_PAD);
        m.push(b" pad bytes at p-");
        m.push_dec(LEAD_PAD);
        let lead_ok = (0..LEAD_PAD).all(|i| base.add(OFF_API + 1 + i).read() == FORBIDDEN);
        if lead_ok {
            m.push(b" are FORBIDDENBYTE, as expected.\n");
        } else {
            m.push(b" are not all FORBIDDENBYTE (0xfd):\n");
            for i in 0..LEAD_PAD {
                bad_byte(m, b"p-", LEAD_PAD - i, base.add(OFF_API + 1 + i).read());
            }
            m.push(b"    Because memory is corrupted at the start, the count of bytes requested\n");
            m.push(b"       may be bogus, and checking the trailing pad bytes may segfault.\n");
        }
        let api = base.add(OFF_API).read();
        let trusted =
            lead_ok && matches!(api, b'r' | b'm' | b'o' | DEAD) && n <= isize::MAX as usize;
        let tail = base.add(HEADER).wrapping_add(n);
        if trusted {
            m.push(b"    The ");
            m.push_dec(TAIL);
            m.push(b" pad bytes at tail=");
            m.push_hex(tail.addr());
            if (0..TAIL).all(|i| tail.add(i).read() == FORBIDDEN) {
                m.push(b" are FORBIDDENBYTE, as expected.\n");
            } else {
                m.push(b" are not all FORBIDDENBYTE (0xfd):\n");
                for i in 0..TAIL {
                    bad_byte(m, b"tail+", i, tail.add(i).read());
                }
            }
        } else {
            m.push(b"    The trailing pad bytes were not checked (the header is corrupted).\n");
        }
        m.push(b"    The block was made by call #");
        m.push_dec(read_word(base, OFF_SERIAL));
        m.push(b" to debug malloc/realloc.\n");
        if trusted && n > 0 {
            let data = base.add(HEADER);
            m.push(b"    Data at p:");
            for i in 0..n.min(8) {
                m.push(b" ");
                m.push_byte(data.add(i).read());
            }
            if n > 8 {
                let from = if n > 16 {
                    m.push(b" ...");
                    n - 8
                } else {
                    8
                };
                for i in from..n {
                    m.push(b" ");
                    m.push_byte(data.add(i).read());
                }
            }
            m.push(b"\n");
        }
        m.push(b"\n");
    }
    // Where it was made, if traced (CPython's `_PyMem_DumpTraceback`).
    crate::trace::dump_traceback(m, base.addr());
}

/// Hex dump of `data[from..to]`, 16 bytes a line.
///
/// # Safety
///
/// `data..data + to` is readable.
unsafe fn dump(m: &mut Message, data: *mut u8, from: usize, to: usize) {
    let mut i = from;
    while i < to {
        m.push(b"        p+");
        m.push_dec(i);
        m.push(b":");
        for j in i..(i + 16).min(to) {
            m.push(b" ");
            // SAFETY: caller's contract.
            m.push_byte(unsafe { data.add(j).read() });
        }
        m.push(b"\n");
        i += 16;
    }
}

fn finish(m: &mut Message, what: &str, problem: &str) -> ! {
    m.push(b"Fatal error in debug ");
    m.push(what.as_bytes());
    m.push(b": ");
    m.push(problem.as_bytes());
    m.push(b"\n");
    m.abort()
}
