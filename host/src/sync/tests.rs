//! Export and import on real SQLite files: identical rows, and every bad
//! snapshot refused with nothing changed.

use super::*;
use crate::store::Store;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(dir.path()).unwrap();
    (dir, s)
}

fn all() -> Vec<String> {
    vec!["all".to_owned()]
}

fn fill(s: &Store, tag: &str) {
    s.write_blocking(|c| {
        c.execute_batch(&format!(
            "INSERT INTO person (id, name, address) VALUES (1, 'ann-{tag}', 'ann@x'), (2, 'bob', 'Robert''); DROP TABLE person; --');
             INSERT INTO contact_group (id, name) VALUES (1, 'it');
             INSERT INTO group_member VALUES (1, 1), (1, 2);
             INSERT INTO location (id, name) VALUES (1, 'hq');
             INSERT INTO zone (id, name, location_id) VALUES (1, 'north', 1);
             INSERT INTO device (id, name, kind) VALUES (1, 'door-1', 'door');
             INSERT INTO pbx_settings VALUES ('trunk', 'sip:1');
             INSERT INTO voice_recording (id, name, file) VALUES (1, 'alarm', 'alarm.wav');
             INSERT INTO text_provider (id, name, kind) VALUES (1, 'sms', 'http');
             INSERT INTO signal_script (name, wasm, sha256, updated_at) VALUES ('s', x'0061736d', 'abc', 1);
             INSERT INTO signal_rule (name, script, updated_at) VALUES ('r', 's', 1);"
        ))?;
        Ok(())
    })
    .unwrap();
}

fn snapshot_of(s: &Store, generation: u64) -> Vec<u8> {
    s.read_blocking(|c| {
        Ok(export(c, &all(), generation, "p", false, Vec::new())
            .map_err(|e| crate::store::StoreError::Invalid(e.to_string()))?
            .0)
    })
    .unwrap()
}

fn import_into(s: &Store, bytes: &[u8]) -> Result<SyncStats, SyncError> {
    s.write_blocking(|c| Ok(import(c, bytes, &all(), 64 << 20, &|| {})))
        .unwrap()
}

/// A checksum of every synced table's rows.
fn checksum(s: &Store) -> String {
    s.read_blocking(|c| {
        let mut out = String::new();
        for t in tables_of(&all()).unwrap() {
            let cols = columns(c, t).unwrap();
            let mut stmt = c.prepare(&format!(
                "SELECT {} FROM {t} ORDER BY {}",
                cols.join(", "),
                order_by(t)
            ))?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                for i in 0..cols.len() {
                    out.push_str(&format!("{:?}|", SqlValue::from_ref(r.get_ref(i)?)));
                }
                out.push('\n');
            }
        }
        Ok(out)
    })
    .unwrap()
}

#[test]
fn every_type_syncs_and_rows_are_identical() {
    let (_a, p) = store();
    let (_b, s) = store();
    fill(&p, "p");
    let bytes = snapshot_of(&p, 1);
    let stats = import_into(&s, &bytes).unwrap();
    assert_eq!(stats.rows["person"], 2);
    assert_eq!(stats.rows["group_member"], 2);
    assert_eq!(checksum(&p), checksum(&s));
    // SQL-looking strings are stored verbatim.
    let bob: String = s
        .read_blocking(|c| {
            Ok(c.query_row("SELECT address FROM person WHERE id = 2", [], |r| r.get(0))?)
        })
        .unwrap();
    assert_eq!(bob, "Robert'); DROP TABLE person; --");
}

/// A hand-made header for crafted snapshots.
fn header(generation: u64) -> Record {
    Record::Header(Header {
        format: snapshot::FORMAT.into(),
        version: 1,
        generation,
        types: normalise(&all()),
        source: "x".into(),
        software: "x".into(),
        created_at: 0,
        force: false,
    })
}

fn refused(s: &Store, bytes: &[u8], needle: &str) {
    let before = checksum(s);
    let err = import_into(s, bytes).unwrap_err().to_string();
    assert!(err.contains(needle), "expected `{needle}` in: {err}");
    assert_eq!(checksum(s), before, "nothing changed");
}

