-- Schema version 8: executions are published up to a cursor.
--
-- The publisher puts a cluster member's executions in etcd in seq order,
-- so "published" is one number, `cluster.published_upto` in settings:
-- every execution with seq at or below it is in an executed batch. It
-- replaces the per-row flag and its index, which cost every execution an
-- index insert and every batch an UPDATE of its rows. Starting below the
-- oldest unpublished row puts some published keys again: harmless (a
-- tombstone is stored once).
INSERT OR REPLACE INTO settings (key, value) VALUES (
    'cluster.published_upto',
    COALESCE(
        (SELECT min(seq) - 1 FROM group_executed WHERE published = 0),
        (SELECT max(seq) FROM group_executed),
        0
    )
);
DROP INDEX group_executed_unpublished;
ALTER TABLE group_executed DROP COLUMN published;
