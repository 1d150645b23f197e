//! Table sync in a cluster (DESIGN.md §7): the node the `publisher` key
//! names pushes the signed snapshot of the synced tables (§5) to every
//! other member, each on its own. A generation is the publisher key's mod
//! revision << [`PUBLISHER_SHIFT`] + a counter, so generations are ordered
//! by (revision, counter) and a subscriber, which reads the key
//! linearizably before it imports, takes snapshots of the current
//! publisher only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::Client;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::Status;
use super::keepalive::bounded;
use super::keys::Keys;
use crate::internal_auth;
use crate::metrics::Metrics;
use crate::node::{Node, PublisherCheck, PublisherFuture};
use crate::shutdown::Listener;
use crate::sync::PUBLISHER_SHIFT;

/// How often the publisher looks for members that lack the current
/// generation (a member that was down, a new member).
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// A subscriber's linearizable read of the publisher key.
pub(super) struct EtcdPublisher {
    pub(super) client: Client,
    pub(super) keys: Keys,
    pub(super) metrics: Arc<Metrics>,
    pub(super) timeout: Duration,
}

impl std::fmt::Debug for EtcdPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdPublisher")
            .field("key", &self.keys.publisher())
            .finish_non_exhaustive()
    }
}

impl PublisherCheck for EtcdPublisher {
    fn current(&self) -> PublisherFuture<'_> {
        Box::pin(async move {
            let mut c = self.client.clone();
            let r = bounded(
                &self.metrics,
                self.timeout,
                "read publisher",
                c.get(self.keys.publisher(), None),
            )
            .await
            .map_err(|e| e.to_string())?;
            Ok(r.kvs().first().and_then(|kv| {
                let v: serde_json::Value = serde_json::from_slice(kv.value()).ok()?;
                Some((v.get("node")?.as_str()?.to_owned(), kv.mod_revision()))
            }))
        })
    }
}

/// The next generation to publish under publisher revision `rev`, from
/// the last one here: a new counter under a new revision, the next one
/// when the tables changed, or the same one to catch members up.
pub fn next_generation(last: u64, rev: i64, changed: bool) -> u64 {
    let rev = rev.max(0) as u64;
    if last >> PUBLISHER_SHIFT != rev {
        (rev << PUBLISHER_SHIFT) + 1
    } else if changed {
        last + 1
    } else {
        last
    }
}

/// While this node is the publisher, push each new generation to every
/// member that lacks it.
pub(super) async fn run(node: Arc<Node>, status: watch::Receiver<Status>, stop: Listener) {
    let Some(cfg) = node.config().cluster.clone() else {
        return;
    };
    let me = node.config().node.name.clone();
    let stop = stop.wait();
    tokio::pin!(stop);
    let mut acked: BTreeMap<String, u64> = BTreeMap::new();
    let mut changed = false;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = node.synced_tables_changed() => changed = true,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let Some((publisher, rev)) = node.publisher() else {
            continue;
        };
        if publisher != me {
            acked.clear();
            continue;
        }
        let generation = next_generation(node.sync_generation(), rev, changed);
        changed = false;
        let behind: Vec<(String, String)> = status
            .borrow()
            .members
            .iter()
            .filter(|m| m.node != me && acked.get(&m.node).is_none_or(|g| *g < generation))
            .map(|m| (m.node.clone(), m.advertise.clone()))
            .collect();
        if generation != node.sync_generation() {
            let _ = node
                .store()
                .write(move |c| crate::store::synclog::set_generation(c, generation))
                .await;
            node.set_sync_generation(generation);
        }
        if behind.is_empty() {
            continue;
        }
        let body = match crate::sync::push::export_to_memory(
            &node,
            cfg.table_sync_types.clone(),
            generation,
            false,
        )
        .await
        {
            Ok((body, _)) => body,
            Err(e) => {
                tracing::error!("cluster: cannot export the synced tables: {e}");
                continue;
            }
        };
        let posts = behind.into_iter().map(|(member, url)| {
            let headers = internal_auth::sign_body(
                cfg.secret.as_bytes(),
                &me,
                "POST",
                crate::sync::push::PATH,
                &body,
            );
            let body = body.clone();
            async move {
                let r = crate::sync::push::post(&url, None, headers, body).await;
                (member, r)
            }
        });
        let results: Vec<_> = futures_util::stream::iter(posts)
            .buffer_unordered(8)
            .collect()
            .await;
        for (member, r) in results {
            match r {
                Ok(()) => {
                    tracing::info!(member = %member, generation, "cluster: synced tables published");
                    acked.insert(member, generation);
                }
                // It has this generation already (it was pushed before a
                // restart of the publisher).
                Err(e) if e.to_string().contains("not newer") => {
                    acked.insert(member, generation);
                }
                Err(e) => {
                    tracing::warn!(member = %member, generation, "cluster: could not publish the synced tables: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_are_ordered_by_publisher_revision_then_counter() {
        let shift = PUBLISHER_SHIFT;
        // A first publication under revision 7.
        let g1 = next_generation(0, 7, false);
        assert_eq!(g1, (7 << shift) + 1);
        assert_eq!(
            next_generation(g1, 7, false),
            g1,
            "catch-up: same generation"
        );
        let g2 = next_generation(g1, 7, true);
        assert_eq!(g2, g1 + 1);
        // A new publisher (the key moved to revision 9): its first
        // generation is above everything published under revision 7.
        let g3 = next_generation(g2, 9, false);
        assert!(g3 > g2 && g3 >> shift == 9);
        // A publisher holding a generation of an older revision restarts
        // its counter under its own revision.
        assert_eq!(next_generation(g3, 12, true), (12 << shift) + 1);
    }
}
