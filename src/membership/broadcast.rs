//! The piggyback queue: one pending update per member, least-sent and most-recent first.

use std::collections::BTreeMap;

use super::types::{MemberId, Update};

#[derive(Debug)]
struct Pending {
    update: Update,
    transmits: u32,
    order: u64,
}

/// Updates waiting to ride on outgoing messages. A newer update about a member replaces the
/// older one; an update is dropped after it was sent `limit` times.
#[derive(Debug, Default)]
pub(crate) struct Broadcasts {
    pending: BTreeMap<MemberId, Pending>,
    counter: u64,
}

impl Broadcasts {
    pub(crate) fn push(&mut self, update: Update) {
        self.counter += 1;
        let id = update.member.id.clone();
        self.pending.insert(
            id,
            Pending {
                update,
                transmits: 0,
                order: self.counter,
            },
        );
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Take up to `max` updates to piggyback, counting the transmission.
    pub(crate) fn take(&mut self, max: usize, limit: u32) -> Vec<Update> {
        if max == 0 || self.pending.is_empty() {
            return Vec::new();
        }
        let mut order: Vec<(u32, std::cmp::Reverse<u64>, &MemberId)> = self
            .pending
            .iter()
            .map(|(id, p)| (p.transmits, std::cmp::Reverse(p.order), id))
            .collect();
        if order.len() > max {
            order.select_nth_unstable(max);
            order.truncate(max);
        }
        order.sort_unstable();
        let chosen: Vec<MemberId> = order
            .into_iter()
            .take(max)
            .map(|(_, _, id)| id.clone())
            .collect();
        let mut out = Vec::with_capacity(chosen.len());
        for id in chosen {
            let done = match self.pending.get_mut(&id) {
                Some(p) => {
                    p.transmits += 1;
                    out.push(p.update.clone());
                    p.transmits >= limit
                }
                None => false,
            };
            if done {
                self.pending.remove(&id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::{MemberInfo, MemberState};

    fn up(id: &str, inc: u64) -> Update {
        Update {
            member: MemberInfo {
                id: id.into(),
                addr: String::new(),
                incarnation: inc,
                state: MemberState::Alive,
            },
            by: id.into(),
        }
    }

    #[test]
    fn newest_first_and_limited() {
        let mut b = Broadcasts::default();
        b.push(up("a", 1));
        b.push(up("b", 1));
        let first = b.take(1, 2);
        assert_eq!(first[0].member.id, "b");
        let second = b.take(1, 2);
        assert_eq!(second[0].member.id, "a", "least-sent first");
        b.take(2, 2);
        assert_eq!(b.len(), 0, "dropped after the limit");
    }

    #[test]
    fn newer_update_replaces() {
        let mut b = Broadcasts::default();
        b.push(up("a", 1));
        b.push(up("a", 2));
        assert_eq!(b.len(), 1);
        assert_eq!(b.take(5, 1)[0].member.incarnation, 2);
    }
}
