//! The pure rules of DESIGN.md §7, apart from etcd: who should own a
//! group, what this node does next for one group, the fencing deadline,
//! when a keepalive is credited and when a fenced owner may reopen. Each
//! rule marked (M) in §7 is here and tested on its own; the driver only
//! feeds these functions what etcd said.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `members/<node>`: a Ready member under its lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub version: String,
    pub advertise: String,
    pub ready: bool,
    pub lease: i64,
    /// The last table-sync generation it holds.
    #[serde(default)]
    pub generation: u64,
    /// The newest executed-batch value format it reads (1 when absent:
    /// a build from before formats were advertised reads JSON only).
    #[serde(default = "first_format")]
    pub batch_format: u32,
}

fn first_format() -> u32 {
    1
}

/// The executed-batch value format every node of the cluster reads: the
/// oldest any configured node advertises, and 1 (JSON) while any of them
/// is not a member. A node that is down may come back on any build, and
/// it reads the batches put while it was away.
pub fn batch_format(nodes: &[String], members: &BTreeMap<String, Member>) -> u32 {
    nodes
        .iter()
        .map(|n| members.get(n).map_or(1, |m| m.batch_format))
        .min()
        .unwrap_or(1)
        .max(1)
}

/// `owners/<group>`: who owns it, under which lease; `pinned` by a
/// switchover. `handed_at` (ms) is set by a handback or switchover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerValue {
    pub node: String,
    pub lease: i64,
    #[serde(default)]
    pub pinned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed_at: Option<i64>,
}

/// An owner key as read: its value and mod revision (the group's epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub value: OwnerValue,
    pub mod_revision: i64,
}

/// The wanted owner of a group: the first Ready member in its list.
pub fn wanted_owner<'a>(list: &'a [String], members: &BTreeMap<String, Member>) -> Option<&'a str> {
    list.iter()
        .find(|n| members.get(n.as_str()).is_some_and(|m| m.ready))
        .map(String::as_str)
}

/// This node's rank among the Ready nodes of a group's list (itself
/// counted as Ready): how many takeover slots it waits.
pub fn rank(list: &[String], members: &BTreeMap<String, Member>, me: &str) -> Option<usize> {
    let mut rank = 0;
    for n in list {
        if n == me {
            return Some(rank);
        }
        if members.get(n.as_str()).is_some_and(|m| m.ready) {
            rank += 1;
        }
    }
    None
}

/// What this node does next for one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// The owner key is absent: try to create it after this many slots
    /// (a slot is a third of the lease TTL).
    TakeOver {
        slots: usize,
    },
    /// The key is {me, my lease} and the gate is closed: open it.
    Open,
    /// The key names someone else (or is gone): close the gate.
    Close,
    /// A dead incarnation of this node holds the key: revoke its lease so
    /// the key goes (never open under it).
    RevokeStale {
        lease: i64,
    },
    /// Hand the group back to `to`, an earlier Ready node of its list.
    HandBack {
        to: String,
    },
}

/// What this node knows about one group when it decides.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    pub list: &'a [String],
    pub me: &'a str,
    /// This node's current lease (None: it has none, so it owns nothing).
    pub lease: Option<i64>,
    /// Whether this node is Ready (and its members key is up).
    pub ready: bool,
    pub members: &'a BTreeMap<String, Member>,
    pub owner: Option<&'a Owner>,
    /// Whether this node's gate is open for the group.
    pub open_here: bool,
    pub auto_failback: bool,
}

/// (M) The ownership rule: a node owns G only while `owners/G` holds its
/// name AND its current lease.
pub fn decide(s: Situation<'_>) -> Step {
    let mine = |o: &Owner| o.value.node == s.me && Some(o.value.lease) == s.lease;
    match s.owner {
        None if s.open_here => Step::Close,
        None => match (s.ready && s.lease.is_some(), rank(s.list, s.members, s.me)) {
            (true, Some(slots)) => Step::TakeOver { slots },
            _ => Step::Nothing,
        },
        Some(o) if mine(o) => {
            if !s.open_here {
                return Step::Open;
            }
            if !s.auto_failback || o.value.pinned {
                return Step::Nothing;
            }
            match wanted_owner(s.list, s.members) {
                Some(w) if w != s.me && earlier(s.list, w, s.me) => {
                    Step::HandBack { to: w.to_owned() }
                }
                _ => Step::Nothing,
            }
        }
        Some(_) if s.open_here => Step::Close,
        Some(o) if o.value.node == s.me => Step::RevokeStale {
            lease: o.value.lease,
        },
        Some(_) => Step::Nothing,
    }
}

fn earlier(list: &[String], a: &str, b: &str) -> bool {
    let pos = |n: &str| list.iter().position(|x| x == n).unwrap_or(usize::MAX);
    pos(a) < pos(b)
}

/// (M) The fencing deadline, on CLOCK_BOOTTIME: when the last credited
/// keepalive was SENT, plus the TTL etcd granted, minus the margin.
pub fn deadline(sent_at_ns: u64, granted_ttl: Duration, margin: Duration) -> u64 {
    sent_at_ns
        .saturating_add(granted_ttl.as_nanos() as u64)
        .saturating_sub(margin.as_nanos() as u64)
}

