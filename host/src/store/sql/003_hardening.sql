-- Schema version 3: state that must survive a restart.

-- Nonces of signed internal calls seen inside the timestamp window, so a
-- call cannot be replayed after a restart. Pruned past the window.
CREATE TABLE internal_nonce (
    nonce TEXT PRIMARY KEY,
    at    INTEGER NOT NULL
);
CREATE INDEX internal_nonce_at ON internal_nonce (at);

-- Rules quarantined on this node (5 traps in a row, or the fan-out cap hit
-- repeatedly): kept until an operator resets the rule. Never synced.
CREATE TABLE rule_quarantine (
    name   TEXT PRIMARY KEY,
    since  INTEGER NOT NULL,
    reason TEXT NOT NULL
);

-- Each sink's worker asks for its own due rows: without the sink in the
-- index, a sink with a large backlog (a receiver that hangs) would slow
-- every other sink's queries.
CREATE INDEX notification_sink_due ON notification (sink, status, next_attempt_at);
