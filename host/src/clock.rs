//! CLOCK_BOOTTIME: the clock fencing deadlines are kept on.
//!
//! It counts time spent suspended (unlike CLOCK_MONOTONIC) and never jumps
//! with NTP or an operator's `date` (unlike the wall clock), so a node
//! frozen with SIGSTOP or a suspended VM sees, when it wakes, that its
//! deadline has passed.

/// CLOCK_BOOTTIME now, in nanoseconds.
pub fn boottime_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on
    // every Linux this runs on (2.6.39+), so the call cannot fail.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn it_moves_forward() {
        let a = super::boottime_ns();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = super::boottime_ns();
        assert!(b >= a + 2_000_000, "{a} -> {b}");
    }
}
