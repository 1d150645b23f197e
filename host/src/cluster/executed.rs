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
use tokio::sync::watch;

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

/// A batch's value as read, before its format's encoding (written as
/// [`BatchOut`], which borrows the keys).
#[derive(Debug, Deserialize)]
pub(super) struct Batch {
    pub(super) keys: Vec<String>,
}

/// The newest batch value format this build reads, advertised in its
/// members key ([`super::model::Member::batch_format`]):
/// - 1: the JSON of [`Batch`];
/// - 2: that JSON in one zstd frame (a frame opens with zstd's magic
///   number, which no JSON text does, so a reader tells them apart).
///
/// A node writes format 2 only while every configured node advertises it
/// ([`super::model::batch_format`]). etcd's work grows with the bytes it
/// stores and sends to every watcher; keys compress well.
pub(super) const BATCH_FORMAT: u32 = 2;

/// How a zstd frame opens (RFC 8878 §3.1.1).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];

/// The largest batch a reader decompresses: [`BATCH_KEYS`] keys of at
/// most 256 bytes, each escaped in JSON at worst six bytes a byte.
const MAX_BATCH_BYTES: usize = BATCH_KEYS as usize * (256 * 6 + 3) + 64;

/// Why a batch value cannot be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum BatchError {
    #[error("a zstd frame that does not say its size, or says more than {MAX_BATCH_BYTES} bytes")]
    Size,
    #[error("not a zstd frame of the size it says: {0}")]
    Zstd(std::io::Error),
    #[error("not a batch: {0}")]
    Json(#[from] serde_json::Error),
    #[error("more than {BATCH_KEYS} keys")]
    TooMany,
}

/// [`Batch`] as written: the keys borrowed from the rows they come from.
#[derive(Serialize)]
struct BatchOut<'a> {
    keys: &'a [&'a str],
}

thread_local! {
    /// One zstd context each way per thread, kept between batches (making
    /// one costs more than compressing or decompressing a batch).
    static COMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Compressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Encode `keys` as a batch value of `format` (2 or more: compressed).
pub(super) fn encode_batch(keys: &[&str], format: u32) -> Vec<u8> {
    let json = serde_json::to_vec(&BatchOut { keys }).unwrap_or_default();
    if format < 2 {
        return json;
    }
    // Level 1: the keys are repetitive, and the owner's time is the
    // scarce part. A failure (none is known for a buffer in memory)
    // leaves the JSON, which every reader takes.
    let compressed = COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.is_none() {
            *c = zstd::bulk::Compressor::new(1).ok();
        }
        c.as_mut().and_then(|z| z.compress(&json).ok())
    });
    compressed.unwrap_or(json)
}

/// A batch value's keys, of either format.
pub(super) fn decode_batch(value: &[u8]) -> Result<Vec<String>, BatchError> {
    let batch: Batch = if value.starts_with(&ZSTD_MAGIC) {
        // The frame says its size (the writer's one-shot compression puts
        // it there); more than a batch can hold is refused before any
        // byte is decompressed, and a frame longer than it says fails.
        let size = zstd::zstd_safe::get_frame_content_size(value)
            .ok()
            .flatten()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= MAX_BATCH_BYTES)
            .ok_or(BatchError::Size)?;
        let json = DECOMPRESSOR
            .with(|d| {
                let mut d = d.borrow_mut();
                let z = match &mut *d {
                    Some(z) => z,
                    empty => empty.insert(zstd::bulk::Decompressor::new()?),
                };
                z.decompress(value, size)
            })
            .map_err(BatchError::Zstd)?;
        serde_json::from_slice(&json)?
    } else {
        serde_json::from_slice(value)?
    };
    if batch.keys.len() > BATCH_KEYS as usize {
        return Err(BatchError::TooMany);
    }
    Ok(batch.keys)
}

/// `executed/<group>/<node>-<seq>` -> (group, node).
pub(super) fn parse_batch_key<'a>(keys: &Keys, key: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = key.strip_prefix(keys.prefix())?.strip_prefix("executed/")?;
    let (group, leaf) = rest.split_once('/')?;
    let (node, _seq) = leaf.rsplit_once('-')?;
    Some((group, node))
}

/// The batch key and value (in `format`) for `rows` (seq, group, key,
/// at) of one group.
pub(super) fn batch_for(
    keys: &Keys,
    me: &str,
    group: &str,
    rows: &[groups::ExecRow],
    format: u32,
) -> Option<(String, Vec<u8>)> {
    let last = rows.iter().map(|r| r.0).max()?;
    let keys_of: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    let value = encode_batch(&keys_of, format);
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
    format: u32,
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
        .filter_map(|chunk| batch_for(keys, &me, group, chunk, format))
        .collect())
}

