-- Console sessions signed out before they expired: a signed-out cookie
-- stays refused across a restart of the node, until its expiry (unix
-- seconds), when the row goes.
CREATE TABLE console_signed_out (
    session TEXT PRIMARY KEY,
    expires INTEGER NOT NULL
);
