//! Recording metadata in SQL through sqlx: recordings, wrapped data keys, tags, redaction spans,
//! tombstones, the audit log and the append-only consent ledger. SQLite by default; the queries stay portable (numbered `$N`
//! parameters, no SQLite-only functions) so a PostgreSQL store can follow with its own migration.
//!
//! This module is async (sqlx is); [`super::Vault`] owns a small runtime and offers the synchronous
//! face the recording pipeline needs. It stores what it is given: personal data arrives already
//! sealed (`sealed_parties`) or hashed (`subject_hash`); it never encrypts or decides retention.
//! Deletions use SQLite's `secure_delete` and a WAL checkpoint, so erased rows (wrapped keys
//! included) are overwritten in the database files rather than left in free pages.

use std::collections::BTreeMap;
use std::path::Path;
use std::str::FromStr;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::Row;

use super::crypto::WrappedKey;
use super::sink::{LawfulBasis, Party, RedactionSpan};

#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    #[error("metadata database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("metadata database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("metadata database holds an invalid value in {column}")]
    Corrupt { column: &'static str },
}

/// Life cycle of a stored recording.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordingState {
    /// Open: chunks are still being sealed.
    Recording,
    Complete,
    /// Ended by a crash or a pipeline stop; what was sealed is readable.
    Truncated,
    /// Consent was revoked and the policy kept what was recorded before.
    Revoked,
}

impl RecordingState {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingState::Recording => "recording",
            RecordingState::Complete => "complete",
            RecordingState::Truncated => "truncated",
            RecordingState::Revoked => "revoked",
        }
    }

    fn parse(s: &str) -> Option<RecordingState> {
        Some(match s {
            "recording" => RecordingState::Recording,
            "complete" => RecordingState::Complete,
            "truncated" => RecordingState::Truncated,
            "revoked" => RecordingState::Revoked,
            _ => return None,
        })
    }
}

/// A new recording's row.
#[derive(Clone, Debug)]
pub struct NewRecording {
    pub id: String,
    pub started_at_ms: i64,
    pub route: String,
    pub sample_rate: u32,
    pub channels: Vec<Party>,
    pub subject_hash: Option<String>,
    pub basis: LawfulBasis,
    pub retention_class: String,
    pub expires_at_ms: i64,
    pub sealed_parties: Vec<u8>,
    pub key: WrappedKey,
}

/// A recording's metadata as listed and shown (no personal data except inside `sealed_parties`).
#[derive(Clone, Debug)]
pub struct RecordingRow {
    pub id: String,
    pub state: RecordingState,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub route: String,
    pub sample_rate: u32,
    pub channels: Vec<Party>,
    pub basis: LawfulBasis,
    pub retention_class: String,
    pub expires_at_ms: i64,
    pub legal_hold: bool,
    pub tags: Vec<String>,
    pub sealed_parties: Vec<u8>,
}

/// Redaction summary: span counts by kind and the muted (unverified) milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RedactionSummary {
    pub counts: BTreeMap<String, u64>,
    pub unverified_ms: u64,
}

/// `recordings list` filters; all optional and combined with AND.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub tag: Option<String>,
    pub class: Option<String>,
}

/// A tombstone: proof that a recording existed and was erased, without personal data.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tombstone {
    pub recording_id: String,
    pub erased_at_ms: i64,
    pub reason: String,
    pub retention_class: String,
}

/// One audit record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub recording_id: Option<String>,
    pub detail: String,
}

fn party_str(p: Party) -> &'static str {
    match p {
        Party::Caller => "caller",
        Party::Agent => "agent",
    }
}

fn parse_channels(s: &str) -> Result<Vec<Party>, MetaError> {
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p {
            "caller" => Ok(Party::Caller),
            "agent" => Ok(Party::Agent),
            _ => Err(MetaError::Corrupt { column: "recordings.channels" }),
        })
        .collect()
}

pub struct MetaStore {
    pool: SqlitePool,
}