/// Put this node's unpublished executions as batches, every
/// `publish_window`, until `stop`, in the value format `format` holds
/// when each batch is made ([`super::model::batch_format`]).
pub(super) async fn publish_loop(
    node: Arc<Node>,
    client: Client,
    keys: Keys,
    format: watch::Receiver<u32>,
    stop: Listener,
) {
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
            let mut by_group: BTreeMap<Arc<str>, Vec<groups::ExecRow>> = BTreeMap::new();
            for r in rows {
                by_group.entry(Arc::clone(&r.1)).or_default().push(r);
            }
            let mut failed = false;
            let format = *format.borrow();
            for (group, rows) in by_group {
                let Some((key, value)) = batch_for(&keys, &cfg_name(&node), &group, &rows, format)
                else {
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
            match decode_batch(kv.value()) {
                Ok(keys) => Some((group.to_owned(), keys)),
                Err(e) => {
                    // Its keys' tombstones are missing here: a takeover
                    // may run them again, under the same ids.
                    tracing::warn!(key = ?kv.key_str(), "cluster: an executed batch skipped: {e}");
                    None
                }
            }
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
    node.apply_executed(batches, applied)
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
            match node.apply_executed(batches, rev).await {
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
            (3, "g".into(), "k3".to_owned(), 0),
            (7, "g".into(), "k7".to_owned(), 0),
        ];
        let (key, value) = batch_for(&keys, "me", "g", &rows, 1).expect("batch");
        assert_eq!(key, keys.executed("g", "me", 7));
        let b: Batch = serde_json::from_slice(&value).expect("json");
        assert_eq!(b.keys, vec!["k3", "k7"]);
        assert!(batch_for(&keys, "me", "g", &[], 2).is_none());
    }

    fn keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("door-17/{i}")).collect()
    }

    fn encode(keys: &[String], format: u32) -> Vec<u8> {
        let k: Vec<&str> = keys.iter().map(String::as_str).collect();
        encode_batch(&k, format)
    }

    #[test]
    fn both_formats_read_back_and_format_2_is_smaller() {
        let k = keys(BATCH_KEYS as usize);
        let json = encode(&k, 1);
        // Format 1 is the JSON a build that reads nothing else expects.
        let old: Batch = serde_json::from_slice(&json).expect("format 1 is JSON");
        assert_eq!(old.keys, k);
        let z = encode(&k, BATCH_FORMAT);
        assert!(z.starts_with(&ZSTD_MAGIC));
        assert!(
            z.len() * 4 < json.len(),
            "{} bytes against {}",
            z.len(),
            json.len()
        );
        assert_eq!(decode_batch(&json).expect("format 1"), k);
        assert_eq!(decode_batch(&z).expect("format 2"), k);
        // A build that reads only JSON refuses format 2 (and skips the
        // batch): why it is written only once every node reads it.
        assert!(serde_json::from_slice::<Batch>(&z).is_err());
    }

    #[test]
    fn hostile_batch_values_are_refused() {
        // A frame that would decompress past any batch (a zip bomb).
        let bomb = zstd::bulk::compress(&vec![b' '; MAX_BATCH_BYTES + 1], 3).expect("bomb");
        assert!(bomb.len() < 1024);
        assert!(matches!(decode_batch(&bomb), Err(BatchError::Size)));
        // The magic and then garbage; a frame cut short.
        let mut junk = ZSTD_MAGIC.to_vec();
        junk.extend_from_slice(&[0xff; 64]);
        assert!(decode_batch(&junk).is_err());
        let z = encode(&keys(100), 2);
        assert!(matches!(
            decode_batch(&z[..z.len() - 4]),
            Err(BatchError::Zstd(_))
        ));
        // A frame that is no batch; JSON that is none; too many keys.
        let not_json = zstd::bulk::compress(b"\x00\x01", 1).expect("frame");
        assert!(matches!(decode_batch(&not_json), Err(BatchError::Json(_))));
        assert!(matches!(decode_batch(b"[1,2]"), Err(BatchError::Json(_))));
        let many = encode(&keys(BATCH_KEYS as usize + 1), 2);
        assert!(matches!(decode_batch(&many), Err(BatchError::TooMany)));
    }
}
