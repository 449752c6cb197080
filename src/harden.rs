//! Checks against misuse that would otherwise corrupt the heap silently.
//!
//! **Every build: the free mark** [tag:free-mark]. A freed block holds a
//! mark in one word; allocation clears it. A block handed to `free` that
//! already holds its mark is a double free, reported before it is linked
//! a second time (as glibc's tcache key, but without its confirming walk,
//! which a thread freeing into another's pool could not do safely):
//!
//! * a small block: its second word holds the address of its pool's
//!   header. No live block can hold that value by accident: pool headers
//!   are the heap's own metadata, where no pointer a program holds can
//!   point (not even one past the end of a block: headers sit in the
//!   arena's first pool, apart from all blocks). It costs no load: the free
//!   path has the header's address already. With `hardened` it is also
//!   XORed with the secret below, so it cannot be forged.
//! * a medium block in a thread's medium cache: its third word (the first
//!   two hold the cache's link and size) holds a per-process random
//!   secret. Medium blocks in layer 1's free lists are caught by their
//!   headers instead.
//!
//! Cost on the small fast path: a compare, a branch and a store on free, a
//! store on allocation (README, Security, gives the measured count).
//!
//! **Feature `hardened`** adds what costs more (see README, Security):
//! free-list links stored encoded with a second secret and the link's own
//! address ([`encode`]), checked when followed ([`decode`] callers);
//! fresh blocks of a pool handed out in random order ([`random`]); guard
//! pages; every freed pointer checked against the arena map, its layout
//! against its block's size class.
//!
//! The secrets are set when layer 1 maps its first chunk ([`init`]), so
//! before any block exists; they never change afterwards.

use core::sync::atomic::AtomicUsize;
use core::sync::atomic::Ordering::Relaxed;

/// The free mark (0 until [`init`]).
static MARK: AtomicUsize = AtomicUsize::new(0);
/// The key of encoded free-list links.
#[cfg(feature = "hardened")]
static LINK_KEY: AtomicUsize = AtomicUsize::new(0);
/// State of the generator behind [`random`].
#[cfg(feature = "hardened")]
static RANDOM: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Sets the secrets if they are not set yet. Called by layer 1 before it
/// hands out any memory; concurrent callers agree on one value.
#[cold]
pub(crate) fn init() {
    if MARK.load(Relaxed) != 0 {
        return;
    }
    let seed = entropy();
    // Never 0 (the unset state, and what allocation writes).
    let mark = (mix(seed) as usize) | 1 << (usize::BITS - 1);
    let _ = MARK.compare_exchange(0, mark, Relaxed, Relaxed);
    #[cfg(feature = "hardened")]
    {
        let _ = LINK_KEY.compare_exchange(0, mix(seed ^ 0x5555) as usize, Relaxed, Relaxed);
        let _ = RANDOM.compare_exchange(0, mix(seed ^ 0xaaaa) | 1, Relaxed, Relaxed);
    }
}

/// The free mark of medium blocks (a small block's is its pool's, see
/// `Pool::free_mark`).
#[inline(always)]
pub(crate) fn mark() -> usize {
    MARK.load(Relaxed)
}

/// Checks and sets free mark `mark` at `slot`, a word of a block being
/// freed: `false` if the mark was already there (a double free: the
/// caller reports it and nothing is written).
///
/// # Safety
///
/// `slot` is a word of a block the caller is freeing (ours to write).
#[inline(always)]
pub(crate) unsafe fn set_mark(slot: *mut usize, mark: usize) -> bool {
    // SAFETY: caller's contract.
    unsafe {
        if is_marked(slot, mark) {
            return false;
        }
        put_mark(slot, mark);
    }
    true
}

/// Whether `slot`, a word of a block being freed, holds free mark `mark`.
///
/// # Safety
///
/// `slot` is a readable word of a block the caller is freeing.
#[inline(always)]
pub(crate) unsafe fn is_marked(slot: *mut usize, mark: usize) -> bool {
    crate::valgrind::defined(slot.cast(), size_of::<usize>());
    // SAFETY: caller's contract.
    let marked = unsafe { slot.read() } == mark;
    crate::valgrind::noaccess(slot.cast(), size_of::<usize>());
    marked
}

/// Writes free mark `mark` at `slot`, a word of a block being freed.
///
/// # Safety
///
/// `slot` is a word of a block the caller is freeing (ours to write).
#[inline(always)]
pub(crate) unsafe fn put_mark(slot: *mut usize, mark: usize) {
    crate::valgrind::defined(slot.cast(), size_of::<usize>());
    // SAFETY: caller's contract.
    unsafe { slot.write(mark) };
    crate::valgrind::noaccess(slot.cast(), size_of::<usize>());
}

