//! Cluster DNS, the pure core: the zone of Service names ([`zone`]) and the answer to one
//! query ([`answer`]). The server that receives queries, forwards the rest upstream and
//! rebuilds the zone on changes is `agent::dns`. See `docs/networking.md` ("DNS").

pub mod answer;
pub mod zone;

pub use answer::{
    respond, servfail, upstream_reply_matches, with_id, Decision, Transport, MAX_QUERY, TTL,
};
pub use zone::{
    dashed, entries, HeadlessEndpoint, NamedPort, ServiceEntry, ServiceTarget, Zone, ZoneRecord,
};

#[cfg(test)]
mod tests;
