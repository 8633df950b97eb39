//! `spindle export` and `spindle import`: a consistent, versioned backup of
//! the whole key-value store, and its restore.
//!
//! The store is one SQLite file in Spin's layout (`spin_key_value(store,
//! key, value)`), so a backup moves state between Spindle's host and
//! `spin up` alike. Export reads every entry of every store label in one
//! read transaction: under WAL that is a snapshot, consistent even while an
//! app writes. The file is JSON Lines:
//!
//! ```text
//! {"kind":"header","format":"spindle-backup","version":1,"created_at_ms":...}
//! {"kind":"entry","store":"default","key":"run:r...","value":"<base64>"}
//! ...
//! {"kind":"end","entries":1234,"sha256":"<hex of every entry line>"}
//! ```
//!
//! Import checks the whole file first (format, version, every line, the
//! count and digest in the end line), then writes every entry in one
//! transaction: a damaged or truncated backup writes nothing. It refuses a
//! store that holds anything unless told to replace it.

use std::io::{BufRead, Write};
use std::path::Path;

use base64::Engine as _;
use rusqlite::{Connection, OpenFlags, params};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The `format` of a Spindle backup.
pub const FORMAT: &str = "spindle-backup";
/// The newest backup version this build writes and reads.
pub const VERSION: u32 = 1;

/// Why an export or import failed. Nothing was written by a failed import.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// There is no store to export.
    #[error("no key-value store at {0} (is the state directory right?)")]
    NoStore(String),
    /// The store or the file could not be read or written.
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// Reading or writing the backup file failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The file is not a backup this build can restore.
    #[error("line {line}: {why}")]
    Malformed {
        /// 1-based line number.
        line: usize,
        /// What is wrong there.
        why: String,
    },
    /// The file ends before its end line: cut short.
    #[error("the backup is truncated: it has no end line after {0} entries")]
    Truncated(u64),
    /// The count or digest in the end line does not match the entries.
    #[error("the backup was changed or damaged: {0}")]
    Damaged(String),
    /// The target store holds entries and replacing them was not asked for.
    #[error(
        "the store at {path} holds {entries} entries; import replaces nothing unless asked (--overwrite replaces all of them)"
    )]
    NotEmpty {
        /// The store file.
        path: String,
        /// How many entries it holds.
        entries: u64,
    },
}

/// What an export or import did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Entries written or restored.
    pub entries: u64,
    /// Store labels seen.
    pub stores: Vec<String>,
    /// Entries removed first (an import with overwrite).
    pub replaced: u64,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    Header {
        format: String,
        version: u32,
        created_at_ms: u64,
    },
    Entry {
        store: String,
        key: String,
        value: String,
    },
    End {
        entries: u64,
        sha256: String,
    },
}

/// Writes a backup of the store at `db` to `out`.
pub fn export(db: &Path, out: &mut dyn Write, now_ms: u64) -> Result<Summary, BackupError> {
    if !db.exists() {
        return Err(BackupError::NoStore(db.display().to_string()));
    }
    let mut conn = Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // One read transaction: every entry from the same moment.
    let tx = conn.transaction()?;
    let header = Line::Header {
        format: FORMAT.into(),
        version: VERSION,
        created_at_ms: now_ms,
    };
    writeln!(out, "{}", to_json(&header))?;
    let mut digest = Sha256::new();
    let mut entries = 0u64;
    let mut stores: Vec<String> = Vec::new();
    {
        let mut stmt =
            tx.prepare("SELECT store, key, value FROM spin_key_value ORDER BY store, key")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let store: String = row.get(0)?;
            let key: String = row.get(1)?;
            let value: Vec<u8> = row.get(2)?;
            if stores.last() != Some(&store) {
                stores.push(store.clone());
            }
            let line = to_json(&Line::Entry {
                store,
                key,
                value: base64::engine::general_purpose::STANDARD.encode(value),
            });
            digest.update(line.as_bytes());
            digest.update(b"\n");
            writeln!(out, "{line}")?;
            entries += 1;
        }
    }
    tx.finish()?;
    let end = Line::End {
        entries,
        sha256: hex::encode(digest.finalize()),
    };
    writeln!(out, "{}", to_json(&end))?;
    out.flush()?;
    Ok(Summary {
        entries,
        stores,
        replaced: 0,
    })
}

fn to_json(line: &Line) -> String {
    serde_json::to_string(line).unwrap_or_default()
}

/// One entry of a checked backup.
struct Row {
    store: String,
    key: String,
    value: Vec<u8>,
}

