//! Executed keys across the cluster (DESIGN.md §7): what makes a signal
//! that reached every node run once per group.
//!
//! - Publishing: every node puts the keys it executed, gathered over
//!   `publish_window`, as one batch `executed/<group>/<node>-<seq>` (owner
//!   or not: whatever it has not published yet, in seq order, behind a
//!   cursor ([`groups::published_upto`]), taken from the node's feed of
//!   committed executions when it continues the cursor
//!   ([`crate::node::feed`]), else read from the store. A handback puts
//!   the giver's last ones in the move transaction itself
//!   ([`take_unpublished`]).
//! - Applying: every node watches `executed/` from its persisted
//!   `applied_rev` and stores tombstones per (group, key), dropping only the
//!   matching (group, key) pending rows. At its first start, or when the
//!   watch is cancelled as compacted, it range-reads `executed/` and records
//!   a gap.
//! - Pruning: the owner of a group deletes the group's batches created
//!   before the revision it observed `replay_window` ago.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};
use serde::{Deserialize, Serialize};

use super::ClusterError;
use super::keepalive::{bounded, retried};
use super::keys::Keys;
use crate::node::Node;
use crate::shutdown::Listener;
use crate::store::groups;

/// The largest number of keys in one batch (an etcd request stays far
/// below its 1.5 MiB limit: keys are at most 256 bytes).
pub(super) const BATCH_KEYS: u32 = 2000;

/// How often a watch that brings only this node's own batches saves
/// `applied_rev`.
const APPLIED_REV_EVERY: Duration = Duration::from_secs(1);

/// A batch's value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Batch {
    pub(super) keys: Vec<String>,
}

/// `executed/<group>/<node>-<seq>` -> (group, node).
pub(super) fn parse_batch_key<'a>(keys: &Keys, key: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = key.strip_prefix(keys.prefix())?.strip_prefix("executed/")?;
    let (group, leaf) = rest.split_once('/')?;
    let (node, _seq) = leaf.rsplit_once('-')?;
    Some((group, node))
}

/// The batch key and value for `rows` (seq, group, key, at) of one group.
pub(super) fn batch_for(
    keys: &Keys,
    me: &str,
    group: &str,
    rows: &[groups::ExecRow],
) -> Option<(String, Vec<u8>)> {
    let last = rows.iter().map(|r| r.0).max()?;
    let value = serde_json::to_vec(&Batch {
        keys: rows.iter().map(|r| r.2.clone()).collect(),
    })
    .ok()?;
    Some((keys.executed(group, me, last), value))
}

/// This node's unpublished executions of `group` (all of them, in batches
/// of [`BATCH_KEYS`]) as (batch key, value). The publisher puts them again
/// later, as it finds them after its cursor: harmless, a tombstone is
/// stored once.
pub(super) async fn take_unpublished(
    node: &Arc<Node>,
    keys: &Keys,
    group: &str,
) -> Result<Vec<(String, Vec<u8>)>, ClusterError> {
    let g = group.to_owned();
    let (_, rows) = node
        .store()
        .read(move |c| groups::unpublished(c, Some(&g), 100 * BATCH_KEYS))
        .await
        .map_err(|e| ClusterError::Refused(e.to_string()))?;
    let me = node.config().node.name.clone();
    Ok(rows
        .chunks(BATCH_KEYS as usize)
        .filter_map(|chunk| batch_for(keys, &me, group, chunk))
        .collect())
}

