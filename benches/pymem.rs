//! The PyMem interface's two paths, 32-byte malloc+free pairs: the function
//! set (`PyMem_Malloc`, which reads the domain's installed allocator), the
//! macro set (`PyMem_MALLOC`, inlined straight to the heap), the function
//! set with a pass-through hook installed (an indirect call through
//! `PyMemAllocatorEx`), and the C library's malloc for scale.
//!
//! Run: `cargo bench --bench pymem`.

#![allow(missing_docs)] // criterion's macros generate undocumented items

use core::ffi::c_void;
use criterion::{Criterion, criterion_group, criterion_main};
use pymalloc::*;
use std::hint::black_box;
use std::time::Duration;

static mut INNER: Option<PyMemAllocatorEx> = None;

fn inner() -> PyMemAllocatorEx {
    // SAFETY: written once before the hook is installed.
    unsafe { INNER.unwrap() }
}
unsafe extern "C" fn pass_malloc(_: *mut c_void, n: usize) -> *mut c_void {
    let a = inner();
    // SAFETY: delegates to the previous allocator.
    unsafe { (a.malloc)(a.ctx, n) }
}
unsafe extern "C" fn pass_calloc(_: *mut c_void, n: usize, m: usize) -> *mut c_void {
    let a = inner();
    // SAFETY: delegates.
    unsafe { (a.calloc)(a.ctx, n, m) }
}
unsafe extern "C" fn pass_realloc(_: *mut c_void, p: *mut c_void, n: usize) -> *mut c_void {
    let a = inner();
    // SAFETY: delegates.
    unsafe { (a.realloc)(a.ctx, p, n) }
}
unsafe extern "C" fn pass_free(_: *mut c_void, p: *mut c_void) {
    let a = inner();
    // SAFETY: delegates.
    unsafe { (a.free)(a.ctx, p) }
}

fn pymem(c: &mut Criterion) {
    let mut g = c.benchmark_group("pymem_pair_32");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1000))
        .sample_size(30);
    g.bench_function("functions", |b| {
        b.iter(|| {
            // SAFETY: the block is freed once, by the set that made it.
            unsafe { PyMem_Free(black_box(PyMem_Malloc(black_box(32)))) }
        })
    });
    g.bench_function("macros", |b| {
        b.iter(|| {
            // SAFETY: the block is freed once, by the set that made it.
            unsafe { PyMem_FREE(black_box(PyMem_MALLOC(black_box(32)))) }
        })
    });
    g.bench_function("libc_malloc", |b| {
        b.iter(|| {
            // SAFETY: the block is freed once, by the set that made it.
            unsafe { libc::free(black_box(libc::malloc(black_box(32)))) }
        })
    });
    let previous = PyMem_GetAllocator(PyMemAllocatorDomain::Mem);
    // SAFETY: written before the hook that reads it is installed.
    unsafe { INNER = Some(previous) };
    PyMem_SetAllocator(
        PyMemAllocatorDomain::Mem,
        &PyMemAllocatorEx {
            ctx: core::ptr::null_mut(),
            malloc: pass_malloc,
            calloc: pass_calloc,
            realloc: pass_realloc,
            free: pass_free,
        },
    );
    g.bench_function("functions_hooked", |b| {
        b.iter(|| {
            // SAFETY: the block is freed once, by the set that made it.
            unsafe { PyMem_Free(black_box(PyMem_Malloc(black_box(32)))) }
        })
    });
    PyMem_SetAllocator(PyMemAllocatorDomain::Mem, &previous);
    g.finish();
}

criterion_group!(benches, pymem);
criterion_main!(benches);