/// (M) A keepalive answered is credited only if a linearizable read of
/// `owners/`, sent after that answer, shows every group this node holds
/// open as {me, my lease} (a stuck etcd leader cannot answer such a read).
pub fn credit(open: &[String], owners: &BTreeMap<String, Owner>, me: &str, lease: i64) -> bool {
    open.iter().all(|g| {
        owners
            .get(g)
            .is_some_and(|o| o.value.node == me && o.value.lease == lease)
    })
}

/// (M) Unfencing: a fenced node reopens a group only if its owner key is
/// unchanged (same value, same mod revision) since it fenced.
pub fn may_reopen(held: &Owner, now: Option<&Owner>) -> bool {
    now == Some(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| (*s).to_owned()).collect()
    }

    fn members(ready: &[(&str, bool)]) -> BTreeMap<String, Member> {
        ready
            .iter()
            .map(|(n, r)| {
                (
                    (*n).to_owned(),
                    Member {
                        version: "t".into(),
                        advertise: format!("http://{n}"),
                        ready: *r,
                        lease: 1,
                        generation: 0,
                        batch_format: 1,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn a_batch_format_is_written_only_once_every_configured_node_reads_it() {
        let nodes = list(&["a", "b", "c"]);
        let mut m = members(&[("a", true), ("b", true), ("c", true)]);
        // Every member on a build that reads JSON only.
        assert_eq!(batch_format(&nodes, &m), 1);
        for v in m.values_mut() {
            v.batch_format = 2;
        }
        assert_eq!(batch_format(&nodes, &m), 2);
        // One member behind holds the cluster back.
        m.get_mut("b").expect("b").batch_format = 1;
        assert_eq!(batch_format(&nodes, &m), 1);
        m.get_mut("b").expect("b").batch_format = 2;
        // A configured node that is not a member may come back on any build.
        m.remove("c");
        assert_eq!(batch_format(&nodes, &m), 1);
        // Members no group lists do not count; no configured node at all
        // means JSON.
        let mut extra = m.clone();
        extra.insert("z".into(), extra["a"].clone());
        extra.get_mut("z").expect("z").batch_format = 1;
        assert_eq!(batch_format(&list(&["a", "b"]), &extra), 2);
        assert_eq!(batch_format(&[], &m), 1);
        // A members value from a build that did not advertise a format.
        let old: Member = serde_json::from_str(
            r#"{"version":"0.1.0","advertise":"http://a","ready":true,"lease":7}"#,
        )
        .expect("an old members value");
        assert_eq!(old.batch_format, 1);
    }

    fn owner(node: &str, lease: i64, rev: i64) -> Owner {
        Owner {
            value: OwnerValue {
                node: node.into(),
                lease,
                pinned: false,
                handed_at: None,
            },
            mod_revision: rev,
        }
    }

    #[test]
    fn the_wanted_owner_is_the_first_ready_member_for_every_ordering() {
        let nodes = ["a", "b", "c"];
        // Every ordering of the list, every subset of Ready members,
        // and absent members: the answer is always the first Ready one.
        let orders = [
            ["a", "b", "c"],
            ["a", "c", "b"],
            ["b", "a", "c"],
            ["b", "c", "a"],
            ["c", "a", "b"],
            ["c", "b", "a"],
        ];
        for order in orders {
            let l = list(&order);
            for mask in 0u8..27 {
                // Each node: 0 absent, 1 present not Ready, 2 Ready.
                let mut m = Vec::new();
                let mut state = mask;
                for n in nodes {
                    match state % 3 {
                        1 => m.push((n, false)),
                        2 => m.push((n, true)),
                        _ => {}
                    }
                    state /= 3;
                }
                let ms = members(&m);
                let want = order
                    .iter()
                    .find(|n| m.iter().any(|(x, r)| x == *n && *r))
                    .copied();
                assert_eq!(wanted_owner(&l, &ms), want, "{order:?} {m:?}");
            }
        }
    }

    #[test]
    fn takeover_is_staggered_by_rank_among_ready_listed_nodes() {
        let l = list(&["a", "b", "c"]);
        let all = members(&[("a", true), ("b", true), ("c", true)]);
        assert_eq!(rank(&l, &all, "a"), Some(0));
        assert_eq!(rank(&l, &all, "c"), Some(2));
        // a is gone: b is first, c second.
        let no_a = members(&[("b", true), ("c", true)]);
        assert_eq!(rank(&l, &no_a, "b"), Some(0));
        assert_eq!(rank(&l, &no_a, "c"), Some(1));
        // Not Ready counts as absent; a node not listed has no rank.
        let a_not_ready = members(&[("a", false), ("b", true)]);
        assert_eq!(rank(&l, &a_not_ready, "b"), Some(0));
        assert_eq!(rank(&l, &all, "z"), None);
    }

    fn situation<'a>(
        l: &'a [String],
        me: &'a str,
        m: &'a BTreeMap<String, Member>,
        o: Option<&'a Owner>,
        open_here: bool,
    ) -> Situation<'a> {
        Situation {
            list: l,
            me,
            lease: Some(7),
            ready: true,
            members: m,
            owner: o,
            open_here,
            auto_failback: true,
        }
    }

    #[test]
    fn a_node_owns_a_group_only_under_its_name_and_current_lease() {
        let l = list(&["a", "b"]);
        let m = members(&[("a", true), ("b", true)]);
        let current = owner("b", 7, 10);
        let old_incarnation = owner("b", 3, 10);
        // b's own key under its current lease, gate closed: open.
        assert_eq!(
            decide(situation(&l, "b", &m, Some(&current), false)),
            Step::Open
        );
        // The same name under an older lease: never opened (M:
        // a restarted node opening its old key), its lease revoked.
        assert_eq!(
            decide(situation(&l, "b", &m, Some(&old_incarnation), false)),
            Step::RevokeStale { lease: 3 }
        );
        // Open here while the key names someone else: close.
        assert_eq!(
            decide(situation(&l, "b", &m, Some(&owner("a", 9, 11)), true)),
            Step::Close
        );
        assert_eq!(decide(situation(&l, "b", &m, None, true)), Step::Close);
        // Absent key: b waits one slot behind a.
        assert_eq!(
            decide(situation(&l, "b", &m, None, false)),
            Step::TakeOver { slots: 1 }
        );
        // Not Ready, or no lease: nothing.
        let mut s = situation(&l, "b", &m, None, false);
        s.ready = false;
        assert_eq!(decide(s), Step::Nothing);
        s.ready = true;
        s.lease = None;
        assert_eq!(decide(s), Step::Nothing);
    }

    #[test]
    fn the_owner_hands_back_to_an_earlier_ready_node_unless_pinned_or_manual() {
        let l = list(&["a", "b", "c"]);
        let m = members(&[("a", true), ("b", true), ("c", true)]);
        let b_owns = owner("b", 7, 10);
        assert_eq!(
            decide(situation(&l, "b", &m, Some(&b_owns), true)),
            Step::HandBack { to: "a".into() }
        );
        // c is later than b: no handback to it.
        let m_no_a = members(&[("b", true), ("c", true)]);
        assert_eq!(
            decide(situation(&l, "b", &m_no_a, Some(&b_owns), true)),
            Step::Nothing
        );
        let mut pinned = b_owns.clone();
        pinned.value.pinned = true;
        assert_eq!(
            decide(situation(&l, "b", &m, Some(&pinned), true)),
            Step::Nothing
        );
        let mut manual = situation(&l, "b", &m, Some(&b_owns), true);
        manual.auto_failback = false;
        assert_eq!(decide(manual), Step::Nothing);
        // a switched over to c stays with c while pinned, even though a
        // and b are earlier.
        let c_pinned = OwnerValue {
            pinned: true,
            ..owner("c", 7, 12).value
        };
        let c_pinned = Owner {
            value: c_pinned,
            mod_revision: 12,
        };
        assert_eq!(
            decide(situation(&l, "c", &m, Some(&c_pinned), true)),
            Step::Nothing
        );
    }

    #[test]
    fn the_deadline_counts_from_the_send_time_and_subtracts_the_margin() {
        let s = Duration::from_secs;
        assert_eq!(deadline(1_000, s(10), s(3)), 1_000 + 7_000_000_000);
        // The send time, not the answer's: a keepalive answered late
        // (after a pause) buys nothing beyond its send time + TTL.
        let sent = 5_000_000_000;
        let answered = sent + 9_000_000_000;
        let d = deadline(sent, s(10), s(3));
        assert!(d < answered, "credited at receipt would be {answered}");
        assert_eq!(deadline(0, s(1), s(2)), 0, "never below zero");
        assert_eq!(deadline(u64::MAX - 1, s(10), s(0)), u64::MAX);
    }

    #[test]
    fn a_keepalive_is_credited_only_when_every_open_group_shows_me_and_my_lease() {
        let mut owners = BTreeMap::new();
        owners.insert("g1".to_owned(), owner("me", 7, 3));
        owners.insert("g2".to_owned(), owner("me", 7, 4));
        let open = vec!["g1".to_owned(), "g2".to_owned()];
        assert!(credit(&open, &owners, "me", 7));
        assert!(
            credit(&[], &owners, "me", 9),
            "a fenced node holds nothing open"
        );
        assert!(!credit(&open, &owners, "me", 8), "another lease");
        owners.insert("g2".to_owned(), owner("other", 7, 5));
        assert!(!credit(&open, &owners, "me", 7), "taken by someone else");
        owners.remove("g2");
        assert!(!credit(&open, &owners, "me", 7), "the key is gone");
    }

    #[test]
    fn a_fenced_owner_reopens_only_an_unchanged_key() {
        let held = owner("me", 7, 10);
        assert!(may_reopen(&held, Some(&held.clone())));
        assert!(!may_reopen(&held, None), "the key expired");
        assert!(!may_reopen(&held, Some(&owner("me", 7, 11))), "rewritten");
        assert!(!may_reopen(&held, Some(&owner("b", 9, 12))), "taken over");
    }
}
