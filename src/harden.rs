//! Checks against misuse that would otherwise corrupt the heap silently.
//!
//! **Every build: the free mark** [tag:free-mark]. A freed block holds
//! its heap's mark in one word; allocation clears it. A block handed to
//! `free` that already holds the mark is a double free, reported before it
//! is linked a second time (as glibc's tcache key, but without its
//! confirming walk, which a thread freeing into another's pool could not
//! do safely). The mark is random, drawn per heap ([`new_mark`]) when its
//! layer 1 maps its first chunk:
//!
//! * a small block holds it in its second word;
//! * a medium block, in a thread's medium cache or in layer 1's free
//!   lists, in its third (the first two hold the cache's link and size,
//!   or layer 1's free-list links); layer 1 clears it when it hands the
//!   block out. The sized free's fast path checks only the mark; other
//!   medium frees check the block's header too.
//!
//! Why random, and not a value the free path has at hand (such as the
//! pool header's address): a live block's word may hold bytes the program
//! never wrote (an enum's unused payload, padding), copied from wherever
//! the value was built, often the stack, where the allocator's own
//! registers are spilled. A pool address is spilled there all the time
//! (a binary-trees benchmark hit it: a `Box` of a dataless enum variant
//! carried its pool's address in its second word); a random mark lives
//! in a register for three instructions and nowhere else.
//!
//! Cost on the small fast path: a load of the mark, a compare, a branch
//! and a store on free, a store on allocation (README, Security, gives the
//! measured count).
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
use core::sync::atomic::Ordering::{Acquire, Relaxed, Release};

/// Seeds of the secrets (0 until [`init`]).
static SEED: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);
/// The key of encoded free-list links.
#[cfg(feature = "hardened")]
static LINK_KEY: AtomicUsize = AtomicUsize::new(0);
/// State of the generator behind [`random`].
#[cfg(feature = "hardened")]
static RANDOM: core::sync::atomic::AtomicU64 = core::sync::atomic::AtomicU64::new(0);

/// Sets the process's secrets if they are not set yet. Called by layer 1
/// before it hands out any memory; concurrent callers agree on one value
/// of each (a secret is set once, by compare-and-swap, before the seed
/// that says they are all set, which is published with Release).
#[cold]
pub(crate) fn init() {
    if SEED.load(Acquire) != 0 {
        return;
    }
    let seed = entropy() | 1;
    #[cfg(feature = "hardened")]
    {
        let _ = LINK_KEY.compare_exchange(0, mix(seed ^ 0x5555) as usize | 1, Relaxed, Relaxed);
        let _ = RANDOM.compare_exchange(0, mix(seed ^ 0xaaaa) | 1, Relaxed, Relaxed);
    }
    let _ = SEED.compare_exchange(0, seed, Release, Acquire);
}

/// A fresh free mark for a heap: random, never 0 (the unset state, and
/// what allocation writes). Each heap draws its own.
#[cold]
pub(crate) fn new_mark() -> usize {
    static DRAWS: AtomicUsize = AtomicUsize::new(0);
    init();
    let draw = DRAWS.fetch_add(1, Relaxed) as u64;
    (mix(SEED.load(Acquire) ^ draw.wrapping_mul(0x9e37_79b9_7f4a_7c15)) as usize)
        | 1 << (usize::BITS - 1)
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
    // Under Miri only the addresses are mixed in.
    #[cfg_attr(miri, allow(unused_mut))]
    let mut seed =
        (&raw const local).addr() as u64 ^ ((&raw const SEED).addr() as u64).rotate_left(32);
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
        let mark = new_mark();
        assert_ne!(mark, 0);
        assert_ne!(new_mark(), mark, "each heap draws its own");
        let mut word = 0usize;
        // SAFETY: a local word.
        unsafe {
            assert!(
                set_mark(&raw mut word, mark),
                "an unmarked word takes the mark"
            );
            assert_eq!(word, mark);
            assert!(
                !set_mark(&raw mut word, mark),
                "a marked word is a double free"
            );
            assert!(is_marked(&raw mut word, mark));
            clear_mark(&raw mut word);
            assert!(!is_marked(&raw mut word, mark));
            assert!(set_mark(&raw mut word, mark), "allocation clears the mark");
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
