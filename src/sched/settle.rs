//! When a leader may act on its view. A freshly started agent sees only itself and believes
//! itself leader while its peers are alive; acting then would replace every pod of every
//! node it has not heard from yet. So a leader acts only once its membership has settled:
//! it has seen a peer and its live set has not changed for [`SETTLE`], or it has been up for
//! [`STARTUP_GRACE`] (a lone node, or one whose peers are really gone). Once open, the gate
//! stays open for the life of the process: a failover must not wait.

use std::time::Duration;

/// How long the live set must have been stable, once a peer has been seen.
pub const SETTLE: Duration = Duration::from_secs(2);
/// After this long alone, a node acts anyway (single-node clusters, isolated restarts).
pub const STARTUP_GRACE: Duration = Duration::from_secs(10);

/// The gate, one per process life.
#[derive(Clone, Debug, Default)]
pub struct Settle {
    open: bool,
}

impl Settle {
    /// `uptime`: since this process started; `view_age`: since its live set last changed;
    /// `peers`: other members currently alive in its view.
    pub fn may_act(&mut self, uptime: Duration, view_age: Duration, peers: usize) -> bool {
        if !self.open && (uptime >= STARTUP_GRACE || (peers > 0 && view_age >= SETTLE)) {
            self.open = true;
        }
        self.open
    }

    pub fn is_open(&self) -> bool {
        self.open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn alone_at_start_waits_for_the_grace() {
        let mut g = Settle::default();
        assert!(!g.may_act(S, S, 0));
        assert!(!g.may_act(5 * S, 5 * S, 0), "alone and young: not yet");
        assert!(g.may_act(STARTUP_GRACE, 5 * S, 0));
    }

    #[test]
    fn with_peers_it_waits_for_a_stable_view_then_stays_open() {
        let mut g = Settle::default();
        assert!(
            !g.may_act(S, Duration::from_millis(300), 4),
            "view still changing"
        );
        assert!(g.may_act(3 * S, SETTLE, 4));
        assert!(
            g.may_act(4 * S, Duration::ZERO, 0),
            "open for the life of the process"
        );
    }
}
