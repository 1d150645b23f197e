-- Schema version 4: clusters on etcd (DESIGN.md §7).

-- A rule's group: it runs only on the group's owner. `default` when the
-- rule names none (a pair or a standalone node has only `default`).
ALTER TABLE signal_rule ADD COLUMN grp TEXT NOT NULL DEFAULT 'default';

-- Executions per (group, signal key) on a cluster member, under the
-- group's epoch (the owner key's mod revision). `published` is set once
-- the key is in an executed batch in etcd.
CREATE TABLE group_executed (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    grp       TEXT NOT NULL,
    key       TEXT NOT NULL,
    epoch     INTEGER NOT NULL,
    at        INTEGER NOT NULL,
    published INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX group_executed_key ON group_executed (grp, key);

-- Signals kept for a group this node did not own when they arrived: one
-- row per (group, key), pointing at the event row.
CREATE TABLE group_pending (
    grp         TEXT NOT NULL,
    key         TEXT NOT NULL,
    event_id    INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (grp, key)
);
CREATE INDEX group_pending_received ON group_pending (grp, received_at);

-- The epoch a notification was made under (a cluster member's group
-- epoch; NULL on a pair), and the group of a failover log row.
ALTER TABLE notification ADD COLUMN epoch INTEGER;
ALTER TABLE failover_log ADD COLUMN grp TEXT;

-- Keys that another member executed for a group (from the executed
-- batches in etcd): never run here for that group.
CREATE TABLE group_tombstone (
    grp TEXT NOT NULL,
    key TEXT NOT NULL,
    at  INTEGER NOT NULL,
    PRIMARY KEY (grp, key)
);
CREATE INDEX group_tombstone_at ON group_tombstone (at);
CREATE INDEX group_executed_unpublished ON group_executed (published, seq);

-- Revisions where this node's history of executed keys became
-- incomplete (its first start, or a watch cancelled as compacted).
CREATE TABLE history_gap (
    rev    INTEGER NOT NULL,
    at     INTEGER NOT NULL,
    reason TEXT NOT NULL
);
