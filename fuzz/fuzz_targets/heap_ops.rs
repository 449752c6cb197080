//! Random operation sequences on a private heap through the `Allocator`
//! trait: allocate, allocate zeroed, grow, grow zeroed, shrink, free, with
//! layouts from the input (0 B - 2 MiB, alignments 1 - 64 KiB). Every
//! block's contents are checked against the pattern it was filled with;
//! at the end everything is freed, the counters must read zero and every
//! invariant of the heap must hold.
#![no_main]

use allocator_api2::alloc::Allocator;
use core::alloc::Layout;
use core::ptr::NonNull;
use libfuzzer_sys::fuzz_target;
use pymalloc::PrivateHeap;

struct Live {
    ptr: NonNull<u8>,
    layout: Layout,
    tag: u8,
}

fn check(b: &Live) {
    // SAFETY: a live block of `layout.size()` initialised bytes.
    let bytes = unsafe { core::slice::from_raw_parts(b.ptr.as_ptr(), b.layout.size()) };
    assert!(bytes.iter().all(|&x| x == b.tag), "block contents changed");
}

fn fill(b: &Live) {
    // SAFETY: a live block of `layout.size()` bytes.
    unsafe { b.ptr.as_ptr().write_bytes(b.tag, b.layout.size()) };
}

/// A layout from three input bytes: sizes skewed small, some huge.
fn layout(bytes: &[u8]) -> Layout {
    let s = u32::from_le_bytes([bytes[0], bytes[1], bytes[2] & 0x1f, 0]) as usize;
    let size = match bytes[2] >> 6 {
        0 | 1 => s % 600,
        2 => s % 70_000,
        _ => s % (2 << 20),
    };
    let align = 1usize << ((bytes[1] >> 4) % 17);
    Layout::from_size_align(size, align).unwrap()
}

fuzz_target!(|data: &[u8]| {
    let heap = PrivateHeap::new();
    let mut live: Vec<Live> = Vec::new();
    for (n, op) in data.chunks_exact(4).enumerate() {
        let tag = (n as u8).wrapping_mul(31) | 1;
        let pick = |len: usize| op[3] as usize % len.max(1);
        match op[0] % 6 {
            0 | 1 => {
                let l = layout(&op[1..4]);
                let zeroed = op[0] % 6 == 1;
                let r = if zeroed { (&heap).allocate_zeroed(l) } else { (&heap).allocate(l) };
                let Ok(p) = r else { continue };
                let p = p.cast::<u8>();
                assert_eq!(p.as_ptr() as usize % l.align(), 0, "misaligned");
                let b = Live { ptr: p, layout: l, tag };
                if zeroed {
                    // SAFETY: a fresh block of `l.size()` bytes.
                    let s = unsafe { core::slice::from_raw_parts(p.as_ptr(), l.size()) };
                    assert!(s.iter().all(|&x| x == 0), "allocate_zeroed not zeroed");
                }
                fill(&b);
                live.push(b);
            }
            2 | 3 if !live.is_empty() => {
                let i = pick(live.len());
                let old = live[i].layout;
                let want = layout(&op[1..4]);
                let new = Layout::from_size_align(want.size().max(old.size()), want.align()).unwrap();
                check(&live[i]);
                // SAFETY: a live block with `old`; `new` is not smaller.
                let r = unsafe {
                    if op[0] % 6 == 2 {
                        (&heap).grow(live[i].ptr, old, new)
                    } else {
                        (&heap).grow_zeroed(live[i].ptr, old, new)
                    }
                };
                if let Ok(p) = r {
                    let p = p.cast::<u8>();
                    // SAFETY: the grown block holds `new.size()` bytes; the
                    // first `old.size()` kept their pattern.
                    let s = unsafe { core::slice::from_raw_parts(p.as_ptr(), old.size()) };
                    assert!(s.iter().all(|&x| x == live[i].tag), "grow lost contents");
                    if op[0] % 6 == 3 {
                        // SAFETY: as above.
                        let t = unsafe {
                            core::slice::from_raw_parts(p.as_ptr().add(old.size()), new.size() - old.size())
                        };
                        assert!(t.iter().all(|&x| x == 0), "grow_zeroed tail not zero");
                    }
                    live[i] = Live { ptr: p, layout: new, tag: live[i].tag };
                    fill(&live[i]);
                }
            }
            4 if !live.is_empty() => {
                let i = pick(live.len());
                let old = live[i].layout;
                let size = if old.size() == 0 { 0 } else { op[1] as usize * old.size() / 256 };
                let new = Layout::from_size_align(size, old.align()).unwrap();
                check(&live[i]);
                // SAFETY: a live block with `old`; `new` is not larger.
                if let Ok(p) = unsafe { (&heap).shrink(live[i].ptr, old, new) } {
                    live[i] = Live { ptr: p.cast(), layout: new, tag: live[i].tag };
                    check(&live[i]);
                }
            }
            5 if !live.is_empty() => {
                let b = live.swap_remove(pick(live.len()));
                check(&b);
                // SAFETY: a live block with its layout, freed once.
                unsafe { (&heap).deallocate(b.ptr, b.layout) };
            }
            _ => {}
        }
    }
    heap.validate();
    for b in live.drain(..) {
        check(&b);
        // SAFETY: as above.
        unsafe { (&heap).deallocate(b.ptr, b.layout) };
    }
    let s = heap.stats();
    assert_eq!((s.bytes_requested, s.bytes_in_use), (0, 0), "{s:?}");
    heap.validate();
});