/// Clears the free mark at `slot`, a word of a block being allocated.
///
/// # Safety
///
/// `slot` is a word of a block the caller is handing out.
#[inline(always)]
pub(crate) unsafe fn clear_mark(slot: *mut usize) {
    // Memcheck: the word is written before the block is handed out (and
    // marked allocated-but-undefined).
    crate::valgrind::defined(slot.cast(), size_of::<usize>());
    // SAFETY: caller's contract.
    unsafe { slot.write(0) };
}

/// A free-list link to `next`, to be stored at `slot`: with `hardened`,
/// XORed with the link key and the slot's address, then rotated, so a
/// stray or hostile write of a plain address decodes to garbage (which
/// the reader's check refuses) and one block's link reveals neither the
/// key nor its neighbours' links. Without `hardened`, `next` itself.
#[inline(always)]
pub(crate) fn encode(next: *mut u8, slot: *mut u8) -> *mut u8 {
    #[cfg(feature = "hardened")]
    {
        let key = LINK_KEY.load(Relaxed);
        next.map_addr(|a| (a ^ key ^ slot.addr()).rotate_left(key as u32 % usize::BITS))
    }
    #[cfg(not(feature = "hardened"))]
    {
        let _ = slot;
        next
    }
}

/// The link [`encode`] stored at `slot` as `stored`.
#[inline(always)]
pub(crate) fn decode(stored: *mut u8, slot: *mut u8) -> *mut u8 {
    #[cfg(feature = "hardened")]
    {
        let key = LINK_KEY.load(Relaxed);
        stored.map_addr(|a| a.rotate_right(key as u32 % usize::BITS) ^ key ^ slot.addr())
    }
    #[cfg(not(feature = "hardened"))]
    {
        let _ = slot;
        stored
    }
}

/// 64 random bits, without a lock or a system call (SplitMix64 over a
/// shared counter seeded from [`init`]). Not for cryptography: it makes
/// the order of fresh blocks unpredictable to a program that cannot read
/// the heap.
#[cfg(feature = "hardened")]
pub(crate) fn random() -> u64 {
    mix(RANDOM.fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed))
}

/// SplitMix64's finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Entropy for the secrets: the kernel's 16 random bytes given to every
/// process (Linux `AT_RANDOM`), mixed with addresses (ASLR) and the time.
fn entropy() -> u64 {
    let local = 0u8;
    let mut seed =
        (&raw const local).addr() as u64 ^ ((&raw const MARK).addr() as u64).rotate_left(32);
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        // SAFETY: getauxval has no preconditions; AT_RANDOM's value, when
        // present, is the address of 16 bytes that live as long as the
        // process.
        unsafe {
            let at = libc::getauxval(libc::AT_RANDOM) as usize;
            if at != 0 {
                let bytes = core::ptr::with_exposed_provenance::<[u8; 16]>(at).read_unaligned();
                seed ^= u64::from_ne_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
                seed = mix(seed) ^ u64::from_ne_bytes(bytes[8..].try_into().unwrap_or([0; 8]));
            }
        }
    }
    #[cfg(not(miri))]
    if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        seed ^= mix(t.as_nanos() as u64);
    }
    seed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_set_checked_and_cleared() {
        init();
        assert_ne!(mark(), 0);
        let mut word = 0usize;
        // SAFETY: a local word.
        unsafe {
            assert!(
                set_mark(&raw mut word, mark()),
                "an unmarked word takes the mark"
            );
            assert_eq!(word, mark());
            assert!(
                !set_mark(&raw mut word, mark()),
                "a marked word is a double free"
            );
            assert!(is_marked(&raw mut word, mark()));
            clear_mark(&raw mut word);
            assert!(!is_marked(&raw mut word, mark()));
            assert!(
                set_mark(&raw mut word, mark()),
                "allocation clears the mark"
            );
        }
    }

    #[test]
    fn links_decode_to_what_was_encoded() {
        init();
        let mut slot = [0u8; 16];
        let s = slot.as_mut_ptr();
        let next = s.wrapping_add(8);
        assert_eq!(decode(encode(next, s), s), next);
        assert_eq!(decode(encode(core::ptr::null_mut(), s), s).addr(), 0);
        #[cfg(feature = "hardened")]
        {
            assert_ne!(encode(next, s).addr(), next.addr());
            // The same link stored elsewhere is stored differently.
            assert_ne!(encode(next, next).addr(), encode(next, s).addr());
        }
    }
}
