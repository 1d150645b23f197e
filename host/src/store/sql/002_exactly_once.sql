-- Schema version 2: nothing lost, nothing twice (DESIGN.md §4).

-- Every execution on this node, numbered; written in the same transaction
-- as the execution's outcome. AUTOINCREMENT: numbers are never reused.
CREATE TABLE executed_key (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    at  INTEGER NOT NULL
);
CREATE INDEX executed_key_key ON executed_key (key);

-- Keys the peer executed: never run here.
CREATE TABLE tombstone (
    key      TEXT PRIMARY KEY,
    peer_seq INTEGER NOT NULL,
    at       INTEGER NOT NULL
);
CREATE INDEX tombstone_at ON tombstone (at);

-- Pending signals are event_log rows with status 'pending'.
CREATE INDEX event_log_status ON event_log (status, id);
