//! Contacts: persons (a default address and one per channel) and groups
//! of them, the tables that `person:NAME` and `group:NAME` recipients
//! resolve through ([`super::outbox::resolve`]). Input is checked here,
//! field by field, before anything is written; every change is one
//! transaction.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// The longest person or group name.
pub const MAX_NAME: usize = 64;
/// The longest address.
pub const MAX_ADDRESS: usize = 320;
/// The most per-channel addresses of one person.
pub const MAX_CHANNELS: usize = 16;
/// The most members one group may list in one request.
pub const MAX_MEMBERS: usize = 1000;

/// A person, as stored and as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Person {
    pub name: String,
    /// Used for any channel not in `addresses` (an email address, a phone
    /// number, a URL...).
    #[serde(default)]
    pub address: String,
    /// An address per channel: `email` is what email sinks use.
    #[serde(default)]
    pub addresses: BTreeMap<String, String>,
    /// The groups the person is in (shown, never written through here).
    #[serde(default, skip_deserializing)]
    pub groups: Vec<String>,
}

/// A group and its members' names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    #[serde(default)]
    pub members: Vec<String>,
}

/// Why a contact change was refused.
#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    /// A field failed its check: which one, and why.
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("name: a {what} named `{name}` exists already")]
    Duplicate { what: &'static str, name: String },
    #[error("no person named `{0}`")]
    NoPerson(String),
    #[error("no group named `{0}`")]
    NoGroup(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<rusqlite::Error> for ContactError {
    fn from(e: rusqlite::Error) -> Self {
        ContactError::Store(e.into())
    }
}

impl ContactError {
    /// The request field a refusal is about, if one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            ContactError::Invalid { field, .. } => Some(field),
            ContactError::Duplicate { .. } => Some("name"),
            _ => None,
        }
    }
}

fn invalid(field: &'static str, message: impl Into<String>) -> ContactError {
    ContactError::Invalid {
        field,
        message: message.into(),
    }
}

/// A person or group name: 1 to [`MAX_NAME`] characters, letters, digits,
/// spaces inside, and `. _ - ' @`; no `:` (recipients are `person:NAME`).
pub fn check_name(field: &'static str, name: &str) -> Result<(), ContactError> {
    if name.is_empty() || name.chars().count() > MAX_NAME {
        return Err(invalid(
            field,
            format!("must be 1 to {MAX_NAME} characters"),
        ));
    }
    if name.trim() != name {
        return Err(invalid(field, "must not start or end with a space"));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, ' ' | '.' | '_' | '-' | '\'' | '@')))
    {
        return Err(invalid(
            field,
            format!("{c:?} is not allowed: use letters, digits, spaces and . _ - ' @"),
        ));
    }
    Ok(())
}

/// Whether `s` is an email address as a mail server takes it: one `@`, a
/// local part of 1 to 64 printable characters without spaces, and a
/// domain of dot-separated labels of letters, digits and `-`.
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| {
            c.is_ascii_graphic()
                && !matches!(
                    c,
                    '@' | '<' | '>' | '(' | ')' | ',' | ';' | ':' | '\\' | '"' | '[' | ']'
                )
        });
    let labels: Vec<&str> = domain.split('.').collect();
    let domain_ok = domain.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        });
    local_ok && domain_ok
}

fn check_address(field: &'static str, a: &str, email: bool) -> Result<(), ContactError> {
    if a.len() > MAX_ADDRESS {
        return Err(invalid(field, format!("at most {MAX_ADDRESS} bytes")));
    }
    if a.chars().any(char::is_control) {
        return Err(invalid(field, "must not hold control characters"));
    }
    if email && !is_email(a) {
        return Err(invalid(
            field,
            format!("{a:?} is not an email address (name@example.org)"),
        ));
    }
    Ok(())
}

impl Person {
    /// Check every field: the name, the default address (an email address
    /// when it holds an `@`), the channels and their addresses (`email`'s
    /// must be one).
    pub fn validate(&self) -> Result<(), ContactError> {
        check_name("name", &self.name)?;
        check_address("address", &self.address, self.address.contains('@'))?;
        if self.addresses.len() > MAX_CHANNELS {
            return Err(invalid(
                "addresses",
                format!("at most {MAX_CHANNELS} channels"),
            ));
        }
        for (channel, a) in &self.addresses {
            if channel.is_empty()
                || channel.len() > 64
                || !channel
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            {
                return Err(invalid(
                    "addresses",
                    format!("channel {channel:?}: use 1 to 64 of a-z, 0-9, _ - ."),
                ));
            }
            if a.is_empty() {
                return Err(invalid(
                    "addresses",
                    format!("channel `{channel}` has an empty address"),
                ));
            }
            check_address("addresses", a, channel == "email")?;
        }
        if self.address.is_empty() && self.addresses.is_empty() {
            return Err(invalid(
                "address",
                "give an address, or one per channel in `addresses`",
            ));
        }
        Ok(())
    }
}

