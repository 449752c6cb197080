//! Waiting without a lock that parks: spin briefly, then yield the CPU
//! (`sched_yield`/`SwitchToThread`, a system call, no allocation).

/// Waits while `busy()` holds: 64 spins, then a yield per check.
#[inline]
pub(crate) fn wait_while(mut busy: impl FnMut() -> bool) {
    let mut spins = 0u32;
    while busy() {
        if spins < 64 {
            spins += 1;
            core::hint::spin_loop();
        } else {
            std::thread::yield_now();
        }
    }
}
