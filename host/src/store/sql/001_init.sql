-- Schema version 1.
--
-- Synced configuration tables (copied primary -> secondary by table sync),
-- each with a stable primary key.

CREATE TABLE signal_script (
    name       TEXT PRIMARY KEY,
    wasm       BLOB NOT NULL,
    sha256     TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE signal_rule (
    name        TEXT PRIMARY KEY,
    script      TEXT NOT NULL,
    enabled     INTEGER NOT NULL DEFAULT 1,
    signals     TEXT NOT NULL DEFAULT '[]',  -- JSON array of patterns; [] = the module's defaults
    deadline_ms INTEGER,                     -- NULL = [rules] deadline
    config      TEXT NOT NULL DEFAULT '{}',  -- JSON object handed to tandem_init
    updated_at  INTEGER NOT NULL
);

CREATE TABLE person (
    id        INTEGER PRIMARY KEY,
    name      TEXT NOT NULL UNIQUE,
    address   TEXT NOT NULL DEFAULT '',      -- used for any channel not in `addresses`
    addresses TEXT NOT NULL DEFAULT '{}'     -- JSON {channel: address}
);

CREATE TABLE contact_group (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE
);

CREATE TABLE group_member (
    group_id  INTEGER NOT NULL,
    person_id INTEGER NOT NULL,
    PRIMARY KEY (group_id, person_id)
);

CREATE TABLE location (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    description TEXT NOT NULL DEFAULT ''
);

CREATE TABLE zone (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    location_id INTEGER
);

CREATE TABLE device (
    id       INTEGER PRIMARY KEY,
    name     TEXT NOT NULL UNIQUE,
    kind     TEXT NOT NULL DEFAULT '',
    zone_id  INTEGER,
    settings TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE pbx_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE voice_recording (            -- metadata only; files stay local
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    file        TEXT NOT NULL,
    duration_ms INTEGER
);

CREATE TABLE text_provider (
    id       INTEGER PRIMARY KEY,
    name     TEXT NOT NULL UNIQUE,
    kind     TEXT NOT NULL,
    settings TEXT NOT NULL DEFAULT '{}'
);

-- Node-local tables: never synced.

CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE failover_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    fs         INTEGER NOT NULL,
    epoch      INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE failover_log (
    id            INTEGER PRIMARY KEY,
    node          TEXT NOT NULL,
    started_at    INTEGER NOT NULL,
    ended_at      INTEGER,
    reason        TEXT NOT NULL,
    failback_mode TEXT NOT NULL,
    executed      INTEGER NOT NULL DEFAULT 0
);

CREATE TABLE event_log (
    id          INTEGER PRIMARY KEY,
    key         TEXT NOT NULL,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    time        INTEGER NOT NULL,            -- the signal's time, ms
    received_at INTEGER NOT NULL,            -- this node's clock, ms
    fields      TEXT NOT NULL,               -- JSON object
    node        TEXT NOT NULL,               -- which node recorded it
    status      TEXT NOT NULL,               -- executed | suppressed | pending
    replayed    INTEGER NOT NULL DEFAULT 0,
    outcome     TEXT                         -- JSON: the rules' runs
);
CREATE INDEX event_log_key ON event_log (key);
CREATE INDEX event_log_received ON event_log (received_at);

CREATE TABLE notification (
    id              TEXT NOT NULL,           -- from (signal key, rule, action index, recipient)
    sink            TEXT NOT NULL,
    event_id        INTEGER,
    rule            TEXT NOT NULL,
    node            TEXT NOT NULL,
    to_addr         TEXT NOT NULL,
    channel         TEXT NOT NULL,
    subject         TEXT NOT NULL,
    body            TEXT NOT NULL,
    signal          TEXT NOT NULL,           -- JSON of the triggering signal
    status          TEXT NOT NULL,           -- pending | sent | failed | expired
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    last_error      TEXT,
    PRIMARY KEY (id, sink)
);
CREATE INDEX notification_due ON notification (status, next_attempt_at);

CREATE TABLE sync_log (
    id         INTEGER PRIMARY KEY,
    at         INTEGER NOT NULL,
    direction  TEXT NOT NULL,                -- export | import
    generation INTEGER,
    result     TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT ''
);
