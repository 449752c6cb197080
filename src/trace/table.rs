//! The tracer's tables, on a heap of their own: the traces (one per traced
//! block, keyed by address) and the interned tracebacks they point to, each
//! holding the totals of its live traces, so that a snapshot reads one
//! entry per traceback rather than one per block.
//!
//! Memory comes from `MEM`, a [`RawHeap`] that is never traced and whose
//! entry points have no hooks: the tracer never allocates on a traced heap.
//! Everything here is guarded by `TRACER`, a crate lock (fork-safe, never
//! allocating), except the filter, read without it.

#[cfg(test)]
use super::hook::ONE;
use crate::RawHeap;
use crate::lock::GlobalLock;
use core::alloc::Layout;
use core::ptr::{NonNull, null_mut};
use core::sync::atomic::{AtomicU32, Ordering::Relaxed};
use parking_lot::lock_api::Mutex;

/// The tracer's own heap.
static MEM: RawHeap = RawHeap::new();

/// The tracer's state.
pub(super) static TRACER: Mutex<GlobalLock, Tracer> = Mutex::const_new(
    <GlobalLock as parking_lot::lock_api::RawMutex>::INIT,
    Tracer::new(),
);

/// log2 of the filter's counters.
const FILTER_BITS: u32 = 16;

/// A counting filter over traced addresses: `FILTER[filter_index(a)]` is
/// the number of traces whose address hashes there, so a zero means "not
/// traced" without the lock. Written only under `TRACER`'s lock (plain
/// stores, no read-modify-write); read anywhere. A free of block `a`
/// follows its allocation's trace by happens-before (whoever frees it got
/// it from the allocating thread), so it sees the count that includes it.
static FILTER: [AtomicU32; 1 << FILTER_BITS] = [const { AtomicU32::new(0) }; 1 << FILTER_BITS];

/// Fibonacci hashing's multiplier (2^64 / golden ratio).
const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

/// The filter counter of address `addr`.
#[inline(always)]
fn filter_index(addr: usize) -> usize {
    ((addr as u64 >> 4).wrapping_mul(GOLDEN) >> (64 - FILTER_BITS)) as usize
}

/// `false` if no trace has address `addr` (no lock taken); `true` if one
/// may.
#[inline(always)]
pub(super) fn may_contain(addr: usize) -> bool {
    FILTER[filter_index(addr)].load(Relaxed) != 0
}

/// Adds `delta` (wrapping) to `addr`'s filter counter. Under the lock.
fn filter_add(addr: usize, delta: u32) {
    let c = &FILTER[filter_index(addr)];
    c.store(c.load(Relaxed).wrapping_add(delta), Relaxed);
}

/// One traced block. Empty iff `key == 0`.
#[derive(Clone, Copy)]
struct Slot {
    /// The block's address.
    key: usize,
    /// Its domain (0: the heaps; others from `track`).
    domain: u32,
    /// Bytes and blocks (times `ONE`) it stands for (sampling estimates).
    bytes: u64,
    count: u64,
    /// Its interned traceback.
    tb: *mut Tb,
}

const EMPTY: Slot = Slot {
    key: 0,
    domain: 0,
    bytes: 0,
    count: 0,
    tb: null_mut(),
};

/// An interned traceback, followed in memory by `len` instruction
/// pointers. Invariant: `traces` is the number of slots whose `tb` is
/// this; `bytes` and `count` are the sums of their `bytes` and `count`.
#[repr(C)]
struct Tb {
    /// Next in its bucket of the intern set.
    next: *mut Tb,
    hash: u64,
    len: usize,
    traces: usize,
    bytes: u64,
    count: u64,
}

impl Tb {
    /// The instruction pointers of `tb`.
    ///
    /// # Safety
    ///
    /// `tb` is a live interned traceback (not freed by `clear`).
    unsafe fn ips<'a>(tb: *mut Tb) -> &'a [usize] {
        // SAFETY: `len` words follow the header in the same allocation
        // (`intern`), aligned since the header's size is a multiple of 8.
        unsafe { core::slice::from_raw_parts(tb.add(1).cast::<usize>(), (*tb).len) }
    }
}

