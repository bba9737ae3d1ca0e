//! Exponential back-off, one formula for every retry loop: the kubelet's container restarts and
//! image pulls (Kubernetes' 10 s doubling to 5 min), its sandbox retries (1 s to 30 s) and the
//! Job controller's pod failures (10 s to 6 min).

/// A delay that starts at `initial` seconds and doubles per failure up to `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: i64,
    pub max: i64,
}

impl Backoff {
    /// Kubernetes' container restart and image pull back-off: 10 s, doubling, at most 5 min.
    pub const KUBELET: Backoff = Backoff {
        initial: 10,
        max: 300,
    };

    /// The delay after `failures` failures in a row: none before the first,
    /// `initial · 2^(failures − 1)` after, at most `max`.
    pub fn after(self, failures: u32) -> i64 {
        if failures == 0 {
            return 0;
        }
        let doublings = (failures - 1).min(32);
        self.initial.saturating_mul(1i64 << doublings).min(self.max)
    }

    /// The delay that follows `current`: `initial` after none, else twice it, at most `max`.
    pub fn next(self, current: i64) -> i64 {
        if current <= 0 {
            self.initial
        } else {
            current.saturating_mul(2).min(self.max)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap() {
        let b = Backoff::KUBELET;
        let delays: Vec<i64> = (0..8).map(|n| b.after(n)).collect();
        assert_eq!(delays, [0, 10, 20, 40, 80, 160, 300, 300]);
        assert_eq!(b.after(u32::MAX), 300);
        let sandbox = Backoff {
            initial: 1,
            max: 30,
        };
        let delays: Vec<i64> = (1..8).map(|n| sandbox.after(n)).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn next_follows_after() {
        let b = Backoff::KUBELET;
        let mut d = 0;
        for n in 1..12 {
            d = b.next(d);
            assert_eq!(d, b.after(n), "after {n} failures");
        }
    }
}
