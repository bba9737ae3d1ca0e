//! The network shell: one actor owning the libp2p swarm. It admits peers (nothing but the
//! admission exchange flows before a peer proved membership), drives the membership core with
//! messages and time, pushes local document changes to every admitted peer (fast path), runs
//! pairwise automerge sync with a random peer every interval (anti-entropy), persists the
//! document, and publishes the membership view for the API.

mod actor;
mod behaviour;
pub mod protocol;

pub use actor::{run, NetConfig, NetError};
pub use behaviour::{build_swarm, Behaviour, BehaviourEvent, SwarmError};