/// Reads and checks a whole backup: every entry, in order, once the count
/// and digest of its end line match.
fn read(input: &mut dyn BufRead) -> Result<Vec<Row>, BackupError> {
    let malformed = |line: usize, why: String| BackupError::Malformed { line, why };
    let mut rows = Vec::new();
    let mut digest = Sha256::new();
    let mut seen_header = false;
    let mut text = String::new();
    let mut n = 0usize;
    loop {
        text.clear();
        if input.read_line(&mut text)? == 0 {
            return Err(if seen_header {
                BackupError::Truncated(rows.len() as u64)
            } else {
                malformed(1, "the file is empty, not a Spindle backup".into())
            });
        }
        n += 1;
        let raw = text.strip_suffix('\n').unwrap_or(&text);
        let line: Line = serde_json::from_str(raw).map_err(|e| {
            malformed(
                n,
                if seen_header {
                    format!("not a backup line: {e}")
                } else {
                    format!("not a Spindle backup (no header line): {e}")
                },
            )
        })?;
        match line {
            Line::Header {
                format, version, ..
            } => {
                if seen_header {
                    return Err(malformed(n, "a second header line".into()));
                }
                if format != FORMAT {
                    return Err(malformed(n, format!("format {format:?} is not {FORMAT:?}")));
                }
                if version == 0 || version > VERSION {
                    return Err(malformed(
                        n,
                        format!(
                            "version {version} is not one this spindle reads (1 to {VERSION}); use a newer spindle"
                        ),
                    ));
                }
                seen_header = true;
            }
            _ if !seen_header => {
                return Err(malformed(
                    n,
                    "not a Spindle backup: the first line must be its header".into(),
                ));
            }
            Line::Entry { store, key, value } => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&value)
                    .map_err(|e| {
                        malformed(n, format!("the value of {key:?} is not base64: {e}"))
                    })?;
                digest.update(raw.as_bytes());
                digest.update(b"\n");
                rows.push(Row {
                    store,
                    key,
                    value: bytes,
                });
            }
            Line::End { entries, sha256 } => {
                if entries != rows.len() as u64 {
                    return Err(BackupError::Damaged(format!(
                        "its end line counts {entries} entries, the file holds {}",
                        rows.len()
                    )));
                }
                let actual = hex::encode(digest.finalize());
                // Not a secret: a checksum against damage, compared plainly.
                if actual != sha256 {
                    return Err(BackupError::Damaged(
                        "the entries' SHA-256 is not the one its end line records".into(),
                    ));
                }
                text.clear();
                if input.read_line(&mut text)? != 0 && !text.trim().is_empty() {
                    return Err(malformed(n + 1, "lines after the end line".into()));
                }
                return Ok(rows);
            }
        }
    }
}