/// Put this node's unpublished executions as batches, every
/// `publish_window`, until `stop`.
pub(super) async fn publish_loop(node: Arc<Node>, client: Client, keys: Keys, stop: Listener) {
    let Some(cfg) = node.config().cluster.clone() else {
        return;
    };
    let stop = stop.wait();
    tokio::pin!(stop);
    let t = (cfg.lease_ttl / 3).max(Duration::from_millis(300));
    let mut wake = node.executions();
    let feed = node.executed_feed();
    // The published cursor as last read or moved here; `None` reads it
    // (and the rows after it) from the store.
    let mut cursor: Option<u64> = None;
    // A first pass publishes what a previous run left unpublished.
    let mut first = true;
    loop {
        if !first {
            tokio::select! {
                _ = &mut stop => return,
                r = wake.changed() => if r.is_err() { return },
            }
            // Gather for a window, then put what is there.
            tokio::time::sleep(cfg.publish_window).await;
        }
        first = false;
        loop {
            // From the feed when it continues the cursor, else from the
            // store: at the first pass, past a hole (an execution that
            // did not feed, a full feed), after a failed put. Read on the
            // writer's connection: its page cache holds what ingest just
            // wrote, where the reader's is emptied by every commit.
            let fed = cursor.and_then(|c| feed.take_after(c, BATCH_KEYS as usize));
            let rows = match fed {
                Some(rows) => rows,
                None => match node
                    .store()
                    .write(|c| groups::unpublished(c, None, BATCH_KEYS))
                    .await
                {
                    Ok((upto, rows)) => {
                        cursor = Some(upto);
                        rows
                    }
                    Err(e) => {
                        tracing::error!("cluster: cannot read executed keys: {e}");
                        break;
                    }
                },
            };
            let Some(last) = rows.last().map(|r| r.0) else {
                break;
            };
            let oldest = rows.iter().map(|r| r.3).min().unwrap_or(0);
            let mut by_group: BTreeMap<String, Vec<groups::ExecRow>> = BTreeMap::new();
            for r in rows {
                match by_group.get_mut(&r.1) {
                    Some(v) => v.push(r),
                    None => {
                        by_group.insert(r.1.clone(), vec![r]);
                    }
                }
            }
            let mut failed = false;
            for (group, rows) in by_group {
                let Some((key, value)) = batch_for(&keys, &cfg_name(&node), &group, &rows) else {
                    continue;
                };
                let put = retried(node.metrics(), t, "put executed keys", || {
                    let (mut c, key, value) = (client.clone(), key.clone(), value.clone());
                    async move { c.put(key, value, None::<PutOptions>).await }
                })
                .await;
                if let Err(e) = put {
                    tracing::warn!("cluster: could not publish executed keys: {e}");
                    failed = true;
                }
            }
            node.metrics()
                .cluster_publish_lag_ms
                .set((crate::store::now_ms() - oldest).max(0));
            // The cursor moves only past rows all put: after a failure the
            // next pass puts them again, the groups that made it included
            // (a tombstone is stored once).
            if failed {
                // Put again from the store.
                cursor = None;
                tokio::time::sleep(t).await;
                break;
            }
            if let Err(e) = node
                .store()
                .write(move |c| groups::set_published_upto(c, last))
                .await
            {
                tracing::error!("cluster: cannot record the published executed keys: {e}");
                cursor = None;
                tokio::time::sleep(t).await;
                break;
            }
            cursor = Some(last);
            // Caught up: nothing in the feed, and no execution committed
            // after `last` (a commit feeds before it moves the watch).
            if feed.is_empty() && *wake.borrow() <= last {
                break;
            }
        }
    }
}

fn cfg_name(node: &Node) -> String {
    node.config().node.name.clone()
}

/// The (group, keys) of batches put by other nodes among `kvs`.
fn foreign_batches(
    keys: &Keys,
    me: &str,
    kvs: &[etcd_client::KeyValue],
) -> Vec<(String, Vec<String>)> {
    kvs.iter()
        .filter_map(|kv| {
            let (group, node) = parse_batch_key(keys, kv.key_str().ok()?)?;
            if node == me {
                return None;
            }
            let b: Batch = serde_json::from_slice(kv.value()).ok()?;
            Some((group.to_owned(), b.keys))
        })
        .collect()
}

/// Read every batch of `executed/` (or of one group's) at `rev` (0: now)
/// and apply them; returns the revision read at.
pub(super) async fn read_all(
    node: &Arc<Node>,
    client: &Client,
    keys: &Keys,
    group: Option<&str>,
    rev: i64,
    t: Duration,
) -> Result<i64, ClusterError> {
    let prefix = match group {
        Some(g) => format!("{}executed/{g}/", keys.prefix()),
        None => format!("{}executed/", keys.prefix()),
    };
    let resp = retried(node.metrics(), t, "read executed keys", || {
        let (mut c, p) = (client.clone(), prefix.clone());
        let mut opts = GetOptions::new().with_prefix();
        if rev > 0 {
            opts = opts.with_revision(rev);
        }
        async move { c.get(p, Some(opts)).await }
    })
    .await?;
    let at = resp.header().map_or(rev, |h| h.revision());
    let me = cfg_name(node);
    let batches = foreign_batches(keys, &me, resp.kvs());
    // A one-group read at a past revision must not move applied_rev.
    let applied = if group.is_none() { at } else { 0 };
    node.store()
        .write(move |c| groups::apply_batches(c, &batches, applied))
        .await
        .map_err(|e| ClusterError::Refused(e.to_string()))?;
    Ok(at)
}

