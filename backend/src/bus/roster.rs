//! A room's members online, as the in-memory bus keeps them: the same rules as the Redis bus's roster script
//! (`bus/redis/roster.lua`), in one process, so there are no replicas to expire.

use std::collections::HashMap;

use shared::{MEMBERS_SHOWN, Nick};

use super::{RosterChange, RosterOp, RosterTiming};

/// One room's members: which connection uses which nick, and since when each nick is a member.
#[derive(Debug, Default)]
pub struct Roster {
    /// Connection → nick.
    conns: HashMap<u64, Nick>,
    /// Nick → live connections.
    counts: HashMap<Nick, u32>,
    /// Members in arrival order (including those within their grace period).
    order: Vec<Nick>,
    /// Members whose last connection closed: the deadline of their grace period.
    leaving: HashMap<Nick, u64>,
    /// Nick → the person holding it, when the client said.
    holders: HashMap<Nick, String>,
}

impl Roster {
    /// The person holding `nick`, when its client said (what a ban by nick also bans).
    pub fn holder(&self, nick: &Nick) -> Option<String> {
        self.holders.get(nick).cloned()
    }

    /// Whether the room has no members and nothing pending: the roster can be dropped.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty() && self.conns.is_empty()
    }

    /// Applies `op` for connection `conn` at `now` (milliseconds).
    pub fn apply(
        &mut self,
        conn: u64,
        op: RosterOp,
        now: u64,
        timing: RosterTiming,
    ) -> RosterChange {
        let mut change = RosterChange::default();
        self.settle(now, &mut change.departed);
        let listed = !matches!(op, RosterOp::Leave { .. } | RosterOp::Refresh);
        match op {
            RosterOp::Join { nick, person } => {
                if self.taken(&nick, person.as_deref()) {
                    change.taken = true;
                } else {
                    if let Some(old) = self.conns.insert(conn, nick.clone()) {
                        self.release(&old, now, timing, &mut change.departed);
                    }
                    change.arrived = self.enter(&nick, person);
                }
            }
            RosterOp::Rename { from, to, person } => {
                if self.taken(&to, person.as_deref()) {
                    change.taken = true;
                } else {
                    self.conns.insert(conn, to.clone());
                    change.arrived = self.enter(&to, person);
                    self.release_now(&from, &mut change.departed);
                }
            }
            RosterOp::Leave { nick } => {
                if self.conns.get(&conn) == Some(&nick) {
                    self.conns.remove(&conn);
                    self.release(&nick, now, timing, &mut change.departed);
                }
            }
            RosterOp::Refresh | RosterOp::List => {}
        }
        if listed {
            change.members = self.order.iter().take(MEMBERS_SHOWN).cloned().collect();
        }
        change.online = u32::try_from(self.order.len()).unwrap_or(u32::MAX);
        change
    }

    fn taken(&self, nick: &Nick, person: Option<&str>) -> bool {
        match (person, self.holders.get(nick)) {
            (Some(person), Some(holder)) => holder != person && self.order.contains(nick),
            _ => false,
        }
    }

    /// One more connection uses `nick`; whether it became a member.
    fn enter(&mut self, nick: &Nick, person: Option<String>) -> bool {
        *self.counts.entry(nick.clone()).or_default() += 1;
        if let Some(person) = person {
            self.holders.insert(nick.clone(), person);
        }
        self.leaving.remove(nick);
        if self.order.contains(nick) {
            false
        } else {
            self.order.push(nick.clone());
            true
        }
    }

    /// One connection of `nick` is gone; the last one starts the grace period.
    fn release(&mut self, nick: &Nick, now: u64, timing: RosterTiming, departed: &mut Vec<Nick>) {
        if self.decrement(nick) {
            if timing.grace_ms == 0 {
                self.drop_member(nick, departed);
            } else {
                self.leaving.insert(nick.clone(), now + timing.grace_ms);
            }
        }
    }

    /// One connection of `nick` took another nick: when it was the last, `nick` goes at once.
    fn release_now(&mut self, nick: &Nick, departed: &mut Vec<Nick>) {
        if self.decrement(nick) {
            self.drop_member(nick, departed);
        }
    }

    /// Whether that was the nick's last connection.
    fn decrement(&mut self, nick: &Nick) -> bool {
        match self.counts.get_mut(nick) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                self.counts.remove(nick);
                true
            }
            None => false,
        }
    }

    fn drop_member(&mut self, nick: &Nick, departed: &mut Vec<Nick>) {
        self.leaving.remove(nick);
        self.holders.remove(nick);
        if let Some(at) = self.order.iter().position(|n| n == nick) {
            self.order.remove(at);
            departed.push(nick.clone());
        }
    }

    /// Removes members whose grace period is over.
    fn settle(&mut self, now: u64, departed: &mut Vec<Nick>) {
        let over: Vec<Nick> = self
            .leaving
            .iter()
            .filter(|&(_, &deadline)| deadline <= now)
            .map(|(nick, _)| nick.clone())
            .collect();
        for nick in over {
            if self.counts.contains_key(&nick) {
                self.leaving.remove(&nick);
            } else {
                self.drop_member(&nick, departed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: RosterTiming = RosterTiming {
        grace_ms: 1_000,
        alive_ms: 3_000,
    };

    fn nick(n: &str) -> Nick {
        Nick::parse(n).unwrap()
    }

    fn join(n: &str, person: &str) -> RosterOp {
        RosterOp::Join {
            nick: nick(n),
            person: Some(person.into()),
        }
    }

    #[test]
    fn tabs_count_once_and_a_reconnect_within_the_grace_announces_nothing() {
        let mut r = Roster::default();
        assert!(r.apply(1, join("alice", "p-alice1"), 0, TIMING).arrived);
        let second = r.apply(2, join("alice", "p-alice1"), 10, TIMING);
        assert!(!second.arrived);
        assert_eq!((second.members, second.online), (vec![nick("alice")], 1));
        assert!(
            r.apply(
                1,
                RosterOp::Leave {
                    nick: nick("alice")
                },
                20,
                TIMING
            )
            .departed
            .is_empty()
        );
        assert!(
            r.apply(
                2,
                RosterOp::Leave {
                    nick: nick("alice")
                },
                30,
                TIMING
            )
            .departed
            .is_empty()
        );
        // Back within the grace period: still the same member, nothing to announce.
        let back = r.apply(3, join("alice", "p-alice1"), 500, TIMING);
        assert!(!back.arrived && back.departed.is_empty());
        assert_eq!(
            r.apply(
                3,
                RosterOp::Leave {
                    nick: nick("alice")
                },
                600,
                TIMING
            )
            .departed,
            vec![]
        );
        // Gone for longer than the grace period: the next op reports her once.
        assert_eq!(
            r.apply(0, RosterOp::Refresh, 1_599, TIMING).departed,
            vec![]
        );
        assert_eq!(
            r.apply(0, RosterOp::Refresh, 1_600, TIMING).departed,
            vec![nick("alice")]
        );
        assert_eq!(
            r.apply(0, RosterOp::Refresh, 5_000, TIMING).departed,
            vec![]
        );
        assert!(r.is_empty());
    }

    #[test]
    fn another_person_cannot_take_a_nick_in_use_or_in_its_grace() {
        let mut r = Roster::default();
        r.apply(1, join("bob", "p-bob-one"), 0, TIMING);
        assert!(r.apply(2, join("bob", "p-bob-two"), 1, TIMING).taken);
        r.apply(1, RosterOp::Leave { nick: nick("bob") }, 2, TIMING);
        assert!(r.apply(2, join("bob", "p-bob-two"), 3, TIMING).taken);
        let later = r.apply(2, join("bob", "p-bob-two"), 2_000, TIMING);
        assert!(!later.taken && later.arrived);
        assert_eq!(later.departed, vec![nick("bob")]);
        // A client that names no person is never refused.
        let anonymous = RosterOp::Join {
            nick: nick("bob"),
            person: None,
        };
        assert!(!r.apply(3, anonymous, 2_001, TIMING).taken);
    }

    #[test]
    fn a_rename_moves_the_member_at_once_and_keeps_the_order() {
        let mut r = Roster::default();
        r.apply(1, join("ann", "p-ann-one"), 0, TIMING);
        r.apply(2, join("al", "p-al-1234"), 1, TIMING);
        let renamed = r.apply(
            1,
            RosterOp::Rename {
                from: nick("ann"),
                to: nick("anna"),
                person: Some("p-ann-one".into()),
            },
            2,
            TIMING,
        );
        assert!(renamed.arrived);
        assert_eq!(renamed.departed, vec![nick("ann")]);
        assert_eq!(renamed.members, vec![nick("al"), nick("anna")]);
        assert_eq!(renamed.online, 2);
    }
}
