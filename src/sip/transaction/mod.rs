//! RFC 3261 §17 transactions (placeholder until the transaction layer lands).

/// Timer values of RFC 3261 §17 (T1, T2, T4).
#[derive(Debug, Clone, Copy)]
pub struct Timers {
    pub t1: std::time::Duration,
    pub t2: std::time::Duration,
    pub t4: std::time::Duration,
}

impl Default for Timers {
    fn default() -> Self {
        Timers {
            t1: std::time::Duration::from_millis(500),
            t2: std::time::Duration::from_secs(4),
            t4: std::time::Duration::from_secs(5),
        }
    }
}
