//! The web console's signed-out sessions (the sessions themselves are
//! signed cookies, kept nowhere).

use rusqlite::{Connection, params};

use super::StoreError;

/// Remember that `session` (its id) was signed out; it would have expired
/// at `expires` (unix seconds). Rows already expired at `now` go.
pub fn sign_out(
    conn: &Connection,
    session: &str,
    expires: u64,
    now: u64,
) -> Result<(), StoreError> {
    conn.execute(
        "DELETE FROM console_signed_out WHERE expires <= ?1",
        [now as i64],
    )?;
    conn.execute(
        "INSERT INTO console_signed_out (session, expires) VALUES (?1, ?2)
         ON CONFLICT (session) DO NOTHING",
        params![session, expires as i64],
    )?;
    Ok(())
}

/// The sessions signed out that have not expired at `now`.
pub fn signed_out(conn: &Connection, now: u64) -> Result<Vec<(String, u64)>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT session, expires FROM console_signed_out WHERE expires > ?1")?;
    let rows = stmt.query_map([now as i64], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
