//! Membership: SWIM-like failure detection (a sans-IO core) and the epoch view derived from it.
//!
//! The core ([`Membership`]) never reads a clock, never does I/O and draws randomness only from
//! a seeded ChaCha8 generator: time and received messages come in as arguments, messages to send
//! and events come out of [`Membership::poll_output`]. The network shell drives it.
//!
//! Protocol, in short: each `probe_interval` a member pings the next member of a shuffled
//! round-robin order; without an ack after `probe_timeout` it asks `indirect_probes` random
//! others to ping on its behalf; without any ack by the end of the interval the target becomes
//! Suspect. A suspicion expires into Dead after a Lifeguard-style timeout (scaled with the
//! cluster size, shortened by independent confirmations) unless the suspect refutes it by
//! gossiping Alive with a higher incarnation. State changes ride on every message
//! (piggybacking); a periodic full-state push-pull repairs whatever gossip missed and heals
//! views after partitions.
//!
//! **Invariant:** a member never declares itself Suspect, Dead or Left except by [`Membership::leave`].

mod broadcast;
// The scheduler leader of a view: a pure function of the live set, computed with every epoch.
mod core;
pub mod leader;
mod types;

pub use self::core::Membership;
pub use self::types::{
    Config, Epoch, MemberId, MemberInfo, MemberState, MembershipEvent, Message, Output, Update,
    MAX_ADDR_LEN, MAX_ID_LEN, MAX_MEMBERS, MAX_PUSH_PULL, MAX_UPDATES,
};
