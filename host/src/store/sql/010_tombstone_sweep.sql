-- Schema version 10: tombstones without their time index.
--
-- A member stores a tombstone for every key another member executed;
-- keeping a second b-tree ordered by time for each of them cost as much
-- again as the row. Tombstones past the retention are now found by a
-- resumable sweep of the primary key (store::groups::sweep_tombstones),
-- at a pace set by how many were stored since the last prune.
DROP INDEX group_tombstone_at;