/// One consent-ledger row as stored: no phone number, only the subject's keyed hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsentRow {
    pub id: String,
    pub call_id: String,
    pub subject_hash: Option<String>,
    pub route: String,
    /// `consent`, or the non-consent basis name.
    pub basis: String,
    /// `ivr`, `dtmf`, `header`, `api` or `not_required`.
    pub method: String,
    /// `granted`, `declined`, `revoked` or `no_answer`.
    pub decision: String,
    pub prompt_id: Option<String>,
    pub prompt_language: Option<String>,
    pub prompt_sha256: Option<String>,
    pub decided_at_ms: i64,
    pub recording_id: Option<String>,
}

const RECORDING_COLUMNS: &str = "id, state, started_at_ms, ended_at_ms, route, sample_rate, channels, basis, \
     basis_ref, retention_class, expires_at_ms, legal_hold, sealed_parties";

impl MetaStore {
    /// Opens (creating) the SQLite database at `path` and applies migrations.
    pub async fn open(path: &Path) -> Result<MetaStore, MetaError> {
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(10))
            .pragma("secure_delete", "ON");
        // One connection: the vault is one writer, and a single connection keeps the
        // checkpoint-after-erase guarantee simple.
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?;
        sqlx::migrate!("src/vault/migrations").run(&pool).await?;
        Ok(MetaStore { pool })
    }

    pub async fn insert(&self, r: &NewRecording) -> Result<(), MetaError> {
        let (basis, basis_ref) = match &r.basis {
            LawfulBasis::Consent { ledger_ref } => ("consent", ledger_ref.as_str()),
            LawfulBasis::Other { name } => ("other", name.as_str()),
        };
        let channels: Vec<&str> = r.channels.iter().map(|p| party_str(*p)).collect();
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO recordings (id, state, started_at_ms, ended_at_ms, route, sample_rate, channels, \
             subject_hash, basis, basis_ref, retention_class, expires_at_ms, legal_hold, sealed_parties) \
             VALUES ($1, $2, $3, NULL, $4, $5, $6, $7, $8, $9, $10, $11, 0, $12)",
        )
        .bind(&r.id)
        .bind(RecordingState::Recording.as_str())
        .bind(r.started_at_ms)
        .bind(&r.route)
        .bind(i64::from(r.sample_rate))
        .bind(channels.join(","))
        .bind(&r.subject_hash)
        .bind(basis)
        .bind(basis_ref)
        .bind(&r.retention_class)
        .bind(r.expires_at_ms)
        .bind(&r.sealed_parties)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO recording_keys (recording_id, kek_id, wrapped) VALUES ($1, $2, $3)")
            .bind(&r.id)
            .bind(&r.key.kek_id)
            .bind(&r.key.bytes)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn finish(&self, id: &str, state: RecordingState, ended_at_ms: i64) -> Result<bool, MetaError> {
        let r = sqlx::query("UPDATE recordings SET state = $1, ended_at_ms = $2 WHERE id = $3")
            .bind(state.as_str())
            .bind(ended_at_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn add_span(&self, id: &str, span: &RedactionSpan) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO redaction_spans (recording_id, channel, start_ms, end_ms, kind) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id)
        .bind(i64::from(span.channel))
        .bind(span.start_ms as i64)
        .bind(span.end_ms as i64)
        .bind(span.kind.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Spans in time order, kinds as their report strings.
    pub async fn spans(&self, id: &str) -> Result<Vec<(u8, u64, u64, String)>, MetaError> {
        let rows = sqlx::query(
            "SELECT channel, start_ms, end_ms, kind FROM redaction_spans WHERE recording_id = $1 \
             ORDER BY start_ms, channel",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let ch: i64 = r.try_get("channel")?;
                let s: i64 = r.try_get("start_ms")?;
                let e: i64 = r.try_get("end_ms")?;
                Ok((ch as u8, s.max(0) as u64, e.max(0) as u64, r.try_get("kind")?))
            })
            .collect()
    }

    pub async fn summary(&self, id: &str) -> Result<RedactionSummary, MetaError> {
        let mut s = RedactionSummary::default();
        for (_, start, end, kind) in self.spans(id).await? {
            if kind == "unverified" {
                s.unverified_ms += end.saturating_sub(start);
            }
            *s.counts.entry(kind).or_default() += 1;
        }
        Ok(s)
    }

    fn row(&self, r: &sqlx::sqlite::SqliteRow, tags: Vec<String>) -> Result<RecordingRow, MetaError> {
        let state: String = r.try_get("state")?;
        let basis: String = r.try_get("basis")?;
        let basis_ref: String = r.try_get("basis_ref")?;
        let channels: String = r.try_get("channels")?;
        let rate: i64 = r.try_get("sample_rate")?;
        let hold: i64 = r.try_get("legal_hold")?;
        Ok(RecordingRow {
            id: r.try_get("id")?,
            state: RecordingState::parse(&state).ok_or(MetaError::Corrupt { column: "recordings.state" })?,
            started_at_ms: r.try_get("started_at_ms")?,
            ended_at_ms: r.try_get("ended_at_ms")?,
            route: r.try_get("route")?,
            sample_rate: u32::try_from(rate).map_err(|_| MetaError::Corrupt { column: "recordings.sample_rate" })?,
            channels: parse_channels(&channels)?,
            basis: match basis.as_str() {
                "consent" => LawfulBasis::Consent { ledger_ref: basis_ref },
                "other" => LawfulBasis::Other { name: basis_ref },
                _ => return Err(MetaError::Corrupt { column: "recordings.basis" }),
            },
            retention_class: r.try_get("retention_class")?,
            expires_at_ms: r.try_get("expires_at_ms")?,
            legal_hold: hold != 0,
            tags,
            sealed_parties: r.try_get("sealed_parties")?,
        })
    }

    pub async fn tags(&self, id: &str) -> Result<Vec<String>, MetaError> {
        let rows = sqlx::query("SELECT tag FROM recording_tags WHERE recording_id = $1 ORDER BY tag")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("tag")?)).collect()
    }

    pub async fn get(&self, id: &str) -> Result<Option<RecordingRow>, MetaError> {
        let q = format!("SELECT {RECORDING_COLUMNS} FROM recordings WHERE id = $1");
        let Some(r) = sqlx::query(&q).bind(id).fetch_optional(&self.pool).await? else {
            return Ok(None);
        };
        let tags = self.tags(id).await?;
        Ok(Some(self.row(&r, tags)?))
    }

    pub async fn list(&self, f: &ListFilter) -> Result<Vec<RecordingRow>, MetaError> {
        // Every filter is always bound; a NULL parameter disables its clause. Portable SQL.
        let q = format!(
            "SELECT {RECORDING_COLUMNS} FROM recordings \
             WHERE ($1 IS NULL OR started_at_ms >= $1) AND ($2 IS NULL OR started_at_ms < $2) \
             AND ($3 IS NULL OR retention_class = $3) \
             AND ($4 IS NULL OR id IN (SELECT recording_id FROM recording_tags WHERE tag = $4)) \
             ORDER BY started_at_ms, id"
        );
        let rows =
            sqlx::query(&q).bind(f.since_ms).bind(f.until_ms).bind(&f.class).bind(&f.tag).fetch_all(&self.pool).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let id: String = r.try_get("id")?;
            let tags = self.tags(&id).await?;
            out.push(self.row(r, tags)?);
        }
        Ok(out)
    }

    pub async fn ids_in_state(&self, state: RecordingState) -> Result<Vec<String>, MetaError> {
        let rows = sqlx::query("SELECT id FROM recordings WHERE state = $1 ORDER BY id")
            .bind(state.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    pub async fn ids_by_subject(&self, subject_hash: &str) -> Result<Vec<String>, MetaError> {
        let rows = sqlx::query("SELECT id FROM recordings WHERE subject_hash = $1 ORDER BY id")
            .bind(subject_hash)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
    }

    /// Closed recordings whose expiry has passed, held ones included (the caller reports them).
    pub async fn expired(&self, now_ms: i64) -> Result<Vec<(String, bool)>, MetaError> {
        let rows = sqlx::query(
            "SELECT id, legal_hold FROM recordings WHERE expires_at_ms <= $1 AND state <> $2 \
             ORDER BY expires_at_ms, id",
        )
        .bind(now_ms)
        .bind(RecordingState::Recording.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let hold: i64 = r.try_get("legal_hold")?;
                Ok((r.try_get("id")?, hold != 0))
            })
            .collect()
    }

    pub async fn key(&self, id: &str) -> Result<Option<WrappedKey>, MetaError> {
        let r = sqlx::query("SELECT kek_id, wrapped FROM recording_keys WHERE recording_id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.map(|r| Ok(WrappedKey { kek_id: r.try_get("kek_id")?, bytes: r.try_get("wrapped")? })).transpose()
    }

    /// Recording ids whose data key is wrapped by a KEK other than `kek_id`.
    pub async fn keys_not_under(&self, kek_id: &str) -> Result<Vec<String>, MetaError> {
        let rows = sqlx::query("SELECT recording_id FROM recording_keys WHERE kek_id <> $1 ORDER BY recording_id")
            .bind(kek_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| Ok(r.try_get("recording_id")?)).collect()
    }

    /// Replaces a wrapped key only if it is still the one that was read (no lost update).
    pub async fn rewrap(&self, id: &str, old: &WrappedKey, new: &WrappedKey) -> Result<bool, MetaError> {
        let r = sqlx::query(
            "UPDATE recording_keys SET kek_id = $1, wrapped = $2 \
             WHERE recording_id = $3 AND kek_id = $4 AND wrapped = $5",
        )
        .bind(&new.kek_id)
        .bind(&new.bytes)
        .bind(id)
        .bind(&old.kek_id)
        .bind(&old.bytes)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn set_hold(&self, id: &str, hold: bool) -> Result<bool, MetaError> {
        let r = sqlx::query("UPDATE recordings SET legal_hold = $1 WHERE id = $2")
            .bind(i64::from(hold))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn set_class(&self, id: &str, class: &str, expires_at_ms: i64) -> Result<bool, MetaError> {
        let r = sqlx::query("UPDATE recordings SET retention_class = $1, expires_at_ms = $2 WHERE id = $3")
            .bind(class)
            .bind(expires_at_ms)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    pub async fn add_tag(&self, id: &str, tag: &str) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO recording_tags (recording_id, tag) SELECT $1, $2 WHERE NOT EXISTS \
             (SELECT 1 FROM recording_tags WHERE recording_id = $1 AND tag = $2)",
        )
        .bind(id)
        .bind(tag)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn remove_tag(&self, id: &str, tag: &str) -> Result<(), MetaError> {
        sqlx::query("DELETE FROM recording_tags WHERE recording_id = $1 AND tag = $2")
            .bind(id)
            .bind(tag)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Step one of erasure: the wrapped key goes first, so the recording is unreadable from the
    /// moment this returns even if deleting blobs fails later.
    pub async fn shred_key(&self, id: &str) -> Result<(), MetaError> {
        sqlx::query("DELETE FROM recording_keys WHERE recording_id = $1").bind(id).execute(&self.pool).await?;
        self.checkpoint().await
    }

    /// Final step of erasure: every row about the recording goes, a tombstone and an audit record
    /// are written, in one transaction.
    pub async fn erase(&self, id: &str, tomb: &Tombstone, audit: &AuditEntry) -> Result<(), MetaError> {
        let mut tx = self.pool.begin().await?;
        for table in ["recording_keys", "recording_tags", "redaction_spans"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE recording_id = $1")).bind(id).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM recordings WHERE id = $1").bind(id).execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO tombstones (recording_id, erased_at_ms, reason, retention_class) SELECT $1, $2, $3, $4 \
             WHERE NOT EXISTS (SELECT 1 FROM tombstones WHERE recording_id = $1)",
        )
        .bind(&tomb.recording_id)
        .bind(tomb.erased_at_ms)
        .bind(&tomb.reason)
        .bind(&tomb.retention_class)
        .execute(&mut *tx)
        .await?;
        insert_audit(&mut tx, audit).await?;
        tx.commit().await?;
        self.checkpoint().await
    }

    /// Copies the WAL into the database (where `secure_delete` has zeroed freed cells) and
    /// truncates the WAL, so deleted keys do not linger in either file.
    async fn checkpoint(&self) -> Result<(), MetaError> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn tombstone(&self, id: &str) -> Result<Option<Tombstone>, MetaError> {
        let r = sqlx::query(
            "SELECT recording_id, erased_at_ms, reason, retention_class FROM tombstones WHERE recording_id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        r.map(|r| {
            Ok(Tombstone {
                recording_id: r.try_get("recording_id")?,
                erased_at_ms: r.try_get("erased_at_ms")?,
                reason: r.try_get("reason")?,
                retention_class: r.try_get("retention_class")?,
            })
        })
        .transpose()
    }

    pub async fn audit(&self, entry: &AuditEntry) -> Result<(), MetaError> {
        let mut tx = self.pool.begin().await?;
        insert_audit(&mut tx, entry).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn audit_log(&self, recording_id: Option<&str>) -> Result<Vec<AuditEntry>, MetaError> {
        let rows = sqlx::query(
            "SELECT at_ms, actor, action, recording_id, detail FROM audit_log \
             WHERE ($1 IS NULL OR recording_id = $1) ORDER BY id",
        )
        .bind(recording_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at_ms: r.try_get("at_ms")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    recording_id: r.try_get("recording_id")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Appends one consent-ledger row (the table refuses updates and deletes).
    pub async fn append_consent(&self, r: &ConsentRow) -> Result<(), MetaError> {
        sqlx::query(
            "INSERT INTO consent_ledger (id, call_id, subject_hash, route, basis, method, decision, prompt_id, \
             prompt_language, prompt_sha256, decided_at_ms, recording_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&r.id)
        .bind(&r.call_id)
        .bind(&r.subject_hash)
        .bind(&r.route)
        .bind(&r.basis)
        .bind(&r.method)
        .bind(&r.decision)
        .bind(&r.prompt_id)
        .bind(&r.prompt_language)
        .bind(&r.prompt_sha256)
        .bind(r.decided_at_ms)
        .bind(&r.recording_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Ledger rows of one call and/or one subject hash (`None` = any), oldest first. A row's
    /// `recording_id` falls back to the recording whose basis references it (a grant is written
    /// before its recording exists, so the link is found from the recording's side).
    pub async fn consent_rows(
        &self,
        call_id: Option<&str>,
        subject_hash: Option<&str>,
    ) -> Result<Vec<ConsentRow>, MetaError> {
        let rows = sqlx::query(
            "SELECT l.id, l.call_id, l.subject_hash, l.route, l.basis, l.method, l.decision, l.prompt_id, \
             l.prompt_language, l.prompt_sha256, l.decided_at_ms, \
             COALESCE(l.recording_id, (SELECT r.id FROM recordings r WHERE r.basis = 'consent' \
             AND r.basis_ref = l.id)) AS recording_id \
             FROM consent_ledger l WHERE ($1 IS NULL OR l.call_id = $1) AND ($2 IS NULL OR l.subject_hash = $2) \
             ORDER BY l.decided_at_ms, l.rowid",
        )
        .bind(call_id)
        .bind(subject_hash)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ConsentRow {
                    id: r.try_get("id")?,
                    call_id: r.try_get("call_id")?,
                    subject_hash: r.try_get("subject_hash")?,
                    route: r.try_get("route")?,
                    basis: r.try_get("basis")?,
                    method: r.try_get("method")?,
                    decision: r.try_get("decision")?,
                    prompt_id: r.try_get("prompt_id")?,
                    prompt_language: r.try_get("prompt_language")?,
                    prompt_sha256: r.try_get("prompt_sha256")?,
                    decided_at_ms: r.try_get("decided_at_ms")?,
                    recording_id: r.try_get("recording_id")?,
                })
            })
            .collect()
    }

    /// Runs one SQL statement as given; tests use it to prove the database itself refuses
    /// changes to the ledger.
    #[cfg(test)]
    pub(crate) async fn execute_raw(&self, sql: &str) -> Result<u64, MetaError> {
        Ok(sqlx::query(sql).execute(&self.pool).await?.rows_affected())
    }

    pub async fn close(self) {
        self.pool.close().await;
    }
}

async fn insert_audit(tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>, a: &AuditEntry) -> Result<(), MetaError> {
    sqlx::query("INSERT INTO audit_log (at_ms, actor, action, recording_id, detail) VALUES ($1, $2, $3, $4, $5)")
        .bind(a.at_ms)
        .bind(&a.actor)
        .bind(&a.action)
        .bind(&a.recording_id)
        .bind(&a.detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