/// A trace taken out by a resize, put back if the resize fails.
pub(super) struct Taken {
    slot: Slot,
    /// `Tracer::clears` when taken: the traceback is still live iff equal.
    clears: u64,
}

/// A live traceback as a snapshot copies it: its instruction pointers
/// are `ips[start..start + len]` of the copy.
#[derive(Clone, Copy, Debug)]
pub(super) struct TbCopy {
    pub(super) start: usize,
    pub(super) len: usize,
    pub(super) bytes: u64,
    pub(super) count: u64,
}

/// Bytes of each bump chunk tracebacks are carved from.
const CHUNK: usize = 64 << 10;
const CHUNK_LAYOUT: Layout = match Layout::from_size_align(CHUNK, 16) {
    Ok(l) => l,
    Err(_) => panic!(),
};

/// The traces and tracebacks. Invariants: `slots` is null iff `mask == 0`
/// (no table), else it has `mask + 1` slots, a power of two, `len` of them
/// full, `4 * len <= 3 * (mask + 1)`; a full slot is reachable from its
/// home `slot_index` by linear probing through full slots only. `buckets`
/// likewise with `tb_mask`, chains of interned tracebacks; every
/// traceback lies in a chunk of the `chunks` list.
pub(super) struct Tracer {
    slots: *mut Slot,
    mask: usize,
    len: usize,
    buckets: *mut *mut Tb,
    tb_mask: usize,
    tb_len: usize,
    /// Tracebacks with `traces > 0`, and their instruction pointers.
    tb_live: usize,
    ips_live: usize,
    /// The bump chunks: the newest, linked through their first word.
    chunks: *mut u8,
    /// Bytes used of the newest chunk.
    chunk_used: usize,
    /// Sum of the live traces' `bytes`, and its maximum since the clear.
    current: u64,
    peak: u64,
    /// Times cleared.
    clears: u64,
}

// SAFETY: the raw pointers are the tracer's own memory, used only under
// `TRACER`'s lock.
unsafe impl Send for Tracer {}

impl Tracer {
    pub(super) const fn new() -> Self {
        Tracer {
            slots: null_mut(),
            mask: 0,
            len: 0,
            buckets: null_mut(),
            tb_mask: 0,
            tb_len: 0,
            tb_live: 0,
            ips_live: 0,
            chunks: null_mut(),
            chunk_used: CHUNK,
            current: 0,
            peak: 0,
            clears: 0,
        }
    }

    /// The home slot of `key` in a table of `mask + 1` slots.
    fn slot_index(key: usize, mask: usize) -> usize {
        ((key as u64).wrapping_mul(GOLDEN) >> 32) as usize & mask
    }

