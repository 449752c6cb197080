//! Valgrind client requests (feature `valgrind`, x86_64 Linux): tell
//! memcheck which memory the heap hands out and takes back, as mimalloc's
//! tracking build does, so that memcheck reports use-after-free, double
//! frees, leaks and uninitialised reads in programs that use pymalloc.
//!
//! Blocks are registered at the public entry points (`malloc-like` after
//! an allocation, `free-like` before a free, `resize-in-place` when a
//! block grows or shrinks where it is). The heap's own accesses to freed
//! blocks (free-list links, inbox links, the medium cache's words, TLSF's
//! links and split headers) are bracketed so memcheck does not flag them.
//! Without the feature (or off x86_64 Linux, or under Miri) every function
//! here is an empty inline function. Outside valgrind the requests are a
//! few no-op instructions.
//!
//! Do not combine with `validate()` or the PyMem debug hooks under
//! memcheck: both read freed memory on purpose.

#[cfg(all(
    feature = "valgrind",
    target_arch = "x86_64",
    target_os = "linux",
    not(miri)
))]
mod imp {
    /// Issues client request `code` with `args`; returns valgrind's answer,
    /// or 0 when not running under valgrind.
    #[inline(always)]
    fn request(code: usize, a: [usize; 5]) -> usize {
        let args = [code, a[0], a[1], a[2], a[3], a[4]];
        let mut result = 0usize;
        // SAFETY: valgrind's documented "special instruction" sequence:
        // four rotations of rdi by 128 bits in total (rdi unchanged), then
        // `xchg rbx, rbx`; natively a no-op, under valgrind the request
        // whose arguments `rax` points at, with the result in `rdx`.
        unsafe {
            core::arch::asm!(
                "rol rdi, 3",
                "rol rdi, 13",
                "rol rdi, 61",
                "rol rdi, 51",
                "xchg rbx, rbx",
                in("rax") args.as_ptr(),
                inout("rdx") result,
                inout("rdi") 0usize => _,
                options(nostack),
            );
        }
        result
    }

    const MALLOCLIKE_BLOCK: usize = 0x1301;
    const FREELIKE_BLOCK: usize = 0x1302;
    const RESIZEINPLACE_BLOCK: usize = 0x130b;
    const MAKE_MEM_NOACCESS: usize = 0x4d43_0000;
    const MAKE_MEM_DEFINED: usize = 0x4d43_0002;

    #[inline(always)]
    pub(crate) fn malloclike(p: *const u8, size: usize, zeroed: bool) {
        request(MALLOCLIKE_BLOCK, [p.addr(), size, 0, zeroed as usize, 0]);
    }
    #[inline(always)]
    pub(crate) fn freelike(p: *const u8) {
        request(FREELIKE_BLOCK, [p.addr(), 0, 0, 0, 0]);
    }
    #[inline(always)]
    pub(crate) fn resized(p: *const u8, old: usize, new: usize) {
        request(RESIZEINPLACE_BLOCK, [p.addr(), old, new, 0, 0]);
    }
    #[inline(always)]
    pub(crate) fn defined(p: *const u8, len: usize) {
        request(MAKE_MEM_DEFINED, [p.addr(), len, 0, 0, 0]);
    }
    #[inline(always)]
    pub(crate) fn noaccess(p: *const u8, len: usize) {
        request(MAKE_MEM_NOACCESS, [p.addr(), len, 0, 0, 0]);
    }
}

#[cfg(not(all(
    feature = "valgrind",
    target_arch = "x86_64",
    target_os = "linux",
    not(miri)
)))]
mod imp {
    #[inline(always)]
    pub(crate) fn malloclike(_: *const u8, _: usize, _: bool) {}
    #[inline(always)]
    pub(crate) fn freelike(_: *const u8) {}
    #[inline(always)]
    pub(crate) fn resized(_: *const u8, _: usize, _: usize) {}
    #[inline(always)]
    pub(crate) fn defined(_: *const u8, _: usize) {}
    #[inline(always)]
    pub(crate) fn noaccess(_: *const u8, _: usize) {}
}

pub(crate) use imp::{defined, freelike, malloclike, noaccess, resized};

/// Runs `resize`, an attempt to resize block `ptr` in place from `old` to
/// `new` bytes, and tells memcheck in the order it needs: a shrink before
/// (the attempt may write the freed tail), a growth after (the attempt
/// first reads the neighbour it takes); a failed shrink is undone. Every
/// in-place resize of the crate goes through here.
#[inline]
pub(crate) fn resize_in_place<T>(
    ptr: *const u8,
    old: usize,
    new: usize,
    resize: impl FnOnce() -> Option<T>,
) -> Option<T> {
    let shrink = new < old;
    if shrink {
        resized(ptr, old, new);
    }
    let done = resize();
    match (&done, shrink) {
        (Some(_), false) => resized(ptr, old, new),
        (None, true) => resized(ptr, new, old),
        _ => {}
    }
    done
}