fn person_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(i64, Person)> {
    let addresses: String = r.get(3)?;
    Ok((
        r.get(0)?,
        Person {
            name: r.get(1)?,
            address: r.get(2)?,
            // A row that is not a JSON object of strings is an error, not
            // an empty map a later save would write back.
            addresses: serde_json::from_str(&addresses).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    3,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?,
            groups: Vec::new(),
        },
    ))
}

fn groups_of_person(conn: &Connection, id: i64) -> Result<Vec<String>, ContactError> {
    Ok(conn
        .prepare_cached(
            "SELECT g.name FROM group_member m JOIN contact_group g ON g.id = m.group_id
             WHERE m.person_id = ?1 ORDER BY g.name",
        )?
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Every person, by name, with their groups.
pub fn list_persons(conn: &Connection) -> Result<Vec<Person>, ContactError> {
    let rows = conn
        .prepare_cached("SELECT id, name, address, addresses FROM person ORDER BY name")?
        .query_map([], person_row)?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(id, mut p)| {
            p.groups = groups_of_person(conn, id)?;
            Ok(p)
        })
        .collect()
}

/// One person, with their groups.
pub fn get_person(conn: &Connection, name: &str) -> Result<Option<Person>, ContactError> {
    let Some((id, mut p)) = conn
        .prepare_cached("SELECT id, name, address, addresses FROM person WHERE name = ?1")?
        .query_row([name], person_row)
        .optional()?
    else {
        return Ok(None);
    };
    p.groups = groups_of_person(conn, id)?;
    Ok(Some(p))
}

fn person_id(conn: &Connection, name: &str) -> Result<Option<i64>, ContactError> {
    Ok(conn
        .prepare_cached("SELECT id FROM person WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

fn group_id(conn: &Connection, name: &str) -> Result<Option<i64>, ContactError> {
    Ok(conn
        .prepare_cached("SELECT id FROM contact_group WHERE name = ?1")?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

/// Store a person: a new one (`create`: a duplicate name is refused), or
/// create-or-replace the one named `p.name`. Returns whether it is new.
pub fn save_person(conn: &mut Connection, p: &Person, create: bool) -> Result<bool, ContactError> {
    p.validate()?;
    let addresses =
        serde_json::to_string(&p.addresses).map_err(|e| invalid("addresses", e.to_string()))?;
    let tx = conn.transaction()?;
    let existing = person_id(&tx, &p.name)?;
    if existing.is_some() && create {
        return Err(ContactError::Duplicate {
            what: "person",
            name: p.name.clone(),
        });
    }
    match existing {
        Some(id) => tx.execute(
            "UPDATE person SET address = ?2, addresses = ?3 WHERE id = ?1",
            params![id, p.address, addresses],
        )?,
        None => tx.execute(
            "INSERT INTO person (name, address, addresses) VALUES (?1, ?2, ?3)",
            params![p.name, p.address, addresses],
        )?,
    };
    tx.commit()?;
    Ok(existing.is_none())
}

/// Delete a person and their memberships; false if there was none.
pub fn delete_person(conn: &mut Connection, name: &str) -> Result<bool, ContactError> {
    let tx = conn.transaction()?;
    let Some(id) = person_id(&tx, name)? else {
        return Ok(false);
    };
    tx.execute("DELETE FROM group_member WHERE person_id = ?1", [id])?;
    tx.execute("DELETE FROM person WHERE id = ?1", [id])?;
    tx.commit()?;
    Ok(true)
}

fn members_of(conn: &Connection, id: i64) -> Result<Vec<String>, ContactError> {
    Ok(conn
        .prepare_cached(
            "SELECT p.name FROM group_member m JOIN person p ON p.id = m.person_id
             WHERE m.group_id = ?1 ORDER BY p.name",
        )?
        .query_map([id], |r| r.get(0))?
        .collect::<Result<_, _>>()?)
}

/// Every group, by name, with its members.
pub fn list_groups(conn: &Connection) -> Result<Vec<Group>, ContactError> {
    let rows = conn
        .prepare_cached("SELECT id, name FROM contact_group ORDER BY name")?
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    rows.into_iter()
        .map(|(id, name)| {
            Ok(Group {
                name,
                members: members_of(conn, id)?,
            })
        })
        .collect()
}

/// One group with its members.
pub fn get_group(conn: &Connection, name: &str) -> Result<Option<Group>, ContactError> {
    let Some(id) = group_id(conn, name)? else {
        return Ok(None);
    };
    Ok(Some(Group {
        name: name.to_owned(),
        members: members_of(conn, id)?,
    }))
}

/// The ids of `members`, each checked to exist (field `members`).
fn member_ids(conn: &Connection, members: &[String]) -> Result<Vec<i64>, ContactError> {
    if members.len() > MAX_MEMBERS {
        return Err(invalid(
            "members",
            format!("at most {MAX_MEMBERS} members in one request"),
        ));
    }
    members
        .iter()
        .map(|m| {
            person_id(conn, m)?.ok_or_else(|| {
                invalid(
                    "members",
                    format!("no person named `{m}`: create the person first"),
                )
            })
        })
        .collect()
}

/// Create a group with `members` (each must exist).
pub fn create_group(conn: &mut Connection, g: &Group) -> Result<(), ContactError> {
    check_name("name", &g.name)?;
    let tx = conn.transaction()?;
    if group_id(&tx, &g.name)?.is_some() {
        return Err(ContactError::Duplicate {
            what: "group",
            name: g.name.clone(),
        });
    }
    let ids = member_ids(&tx, &g.members)?;
    tx.execute("INSERT INTO contact_group (name) VALUES (?1)", [&g.name])?;
    let gid = tx.last_insert_rowid();
    add_ids(&tx, gid, &ids)?;
    tx.commit()?;
    Ok(())
}

fn add_ids(conn: &Connection, gid: i64, ids: &[i64]) -> Result<(), ContactError> {
    let mut put = conn.prepare_cached(
        "INSERT INTO group_member (group_id, person_id) VALUES (?1, ?2)
         ON CONFLICT (group_id, person_id) DO NOTHING",
    )?;
    for id in ids {
        put.execute(params![gid, id])?;
    }
    Ok(())
}

/// Delete a group and its memberships; false if there was none.
pub fn delete_group(conn: &mut Connection, name: &str) -> Result<bool, ContactError> {
    let tx = conn.transaction()?;
    let Some(id) = group_id(&tx, name)? else {
        return Ok(false);
    };
    tx.execute("DELETE FROM group_member WHERE group_id = ?1", [id])?;
    tx.execute("DELETE FROM contact_group WHERE id = ?1", [id])?;
    tx.commit()?;
    Ok(true)
}

/// How a group's members change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Add these (already members stay).
    Add,
    /// The group's members become exactly these.
    Replace,
    /// Remove these (a name that is not a member is refused).
    Remove,
}

/// Change `group`'s members; returns the members after.
pub fn change_members(
    conn: &mut Connection,
    group: &str,
    names: &[String],
    how: Membership,
) -> Result<Vec<String>, ContactError> {
    let tx = conn.transaction()?;
    let gid = group_id(&tx, group)?.ok_or_else(|| ContactError::NoGroup(group.to_owned()))?;
    let ids = match how {
        Membership::Remove => names
            .iter()
            .map(|n| person_id(&tx, n)?.ok_or_else(|| ContactError::NoPerson(n.clone())))
            .collect::<Result<Vec<_>, _>>()?,
        _ => member_ids(&tx, names)?,
    };
    match how {
        Membership::Add => add_ids(&tx, gid, &ids)?,
        Membership::Replace => {
            tx.execute("DELETE FROM group_member WHERE group_id = ?1", [gid])?;
            add_ids(&tx, gid, &ids)?;
        }
        Membership::Remove => {
            let mut del = tx.prepare_cached(
                "DELETE FROM group_member WHERE group_id = ?1 AND person_id = ?2",
            )?;
            for (id, n) in ids.iter().zip(names) {
                if del.execute(params![gid, id])? == 0 {
                    return Err(ContactError::NoPerson(format!("{n}` in group `{group}")));
                }
            }
        }
    }
    let members = members_of(&tx, gid)?;
    tx.commit()?;
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;

    fn person(name: &str, address: &str) -> Person {
        Person {
            name: name.into(),
            address: address.into(),
            addresses: BTreeMap::new(),
            groups: Vec::new(),
        }
    }

    #[test]
    fn emails_are_checked_as_a_mail_server_takes_them() {
        for ok in [
            "a@example.org",
            "first.last+tag@mail.example.co.uk",
            "x@a-b.io",
        ] {
            assert!(is_email(ok), "{ok}");
        }
        for bad in [
            "",
            "plain",
            "@example.org",
            "a@",
            "a@localhost",
            "a@@example.org",
            "a b@example.org",
            "a@exa mple.org",
            "a@-example.org",
            "a@example..org",
            ".a@example.org",
            "a..b@example.org",
            "<a>@example.org",
            "a@example.org\n",
        ] {
            assert!(!is_email(bad), "{bad:?}");
        }
    }

    #[test]
    fn each_bad_field_is_named() {
        let field = |p: Person| p.validate().unwrap_err().field();
        assert_eq!(field(person("", "a@example.org")), Some("name"));
        assert_eq!(field(person("bob:x", "a@example.org")), Some("name"));
        assert_eq!(field(person(" bob", "a@example.org")), Some("name"));
        assert_eq!(
            field(person(&"b".repeat(65), "a@example.org")),
            Some("name")
        );
        assert_eq!(field(person("bob", "bob@")), Some("address"));
        assert_eq!(field(person("bob", "")), Some("address"));
        assert_eq!(field(person("bob", "line\nbreak")), Some("address"));
        let mut p = person("bob", "");
        p.addresses.insert("email".into(), "not-an-email".into());
        assert_eq!(field(p), Some("addresses"));
        let mut p = person("bob", "+15550100");
        p.addresses.insert("bad channel".into(), "x".into());
        assert_eq!(field(p), Some("addresses"));
        // A phone number is a fine default address; `email` per channel.
        let mut p = person("Bob O'Neil", "+15550100");
        p.addresses.insert("email".into(), "bob@example.org".into());
        assert!(p.validate().is_ok());
    }

    #[test]
    fn a_corrupt_address_map_is_an_error_not_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write_blocking(|c| {
                c.execute(
                    "INSERT INTO person (name, address, addresses) VALUES ('ann', 'a@example.org', 'not json')",
                    [],
                )?;
                Ok(())
            })
            .unwrap();
        let r = store.read_blocking(|c| Ok(get_person(c, "ann")));
        assert!(matches!(r, Ok(Err(ContactError::Store(_)))), "{r:?}");
    }

    #[test]
    fn persons_groups_and_members_round_trip_and_resolve() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .write_blocking(|c| {
                assert!(save_person(c, &person("ann", "ann@example.org"), true).unwrap());
                assert!(save_person(c, &person("bob", "bob@example.org"), true).unwrap());
                assert!(matches!(
                    save_person(c, &person("ann", "x@example.org"), true),
                    Err(ContactError::Duplicate { .. })
                ));
                // Create-or-replace updates in place.
                assert!(!save_person(c, &person("ann", "ann2@example.org"), false).unwrap());
                create_group(
                    c,
                    &Group {
                        name: "it".into(),
                        members: vec!["ann".into(), "bob".into()],
                    },
                )
                .unwrap();
                let e = create_group(
                    c,
                    &Group {
                        name: "ops".into(),
                        members: vec!["zed".into()],
                    },
                )
                .unwrap_err();
                assert_eq!(e.field(), Some("members"));
                // Nothing of the refused group was written.
                assert!(get_group(c, "ops").unwrap().is_none());
                let r = super::super::outbox::resolve(c, "group:it", "email")
                    .unwrap()
                    .unwrap();
                assert_eq!(r, vec!["ann2@example.org", "bob@example.org"]);
                assert_eq!(get_person(c, "bob").unwrap().unwrap().groups, vec!["it"]);
                let m = change_members(c, "it", &["bob".into()], Membership::Remove).unwrap();
                assert_eq!(m, vec!["ann"]);
                assert!(matches!(
                    change_members(c, "it", &["bob".into()], Membership::Remove),
                    Err(ContactError::NoPerson(_))
                ));
                let m = change_members(c, "it", &["bob".into()], Membership::Replace).unwrap();
                assert_eq!(m, vec!["bob"]);
                assert!(delete_person(c, "bob").unwrap());
                assert_eq!(
                    get_group(c, "it").unwrap().unwrap().members,
                    Vec::<String>::new()
                );
                assert!(delete_group(c, "it").unwrap());
                assert!(!delete_group(c, "it").unwrap());
                assert_eq!(list_persons(c).unwrap().len(), 1);
                Ok(())
            })
            .unwrap();
    }
}