    /// The slot holding (`key`, `domain`), if any.
    fn find(&self, key: usize, domain: u32) -> Option<usize> {
        if self.slots.is_null() {
            return None;
        }
        let mut i = Self::slot_index(key, self.mask);
        loop {
            // SAFETY: `i <= mask`, within the table (invariant).
            let s = unsafe { &*self.slots.add(i) };
            if s.key == 0 {
                return None;
            }
            if s.key == key && s.domain == domain {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Traces block `key` of `domain`, standing for `bytes` bytes and
    /// `count / ONE` blocks, allocated at `ips`. A trace already there is
    /// replaced. `false` if the tracer has no memory.
    pub(super) fn insert(
        &mut self,
        key: usize,
        domain: u32,
        bytes: u64,
        count: u64,
        ips: &[usize],
    ) -> bool {
        let Some(tb) = self.intern(ips) else {
            return false;
        };
        self.put(Slot {
            key,
            domain,
            bytes,
            count,
            tb,
        })
    }

    /// Stores `slot`, replacing a trace of the same block.
    fn put(&mut self, slot: Slot) -> bool {
        if let Some(i) = self.find(slot.key, slot.domain) {
            self.vacate(i);
        }
        if 4 * (self.len + 1) > 3 * (self.mask + 1) && !self.grow() {
            return false;
        }
        let mut i = Self::slot_index(slot.key, self.mask);
        // SAFETY: indices are masked into the table, which has a free slot
        // (load factor at most 3/4).
        unsafe {
            while (*self.slots.add(i)).key != 0 {
                i = (i + 1) & self.mask;
            }
            self.slots.add(i).write(slot);
            let tb = slot.tb;
            (*tb).traces += 1;
            if (*tb).traces == 1 {
                self.tb_live += 1;
                self.ips_live += (*tb).len;
            }
            (*tb).bytes += slot.bytes;
            (*tb).count += slot.count;
        }
        self.len += 1;
        filter_add(slot.key, 1);
        self.current += slot.bytes;
        self.peak = self.peak.max(self.current);
        true
    }

    /// Removes the trace of (`key`, `domain`), if any.
    pub(super) fn remove(&mut self, key: usize, domain: u32) {
        if let Some(i) = self.find(key, domain) {
            self.vacate(i);
        }
    }

    /// Removes and returns the trace of heap block `key`.
    pub(super) fn take(&mut self, key: usize) -> Option<Taken> {
        let i = self.find(key, 0)?;
        // SAFETY: `i` is a full slot of the table.
        let slot = unsafe { self.slots.add(i).read() };
        self.vacate(i);
        Some(Taken {
            slot,
            clears: self.clears,
        })
    }

    /// Puts back a trace taken from `key`, unless the traces were cleared
    /// since.
    pub(super) fn restore(&mut self, key: usize, taken: Taken) {
        if taken.clears == self.clears && taken.slot.key == key {
            self.put(taken.slot);
        }
    }

    /// Empties full slot `i`: uncounts it, then shifts back the slots of
    /// its probe run that may move (deletion without tombstones).
    fn vacate(&mut self, mut i: usize) {
        // SAFETY: `i` is a full slot; indices stay masked; `tb` of a full
        // slot is a live traceback (invariant).
        unsafe {
            let s = self.slots.add(i).read();
            let tb = s.tb;
            (*tb).traces -= 1;
            if (*tb).traces == 0 {
                self.tb_live -= 1;
                self.ips_live -= (*tb).len;
            }
            (*tb).bytes -= s.bytes;
            (*tb).count -= s.count;
            self.current -= s.bytes;
            filter_add(s.key, u32::MAX);
            self.len -= 1;
            let mut j = i;
            loop {
                j = (j + 1) & self.mask;
                let next = self.slots.add(j).read();
                if next.key == 0 {
                    break;
                }
                let home = Self::slot_index(next.key, self.mask);
                // `next` may fill the hole at `i` iff `i` lies cyclically
                // in [home, j).
                if (j.wrapping_sub(home) & self.mask) >= (j.wrapping_sub(i) & self.mask) {
                    self.slots.add(i).write(next);
                    i = j;
                }
            }
            self.slots.add(i).write(EMPTY);
        }
    }

    /// Doubles the table (at least 1024 slots). `false` if no memory.
    fn grow(&mut self) -> bool {
        let cap = ((self.mask + 1) * 2).max(1024);
        let Ok(layout) = Layout::array::<Slot>(cap) else {
            return false;
        };
        let Some(mem) = MEM.allocate(layout) else {
            return false;
        };
        let new = mem.as_ptr().cast::<Slot>();
        // SAFETY: `new` holds `cap` slots, ours; the old table (if any)
        // has `mask + 1` slots and is freed with its layout once moved.
        unsafe {
            for i in 0..cap {
                new.add(i).write(EMPTY);
            }
            if !self.slots.is_null() {
                for i in 0..=self.mask {
                    let s = self.slots.add(i).read();
                    if s.key != 0 {
                        let mut j = Self::slot_index(s.key, cap - 1);
                        while (*new.add(j)).key != 0 {
                            j = (j + 1) & (cap - 1);
                        }
                        new.add(j).write(s);
                    }
                }
                self.free_slots();
            }
        }
        self.slots = new;
        self.mask = cap - 1;
        true
    }

    /// Frees the slot table (not its traces' counts).
    fn free_slots(&mut self) {
        if let Some(p) = NonNull::new(self.slots.cast::<u8>()) {
            let layout = Layout::array::<Slot>(self.mask + 1).expect("allocated before");
            // SAFETY: allocated from `MEM` with this layout by `grow`.
            unsafe { MEM.deallocate(p, layout) };
        }
        self.slots = null_mut();
        self.mask = 0;
    }

    /// The interned traceback of `ips`, added if new. `None` if no memory.
    fn intern(&mut self, ips: &[usize]) -> Option<*mut Tb> {
        let hash = ips.iter().fold(ips.len() as u64, |h, &ip| {
            (h ^ ip as u64).wrapping_mul(GOLDEN).rotate_left(29)
        });
        if !self.buckets.is_null() {
            let mut tb = self.bucket(hash);
            while !tb.is_null() {
                // SAFETY: chains hold live interned tracebacks.
                unsafe {
                    if (*tb).hash == hash && Tb::ips(tb) == ips {
                        return Some(tb);
                    }
                    tb = (*tb).next;
                }
            }
        }
        if (self.buckets.is_null() || self.tb_len > self.tb_mask) && !self.grow_buckets() {
            return None;
        }
        let need = size_of::<Tb>() + size_of_val(ips);
        let tb = self.bump(need)?.cast::<Tb>();
        // SAFETY: `tb` has room for the header and `ips.len()` words,
        // aligned to 8 (`bump`); bucket pointers are in their table.
        unsafe {
            tb.write(Tb {
                next: null_mut(),
                hash,
                len: ips.len(),
                traces: 0,
                bytes: 0,
                count: 0,
            });
            core::ptr::copy_nonoverlapping(ips.as_ptr(), tb.add(1).cast::<usize>(), ips.len());
            let b = self.buckets.add(hash as usize & self.tb_mask);
            (*tb).next = *b;
            *b = tb;
        }
        self.tb_len += 1;
        Some(tb)
    }

    /// The head of `hash`'s chain.
    fn bucket(&self, hash: u64) -> *mut Tb {
        // SAFETY: masked into the bucket table, which exists (caller).
        unsafe { *self.buckets.add(hash as usize & self.tb_mask) }
    }

    /// Doubles the bucket table (at least 256). `false` if no memory.
    fn grow_buckets(&mut self) -> bool {
        let cap = ((self.tb_mask + 1) * 2).max(256);
        let Ok(layout) = Layout::array::<*mut Tb>(cap) else {
            return false;
        };
        let Some(mem) = MEM.allocate(layout) else {
            return false;
        };
        let new = mem.as_ptr().cast::<*mut Tb>();
        // SAFETY: `new` holds `cap` pointers; every chained traceback is
        // live and moved to its new chain once.
        unsafe {
            for i in 0..cap {
                new.add(i).write(null_mut());
            }
            if !self.buckets.is_null() {
                for i in 0..=self.tb_mask {
                    let mut tb = *self.buckets.add(i);
                    while !tb.is_null() {
                        let next = (*tb).next;
                        let b = new.add((*tb).hash as usize & (cap - 1));
                        (*tb).next = *b;
                        *b = tb;
                        tb = next;
                    }
                }
                self.free_buckets();
            }
        }
        self.buckets = new;
        self.tb_mask = cap - 1;
        true
    }

    fn free_buckets(&mut self) {
        if let Some(p) = NonNull::new(self.buckets.cast::<u8>()) {
            let layout = Layout::array::<*mut Tb>(self.tb_mask + 1).expect("allocated before");
            // SAFETY: allocated from `MEM` with this layout.
            unsafe { MEM.deallocate(p, layout) };
        }
        self.buckets = null_mut();
        self.tb_mask = 0;
    }

    /// `need` bytes (at most a chunk less its link), 8-aligned, from the
    /// newest chunk or a new one.
    fn bump(&mut self, need: usize) -> Option<*mut u8> {
        let need = need.next_multiple_of(8);
        debug_assert!(need <= CHUNK - 16);
        if self.chunk_used + need > CHUNK {
            let chunk = MEM.allocate(CHUNK_LAYOUT)?.as_ptr();
            // SAFETY: a fresh chunk; its first word links the older ones.
            unsafe { chunk.cast::<*mut u8>().write(self.chunks) };
            self.chunks = chunk;
            self.chunk_used = 16;
        }
        // SAFETY: within the newest chunk (checked above).
        let p = unsafe { self.chunks.add(self.chunk_used) };
        self.chunk_used += need;
        Some(p)
    }

    /// Forgets every trace and traceback and gives their memory back.
    pub(super) fn clear(&mut self) {
        // The filter's counts: zeroed one by one where traces are, or all
        // at once for big tables.
        if self.len > FILTER.len() / 8 {
            for c in &FILTER {
                c.store(0, Relaxed);
            }
        } else if !self.slots.is_null() {
            for i in 0..=self.mask {
                // SAFETY: within the table.
                let key = unsafe { (*self.slots.add(i)).key };
                if key != 0 {
                    FILTER[filter_index(key)].store(0, Relaxed);
                }
            }
        }
        self.free_slots();
        self.free_buckets();
        while !self.chunks.is_null() {
            let chunk = self.chunks;
            // SAFETY: a chunk of ours; its first word links the next.
            unsafe {
                self.chunks = chunk.cast::<*mut u8>().read();
                MEM.deallocate(NonNull::new_unchecked(chunk), CHUNK_LAYOUT);
            }
        }
        *self = Tracer {
            clears: self.clears + 1,
            ..Tracer::new()
        };
    }

    /// `(current, peak)` bytes.
    pub(super) fn memory(&self) -> (usize, usize) {
        (self.current as usize, self.peak as usize)
    }

    /// Sets the peak to the current bytes.
    pub(super) fn reset_peak(&mut self) {
        self.peak = self.current;
    }

    /// Number of live traces.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// `(tracebacks, instruction pointers)` a snapshot copies now.
    pub(super) fn live_sizes(&self) -> (usize, usize) {
        (self.tb_live, self.ips_live)
    }

    /// Copies every traceback with live traces into `tbs` and `ips`
    /// without allocating: `false` (and nothing copied) if their spare
    /// capacity is short.
    pub(super) fn copy_live(&self, tbs: &mut Vec<TbCopy>, ips: &mut Vec<usize>) -> bool {
        if tbs.capacity() - tbs.len() < self.tb_live || ips.capacity() - ips.len() < self.ips_live {
            return false;
        }
        if self.buckets.is_null() {
            return true;
        }
        for i in 0..=self.tb_mask {
            // SAFETY: within the bucket table; chains hold live tracebacks.
            unsafe {
                let mut tb = *self.buckets.add(i);
                while !tb.is_null() {
                    if (*tb).traces > 0 {
                        let frames = Tb::ips(tb);
                        tbs.push(TbCopy {
                            start: ips.len(),
                            len: frames.len(),
                            bytes: (*tb).bytes,
                            count: (*tb).count,
                        });
                        ips.extend_from_slice(frames);
                    }
                    tb = (*tb).next;
                }
            }
        }
        true
    }

    /// The traceback of (`key`, `domain`) into `out`: its length.
    pub(super) fn traceback_of(&self, key: usize, domain: u32, out: &mut [usize]) -> Option<usize> {
        let i = self.find(key, domain)?;
        // SAFETY: a full slot; its traceback is live.
        let ips = unsafe { Tb::ips((*self.slots.add(i)).tb) };
        let n = ips.len().min(out.len());
        out[..n].copy_from_slice(&ips[..n]);
        Some(n)
    }

    /// Checks every invariant (tests): counts, sums, probe runs, filter.
    #[cfg(test)]
    pub(super) fn validate(&self) {
        let mut full = 0;
        let mut bytes = 0;
        if !self.slots.is_null() {
            for i in 0..=self.mask {
                // SAFETY: within the table.
                let s = unsafe { self.slots.add(i).read() };
                if s.key == 0 {
                    continue;
                }
                full += 1;
                bytes += s.bytes;
                assert_eq!(self.find(s.key, s.domain), Some(i), "reachable");
                assert!(may_contain(s.key), "in the filter");
            }
        }
        assert_eq!(full, self.len);
        assert_eq!(bytes, self.current);
        assert!(4 * self.len <= 3 * (self.mask + 1) || self.slots.is_null());
        let (mut live, mut ips, mut traces, mut tb_bytes) = (0, 0, 0, 0);
        if !self.buckets.is_null() {
            for i in 0..=self.tb_mask {
                // SAFETY: within the bucket table; live chains.
                let mut tb = unsafe { *self.buckets.add(i) };
                while !tb.is_null() {
                    // SAFETY: a live traceback.
                    unsafe {
                        if (*tb).traces > 0 {
                            live += 1;
                            ips += (*tb).len;
                        }
                        traces += (*tb).traces;
                        tb_bytes += (*tb).bytes;
                        tb = (*tb).next;
                    }
                }
            }
        }
        assert_eq!((live, ips), (self.tb_live, self.ips_live));
        assert_eq!(traces, self.len);
        assert_eq!(tb_bytes, self.current);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracer of its own (not `TRACER`): the tables under test; the
    /// filter is shared, so addresses are far from any real block.
    fn check_ops(keys: &[usize]) {
        let mut t = Tracer::new();
        let base = 0x7000_0000_0000usize;
        for (n, &k) in keys.iter().enumerate() {
            let ips = [k % 7, 1, 2];
            assert!(t.insert(base + k * 16, 0, k as u64, ONE, &ips[..1 + n % 3]));
        }
        t.validate();
        let unique: std::collections::BTreeSet<_> = keys.iter().collect();
        assert_eq!(t.len(), unique.len());
        for &&k in unique.iter().step_by(2) {
            t.remove(base + k * 16, 0);
            t.validate();
        }
        for &&k in unique.iter().skip(1).step_by(2) {
            let mut out = [0; 4];
            assert!(t.traceback_of(base + k * 16, 0, &mut out).is_some());
        }
        t.clear();
        t.validate();
        assert_eq!(t.memory(), (0, 0));
    }

    #[test]
    fn insert_remove_clear() {
        let n = if cfg!(miri) { 40 } else { 5000 };
        check_ops(&(1..n).collect::<Vec<_>>());
        // Collisions: keys that share home slots, replaced keys.
        check_ops(&(1..n).map(|k| (k * 1024) % 4099).collect::<Vec<_>>());
    }

    #[test]
    fn snapshot_copy_needs_room() {
        let mut t = Tracer::new();
        let base = 0x7100_0000_0000usize;
        assert!(t.insert(base, 0, 10, ONE, &[1, 2, 3]));
        assert!(t.insert(base + 16, 0, 20, ONE, &[1, 2, 3]));
        assert!(t.insert(base + 32, 0, 5, ONE, &[4]));
        assert_eq!(t.live_sizes(), (2, 4));
        let (mut tbs, mut ips) = (Vec::new(), Vec::new());
        assert!(!t.copy_live(&mut tbs, &mut ips));
        tbs.reserve(2);
        ips.reserve(4);
        assert!(t.copy_live(&mut tbs, &mut ips));
        let mut got: Vec<_> = tbs
            .iter()
            .map(|c| {
                (
                    ips[c.start..c.start + c.len].to_vec(),
                    c.bytes,
                    c.count / ONE,
                )
            })
            .collect();
        got.sort();
        assert_eq!(got, vec![(vec![1, 2, 3], 30, 2), (vec![4], 5, 1)]);
        let taken = t.take(base).unwrap();
        assert_eq!(t.memory(), (25, 35));
        t.restore(base, taken);
        assert_eq!(t.memory(), (35, 35));
        t.validate();
        t.clear();
    }
}
