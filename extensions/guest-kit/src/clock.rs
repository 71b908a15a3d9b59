//! Time and randomness from the host (`wasi:clocks`, `wasi:random`).

use wasip2::clocks::{monotonic_clock, wall_clock};

/// Milliseconds since the Unix epoch (host wall clock).
pub fn now_ms() -> u64 {
    let t = wall_clock::now();
    t.seconds
        .saturating_mul(1000)
        .saturating_add(u64::from(t.nanoseconds / 1_000_000))
}

/// Monotonic nanoseconds (for durations and deadlines).
pub fn monotonic_ns() -> u64 {
    monotonic_clock::now()
}

/// `prefix` and 24 random hex digits: ids for execs and temporary files.
pub fn random_id(prefix: &str) -> String {
    let bytes = wasip2::random::random::get_random_bytes(12);
    let mut out = String::with_capacity(prefix.len() + 24);
    out.push_str(prefix);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Sleeps `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000)).block();
}
