//! The etcd key layout under `/tandem/<cluster>/`:
//!
//! ```text
//! config/groups      the groups digest (created once)
//! members/<node>     {version, advertise, ready, lease, generation,
//!                     batch_format} under the node's lease
//! owners/<group>     {node, lease, pinned, handed_at} under the owner's lease
//! publisher          {node} (the node that pushes the synced tables)
//! executed/<group>/<node>-<seq>   {keys} a batch of executed signal keys,
//!                     JSON or zstd-compressed JSON (executed::BATCH_FORMAT)
//! ```

/// The keys of one cluster.
#[derive(Debug, Clone)]
pub(super) struct Keys {
    prefix: String,
}

impl Keys {
    pub(super) fn new(prefix: String) -> Keys {
        Keys { prefix }
    }
    pub(super) fn prefix(&self) -> &str {
        &self.prefix
    }
    pub(super) fn digest(&self) -> String {
        format!("{}config/groups", self.prefix)
    }
    pub(super) fn members(&self) -> String {
        format!("{}members/", self.prefix)
    }
    pub(super) fn member(&self, node: &str) -> String {
        format!("{}members/{node}", self.prefix)
    }
    pub(super) fn owners(&self) -> String {
        format!("{}owners/", self.prefix)
    }
    pub(super) fn owner(&self, group: &str) -> String {
        format!("{}owners/{group}", self.prefix)
    }
    pub(super) fn executed(&self, group: &str, node: &str, seq: u64) -> String {
        format!("{}executed/{group}/{node}-{seq:020}", self.prefix)
    }
    pub(super) fn publisher(&self) -> String {
        format!("{}publisher", self.prefix)
    }
}