/// Watch `executed/` from `applied_rev`, applying tombstones, until
/// `stop`; range-read and record a gap at the first start and whenever the
/// watch is cancelled as compacted.
pub(super) async fn watch_loop(node: Arc<Node>, client: Client, keys: Keys, stop: Listener) {
    let Some(cfg) = node.config().cluster.clone() else {
        return;
    };
    let t = (cfg.lease_ttl / 3).max(Duration::from_millis(300));
    let stop = stop.wait();
    tokio::pin!(stop);
    let me = cfg_name(&node);
    let prefix = format!("{}executed/", keys.prefix());
    loop {
        let applied = node.store().read(groups::applied_rev).await.unwrap_or(0);
        let from = if applied == 0 {
            match read_all(&node, &client, &keys, None, 0, t).await {
                Ok(rev) => {
                    let _ = node
                        .store()
                        .write(move |c| groups::add_gap(c, rev, "start"))
                        .await;
                    rev + 1
                }
                Err(e) => {
                    tracing::warn!("cluster: cannot read executed keys: {e}");
                    tokio::select! {
                        _ = &mut stop => return,
                        _ = tokio::time::sleep(t) => continue,
                    }
                }
            }
        } else {
            applied + 1
        };
        let mut c = client.clone();
        let watch = bounded(
            node.metrics(),
            t,
            "watch executed keys",
            c.watch(
                prefix.clone(),
                Some(WatchOptions::new().with_prefix().with_start_revision(from)),
            ),
        )
        .await;
        let mut saved = Instant::now();
        let mut stream = match watch {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cluster: {e}");
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(t) => continue,
                }
            }
        };
        loop {
            let msg = tokio::select! {
                _ = &mut stop => return,
                m = stream.message() => m,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => break,
            };
            if resp.canceled() {
                if resp.compact_revision() > 0 {
                    // History before the compaction is gone: read what is
                    // there and say where the hole is.
                    match read_all(&node, &client, &keys, None, 0, t).await {
                        Ok(rev) => {
                            tracing::warn!(rev, "cluster: executed-key history compacted: a gap");
                            let _ = node
                                .store()
                                .write(move |c| groups::add_gap(c, rev, "compacted"))
                                .await;
                        }
                        Err(e) => tracing::warn!("cluster: {e}"),
                    }
                }
                break;
            }
            let kvs: Vec<etcd_client::KeyValue> = resp
                .events()
                .iter()
                .filter(|e| e.event_type() == EventType::Put)
                .filter_map(|e| e.kv().cloned())
                .collect();
            let batches = foreign_batches(&keys, &me, &kvs);
            let rev = resp.header().map_or(0, |h| h.revision());
            // Only this node's own batches: nothing to store, and the
            // revision is saved at most every APPLIED_REV_EVERY (a restart
            // reads that much history again, harmlessly: its own batches
            // are skipped and a tombstone is stored once).
            if batches.is_empty() && (rev == 0 || saved.elapsed() < APPLIED_REV_EVERY) {
                continue;
            }
            match node
                .store()
                .write(move |c| groups::apply_batches(c, &batches, rev))
                .await
            {
                Ok(_) => saved = Instant::now(),
                Err(e) => tracing::error!("cluster: cannot store tombstones: {e}"),
            }
        }
    }
}

/// Delete `group`'s batches created before `below` (the owner's job).
pub(super) async fn prune(
    node: &Arc<Node>,
    client: &Client,
    keys: &Keys,
    group: &str,
    below: i64,
    t: Duration,
) -> Result<usize, ClusterError> {
    let prefix = format!("{}executed/{group}/", keys.prefix());
    let mut c = client.clone();
    let resp = bounded(
        node.metrics(),
        t,
        "list executed batches",
        c.get(
            prefix,
            Some(GetOptions::new().with_prefix().with_keys_only()),
        ),
    )
    .await?;
    let old: Vec<Vec<u8>> = resp
        .kvs()
        .iter()
        .filter(|kv| kv.create_revision() < below)
        .map(|kv| kv.key().to_vec())
        .collect();
    // One transaction per 100 keys (etcd allows 128 operations in one).
    for chunk in old.chunks(100) {
        let ops: Vec<etcd_client::TxnOp> = chunk
            .iter()
            .map(|k| etcd_client::TxnOp::delete(k.clone(), None))
            .collect();
        bounded(
            node.metrics(),
            t,
            "delete executed batches",
            c.txn(etcd_client::Txn::new().and_then(ops)),
        )
        .await?;
    }
    Ok(old.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_keys_name_their_group_and_node() {
        let keys = Keys::new("/tandem/t/".into());
        let k = keys.executed("elementary", "office-2", 42);
        assert_eq!(parse_batch_key(&keys, &k), Some(("elementary", "office-2")));
        assert_eq!(parse_batch_key(&keys, "/tandem/t/owners/x"), None);
        assert_eq!(parse_batch_key(&keys, "/tandem/other/executed/g/n-1"), None);
        let rows = vec![
            (3, "g".to_owned(), "k3".to_owned(), 0),
            (7, "g".to_owned(), "k7".to_owned(), 0),
        ];
        let (key, value) = batch_for(&keys, "me", "g", &rows).expect("batch");
        assert_eq!(key, keys.executed("g", "me", 7));
        let b: Batch = serde_json::from_slice(&value).expect("json");
        assert_eq!(b.keys, vec!["k3", "k7"]);
        assert!(batch_for(&keys, "me", "g", &[]).is_none());
    }
}
