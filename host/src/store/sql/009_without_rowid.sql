-- Schema version 9: tombstones and pending rows are keyed by (group, key)
-- alone.
--
-- Every executed key becomes a tombstone on every other member, and every
-- signal a device sends to all members a pending row on the non-owners:
-- the two busiest inserts of a cluster. As WITHOUT ROWID tables keyed by
-- their primary key, each insert writes one b-tree for the row and one
-- for the time index, where a rowid table also wrote its key index.
CREATE TABLE group_tombstone_v9 (
    grp TEXT NOT NULL,
    key TEXT NOT NULL,
    at  INTEGER NOT NULL,
    PRIMARY KEY (grp, key)
) WITHOUT ROWID;
INSERT INTO group_tombstone_v9 (grp, key, at) SELECT grp, key, at FROM group_tombstone;
DROP TABLE group_tombstone;
ALTER TABLE group_tombstone_v9 RENAME TO group_tombstone;
CREATE INDEX group_tombstone_at ON group_tombstone (at);

CREATE TABLE group_pending_v9 (
    grp         TEXT NOT NULL,
    key         TEXT NOT NULL,
    event_id    INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    PRIMARY KEY (grp, key)
) WITHOUT ROWID;
INSERT INTO group_pending_v9 (grp, key, event_id, received_at)
    SELECT grp, key, event_id, received_at FROM group_pending;
DROP TABLE group_pending;
ALTER TABLE group_pending_v9 RENAME TO group_pending;
CREATE INDEX group_pending_received ON group_pending (grp, received_at);
