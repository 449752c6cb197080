//! Small size classes: the request-size ↔ block-size arithmetic of layer 2.
//!
//! | request (bytes) | block size | class |
//! |-----------------|-----------:|------:|
//! | 1 – 16          | 16         | 0     |
//! | 17 – 32         | 32         | 1     |
//! | …               | …          | …     |
//! | 497 – 512       | 512        | 31    |
//!
//! A request with alignment `a > ALIGNMENT` is served by the class of its
//! size rounded up to `a`: that block size is a multiple of `a`, and blocks
//! sit at multiples of their size from a pool-aligned base, so they are
//! `a`-aligned ([ref:pool-data-aligned]).

use crate::config::{
    ALIGNMENT, ALIGNMENT_SHIFT, NB_SMALL_SIZE_CLASSES, POOL_SIZE, SMALL_REQUEST_THRESHOLD,
};

/// Index of a small size class, `0..NB_SMALL_SIZE_CLASSES`.
pub(crate) type SizeClass = usize;

/// Size class serving `size` bytes at alignment `align`, or `None` if the
/// request is not small.
#[inline]
pub(crate) const fn class_of(size: usize, align: usize) -> Option<SizeClass> {
    if let Some(class) = common_class_of(size, align) {
        return Some(class);
    }
    if size > SMALL_REQUEST_THRESHOLD || align > SMALL_REQUEST_THRESHOLD {
        return None;
    }
    // A zero-byte request gets a block of its own like a one-byte request.
    let size = if size == 0 { 1 } else { size };
    // Both at most 512 here, so the rounding does not overflow.
    let padded = if align > ALIGNMENT {
        (size + align - 1) & !(align - 1)
    } else {
        size
    };
    if padded > SMALL_REQUEST_THRESHOLD {
        return None;
    }
    Some((padded - 1) >> ALIGNMENT_SHIFT)
}

/// [`class_of`]'s common case in one test: 1..=512 bytes at the default
/// alignment; `None` for everything else.
#[inline(always)]
pub(crate) const fn common_class_of(size: usize, align: usize) -> Option<SizeClass> {
    if size.wrapping_sub(1) < SMALL_REQUEST_THRESHOLD && align <= ALIGNMENT {
        return Some((size - 1) >> ALIGNMENT_SHIFT);
    }
    None
}

/// Bytes in each block of `class`.
#[inline]
pub(crate) const fn block_size(class: SizeClass) -> usize {
    (class + 1) << ALIGNMENT_SHIFT
}

/// Blocks a pool of `class` holds.
#[inline]
pub(crate) const fn blocks_per_pool(class: SizeClass) -> usize {
    POOL_SIZE / block_size(class)
}

/// The index of the block at byte `offset` of a pool of `class`, if a block
/// starts there: a multiplication by a reciprocal, not a division
/// (`hardened` checks every freed pointer this way). `ceil(2^32 / size)`
/// is exact for offsets below `2^32 / size`, far above `POOL_SIZE`.
#[cfg(feature = "hardened")]
#[inline]
pub(crate) fn block_index(class: SizeClass, offset: usize) -> Option<usize> {
    // A static: indexing a `const` array copies it to the stack first.
    static RECIPROCALS: [u64; NB_SMALL_SIZE_CLASSES] = {
        let mut r = [0; NB_SMALL_SIZE_CLASSES];
        let mut c = 0;
        while c < NB_SMALL_SIZE_CLASSES {
            r[c] = (1u64 << 32).div_ceil(block_size(c) as u64);
            c += 1;
        }
        r
    };
    if offset >= POOL_SIZE {
        return None;
    }
    let index = ((offset as u64 * RECIPROCALS[class]) >> 32) as usize;
    (index * block_size(class) == offset).then_some(index)
}

const _: () = assert!(block_size(NB_SMALL_SIZE_CLASSES - 1) == SMALL_REQUEST_THRESHOLD);
const _: () = assert!(blocks_per_pool(NB_SMALL_SIZE_CLASSES - 1) >= 2);
const _: () = assert!(blocks_per_pool(0) <= u32::MAX as usize);
const _: () = assert!(block_size(0) == ALIGNMENT);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_small_request_maps_to_the_smallest_fitting_aligned_class() {
        let mut align = 1;
        while align <= 2 * SMALL_REQUEST_THRESHOLD {
            for size in 0..=SMALL_REQUEST_THRESHOLD + 1 {
                let expect = (1..=NB_SMALL_SIZE_CLASSES).map(|c| c - 1).find(|&c| {
                    block_size(c) >= size.max(1)
                        && block_size(c).is_multiple_of(align.max(ALIGNMENT))
                });
                assert_eq!(class_of(size, align), expect, "size {size} align {align}");
            }
            align *= 2;
        }
    }

    #[test]
    fn classes_are_16_byte_steps_up_to_512() {
        let sizes: Vec<usize> = (0..NB_SMALL_SIZE_CLASSES).map(block_size).collect();
        assert_eq!(sizes.len(), 32);
        assert_eq!(sizes[0], 16);
        assert_eq!(sizes[31], 512);
        assert!(sizes.windows(2).all(|w| w[1] - w[0] == ALIGNMENT));
        assert_eq!(blocks_per_pool(0), 1024);
        assert_eq!(blocks_per_pool(31), 32);
        assert_eq!(ALIGNMENT, 16);
    }

    #[cfg(feature = "hardened")]
    #[test]
    fn block_index_finds_block_starts_exactly() {
        for class in 0..NB_SMALL_SIZE_CLASSES {
            for offset in 0..POOL_SIZE + 64 {
                let expect = (offset < POOL_SIZE && offset % block_size(class) == 0)
                    .then(|| offset / block_size(class));
                assert_eq!(
                    block_index(class, offset),
                    expect,
                    "class {class} offset {offset}"
                );
            }
        }
    }
}