#[test]
fn bad_snapshots_are_refused_and_nothing_changes() {
    let (_a, p) = store();
    let (_b, s) = store();
    fill(&p, "p");
    import_into(&s, &snapshot_of(&p, 5)).unwrap();
    // A replayed (older or equal) generation.
    refused(&s, &snapshot_of(&p, 5), "not newer than 5");
    refused(&s, &snapshot_of(&p, 3), "not newer than 5");
    // Truncated.
    let good = snapshot_of(&p, 6);
    refused(&s, &good[..good.len() / 2], "");
    // Not zstd at all.
    refused(&s, b"definitely not zstd", "zstd");
    // A zstd bomb: 200 MB of zeros in one record, cap 64 MB.
    let mut w = snapshot::Writer::new(Vec::new()).unwrap();
    w.write(&header(9)).unwrap();
    let (mut enc, _) = w.finish().unwrap();
    enc.extend(zstd::encode_all(&vec![0u8; 200 << 20][..], 19).unwrap());
    assert!(enc.len() < 1 << 20, "the bomb is small: {}", enc.len());
    refused(&s, &enc, "");
    // Unknown table, unknown column.
    let craft = |table: &str, cols: &[&str]| {
        let mut w = snapshot::Writer::new(Vec::new()).unwrap();
        w.write(&header(10)).unwrap();
        w.write(&Record::Table {
            name: table.into(),
            columns: cols.iter().map(|c| (*c).to_owned()).collect(),
        })
        .unwrap();
        w.finish().unwrap().0
    };
    refused(
        &s,
        &craft("settings", &["key", "value"]),
        "unknown table `settings`",
    );
    refused(
        &s,
        &craft("person", &["id", "name", "shoe_size"]),
        "unknown column `shoe_size`",
    );
}

#[test]
fn emptying_a_table_needs_force() {
    let (_a, p) = store();
    let (_b, s) = store();
    fill(&p, "p");
    import_into(&s, &snapshot_of(&p, 1)).unwrap();
    p.write_blocking(|c| Ok(c.execute("DELETE FROM device", [])?))
        .unwrap();
    refused(&s, &snapshot_of(&p, 2), "would empty table `device`");
    let forced = p
        .read_blocking(|c| {
            Ok(export(c, &all(), 3, "p", true, Vec::new())
                .map_err(|e| crate::store::StoreError::Invalid(e.to_string()))?
                .0)
        })
        .unwrap();
    import_into(&s, &forced).unwrap();
    assert_eq!(checksum(&p), checksum(&s));
}

#[test]
fn a_generation_that_would_overflow_is_refused() {
    let (_p, p) = store();
    fill(&p, "p");
    let (_s, s) = store();
    for g in [u64::MAX, MAX_GENERATION + 1] {
        let err = import_into(&s, &snapshot_of(&p, g))
            .unwrap_err()
            .to_string();
        assert!(err.contains("over the largest allowed"), "{g}: {err}");
    }
    import_into(&s, &snapshot_of(&p, MAX_GENERATION)).expect("the largest is fine");
}

#[test]
fn a_row_that_breaks_a_constraint_is_the_snapshots_fault() {
    let (_p, p) = store();
    let mut w = snapshot::Writer::new(Vec::new()).unwrap();
    w.write(&Record::Header(Header {
        format: snapshot::FORMAT.into(),
        version: snapshot::VERSION,
        generation: 1,
        types: vec!["contact".into()],
        source: "attacker".into(),
        software: "x".into(),
        created_at: 0,
        force: true,
    }))
    .unwrap();
    for (i, t) in tables_of(&["contact".to_owned()])
        .unwrap()
        .iter()
        .enumerate()
    {
        let cols = p.read_blocking(|c| Ok(columns(c, t).unwrap())).unwrap();
        w.write(&Record::Table {
            name: (*t).to_owned(),
            columns: cols.clone(),
        })
        .unwrap();
        if i == 0 {
            // person.name is NOT NULL.
            w.write(&Record::Row(vec![SqlValue::Null; cols.len()]))
                .unwrap();
        }
    }
    w.write(&Record::End { tables: 5, rows: 1 }).unwrap();
    let (bytes, _) = w.finish().unwrap();
    let err = p
        .write_blocking(|c| {
            Ok(import(
                c,
                &bytes[..],
                &["contact".to_owned()],
                64 << 20,
                &|| {},
            ))
        })
        .unwrap()
        .unwrap_err();
    assert!(matches!(err, SyncError::Refused(_)), "{err:?}");
    assert!(err.to_string().contains("row 1 of table `person`"), "{err}");
}
