//! Random operation sequences on the PyMem functions of every domain:
//! Malloc, Calloc, Realloc (including null and 0), Free, and the macro
//! set, with contents checked; each block is freed by its own domain.
#![no_main]

use core::ffi::c_void;
use libfuzzer_sys::fuzz_target;
use pymalloc::*;

type Malloc = fn(usize) -> *mut c_void;
type Calloc = fn(usize, usize) -> *mut c_void;
type Realloc = unsafe fn(*mut c_void, usize) -> *mut c_void;
type Free = unsafe fn(*mut c_void);

const DOMAINS: [(Malloc, Calloc, Realloc, Free); 4] = [
    (PyMem_RawMalloc, PyMem_RawCalloc, PyMem_RawRealloc, PyMem_RawFree),
    (PyMem_Malloc, PyMem_Calloc, PyMem_Realloc, PyMem_Free),
    (PyObject_Malloc, PyObject_Calloc, PyObject_Realloc, PyObject_Free),
    (PyMem_MALLOC, PyMem_Calloc, PyMem_REALLOC, PyMem_FREE),
];

struct Live {
    ptr: *mut u8,
    len: usize,
    tag: u8,
    domain: usize,
}

fn check(b: &Live) {
    // SAFETY: a live block holding `len` initialised bytes.
    let s = unsafe { core::slice::from_raw_parts(b.ptr, b.len) };
    assert!(s.iter().all(|&x| x == b.tag), "contents changed");
}

fuzz_target!(|data: &[u8]| {
    let mut live: Vec<Live> = Vec::new();
    for (n, op) in data.chunks_exact(4).enumerate() {
        let size = match op[2] >> 6 {
            0 | 1 => op[1] as usize * 3,
            2 => u16::from_le_bytes([op[1], op[2]]) as usize,
            _ => u16::from_le_bytes([op[1], op[2]]) as usize * 40,
        };
        let tag = (n as u8) | 1;
        let domain = op[3] as usize % 4;
        let (malloc, calloc, realloc, free) = DOMAINS[domain];
        // SAFETY: every block is used within its length and resized or
        // freed only by its own domain, once.
        unsafe {
            match op[0] % 5 {
                0 | 1 => {
                    let p = if op[0] % 5 == 0 {
                        malloc(size)
                    } else {
                        let p = calloc(size, 1);
                        let s = core::slice::from_raw_parts(p.cast::<u8>(), size);
                        assert!(s.iter().all(|&x| x == 0), "calloc not zeroed");
                        p
                    }
                    .cast::<u8>();
                    assert!(!p.is_null() && p as usize % 16 == 0);
                    p.write_bytes(tag, size);
                    live.push(Live { ptr: p, len: size, tag, domain });
                }
                2 | 3 if !live.is_empty() => {
                    let i = op[3] as usize % live.len();
                    let b = &live[i];
                    check(b);
                    let (_, _, realloc, _) = DOMAINS[b.domain];
                    let p = realloc(b.ptr.cast(), size).cast::<u8>();
                    assert!(!p.is_null(), "realloc failed");
                    let kept = b.len.min(size);
                    let s = core::slice::from_raw_parts(p, kept);
                    assert!(s.iter().all(|&x| x == b.tag), "realloc lost contents");
                    p.write_bytes(tag, size);
                    live[i] = Live { ptr: p, len: size, tag, domain: b.domain };
                }
                4 if !live.is_empty() => {
                    let b = live.swap_remove(op[3] as usize % live.len());
                    check(&b);
                    let (_, _, _, free) = DOMAINS[b.domain];
                    free(b.ptr.cast());
                }
                _ => {
                    // Null and failure edge cases.
                    free(core::ptr::null_mut());
                    assert!(malloc(usize::MAX).is_null());
                    let p = realloc(core::ptr::null_mut(), 0);
                    assert!(!p.is_null());
                    free(p);
                }
            }
        }
    }
    for b in live {
        check(&b);
        let (_, _, _, free) = DOMAINS[b.domain];
        // SAFETY: live, freed once by its domain.
        unsafe { free(b.ptr.cast()) };
    }
});