/// Restores the backup read from `input` into the store at `db` (created
/// if missing). Refuses a store holding entries unless `overwrite`, which
/// replaces all of them.
pub fn import(db: &Path, input: &mut dyn BufRead, overwrite: bool) -> Result<Summary, BackupError> {
    let rows = read(input)?;
    let mut conn = crate::kv::connect(db)?;
    // Checked and written in one write transaction: no app can slip an
    // entry in between.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let present: u64 = tx.query_row("SELECT COUNT(*) FROM spin_key_value", [], |r| r.get(0))?;
    if present > 0 && !overwrite {
        return Err(BackupError::NotEmpty {
            path: db.display().to_string(),
            entries: present,
        });
    }
    tx.execute("DELETE FROM spin_key_value", [])?;
    let mut stores: Vec<String> = Vec::new();
    {
        let mut stmt =
            tx.prepare("INSERT INTO spin_key_value (store, key, value) VALUES (?1, ?2, ?3)")?;
        for row in &rows {
            if !stores.contains(&row.store) {
                stores.push(row.store.clone());
            }
            stmt.execute(params![row.store, row.key, row.value])
                .map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _)
                        if f.code == rusqlite::ErrorCode::ConstraintViolation =>
                    {
                        BackupError::Damaged(format!(
                            "key {:?} of store {:?} appears twice",
                            row.key, row.store
                        ))
                    }
                    other => other.into(),
                })?;
        }
    }
    tx.commit()?;
    Ok(Summary {
        entries: rows.len() as u64,
        stores,
        replaced: present,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(path: &Path, entries: &[(&str, &str, &[u8])]) {
        let conn = crate::kv::connect(path).unwrap();
        for (s, k, v) in entries {
            conn.execute(
                "INSERT INTO spin_key_value VALUES (?1, ?2, ?3)",
                params![s, k, v],
            )
            .unwrap();
        }
    }

    fn dump(path: &Path) -> Vec<(String, String, Vec<u8>)> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn
            .prepare("SELECT store, key, value FROM spin_key_value ORDER BY store, key")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    const ENTRIES: &[(&str, &str, &[u8])] = &[
        ("default", "run:r1", br#"{"id":"r1"}"#),
        ("default", "counter:runs", &[7, 0, 0, 0, 0, 0, 0, 0]),
        ("default", "key\nwith \"odd\" bytes", &[0, 255, 10, 13]),
        ("other", "x", b""),
    ];

    fn exported(entries: &[(&str, &str, &[u8])]) -> (tempfile::TempDir, Vec<u8>) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("a.db");
        store_with(&db, entries);
        let mut out = Vec::new();
        let s = export(&db, &mut out, 42).unwrap();
        assert_eq!(s.entries, entries.len() as u64);
        (dir, out)
    }

    #[test]
    fn an_export_restores_byte_for_byte_into_an_empty_store() {
        let (dir, file) = exported(ENTRIES);
        let to = dir.path().join("fresh/b.db");
        let s = import(&to, &mut file.as_slice(), false).unwrap();
        assert_eq!(s.entries, 4);
        assert_eq!(s.stores, ["default", "other"]);
        assert_eq!(dump(&to), dump(&dir.path().join("a.db")));
        // The file says what it is on its first line.
        let first = file.split(|b| *b == b'\n').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(first).unwrap();
        assert_eq!(header["format"], FORMAT);
        assert_eq!(header["version"], VERSION);
    }

    #[test]
    fn a_store_with_entries_is_replaced_only_when_asked() {
        let (dir, file) = exported(ENTRIES);
        let to = dir.path().join("b.db");
        store_with(&to, &[("default", "run:other", b"1")]);
        let err = import(&to, &mut file.as_slice(), false).unwrap_err();
        assert!(
            matches!(err, BackupError::NotEmpty { entries: 1, .. }),
            "{err}"
        );
        assert_eq!(dump(&to).len(), 1, "nothing was written");
        let s = import(&to, &mut file.as_slice(), true).unwrap();
        assert_eq!((s.entries, s.replaced), (4, 1));
        assert_eq!(dump(&to), dump(&dir.path().join("a.db")));
    }

    #[test]
    fn damaged_truncated_or_foreign_files_write_nothing() {
        let (dir, file) = exported(ENTRIES);
        let text = String::from_utf8(file).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let tampered = text.replace("run:r1", "run:r2");
        let truncated = lines[..lines.len() - 1].join("\n") + "\n";
        let dropped = [&lines[..2], &lines[3..]].concat().join("\n") + "\n";
        let future = text.replace("\"version\":1", "\"version\":9");
        let doubled = [&lines[..2], &lines[1..]].concat().join("\n") + "\n";
        let cases: Vec<(&str, String)> = vec![
            ("tampered", tampered),
            ("truncated", truncated),
            ("dropped", dropped),
            ("future", future),
            ("doubled", doubled),
            ("empty", String::new()),
            ("foreign", "{\"hello\": 1}\n".into()),
            ("trailing", text.clone() + "{\"kind\":\"entry\"}\n"),
        ];
        for (what, bad) in cases {
            let to = dir.path().join(format!("{what}.db"));
            let err = import(&to, &mut bad.as_bytes(), false).unwrap_err();
            let shown = err.to_string();
            assert!(!shown.is_empty(), "{what}");
            if to.exists() {
                assert!(dump(&to).is_empty(), "{what}: {err}");
            }
        }
    }

    #[test]
    fn exporting_a_missing_store_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let err = export(&dir.path().join("none.db"), &mut Vec::new(), 0).unwrap_err();
        assert!(err.to_string().contains("none.db"), "{err}");
    }

    #[test]
    fn hostile_files_never_panic() {
        let dir = tempfile::tempdir().unwrap();
        let to = dir.path().join("h.db");
        let mut seed = 7u64;
        let (_, good) = exported(ENTRIES);
        for round in 0..500 {
            // Flip, cut and splice bytes of a real backup.
            let mut bytes = good.clone();
            for _ in 0..(round % 7 + 1) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let at = (seed as usize) % bytes.len();
                match seed % 3 {
                    0 => bytes[at] ^= 1 << (seed % 8),
                    1 => bytes.truncate(at),
                    _ => bytes.insert(at, (seed >> 8) as u8),
                }
                if bytes.is_empty() {
                    break;
                }
            }
            if let Ok(s) = import(&to, &mut bytes.as_slice(), true) {
                // Only an intact backup restores.
                assert_eq!(s.entries, 4, "round {round}");
            }
        }
    }
}
