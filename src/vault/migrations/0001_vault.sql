-- callveil vault metadata, version 1. Portable SQL (SQLite now, PostgreSQL later) except where
-- noted: BLOB becomes BYTEA, and audit_log.id becomes BIGINT GENERATED ALWAYS AS IDENTITY.
-- Personal data is stored only sealed with the recording's data key (sealed_parties) or as a
-- peppered keyed hash (subject_hash); tombstones and the audit log hold none.

CREATE TABLE recordings (
    id              TEXT PRIMARY KEY,
    state           TEXT NOT NULL,            -- recording | complete | truncated | revoked
    started_at_ms   BIGINT NOT NULL,          -- unix epoch milliseconds
    ended_at_ms     BIGINT,
    route           TEXT NOT NULL,
    sample_rate     INTEGER NOT NULL,
    channels        TEXT NOT NULL,            -- comma-separated parties: caller,agent
    subject_hash    TEXT,                     -- HMAC-SHA-256(pepper, normalised caller number)
    basis           TEXT NOT NULL,            -- consent | other
    basis_ref       TEXT NOT NULL,            -- consent ledger reference, or the basis name
    retention_class TEXT NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    legal_hold      INTEGER NOT NULL DEFAULT 0,
    sealed_parties  BLOB NOT NULL             -- call id, caller, callee, sealed with the data key
);
CREATE INDEX recordings_subject ON recordings (subject_hash);
CREATE INDEX recordings_expiry ON recordings (expires_at_ms);
CREATE INDEX recordings_started ON recordings (started_at_ms);

-- Wrapped data keys live apart from the rows they protect: key rotation rewrites only this
-- table, and erasure deletes the row (crypto-shredding).
CREATE TABLE recording_keys (
    recording_id TEXT PRIMARY KEY REFERENCES recordings (id) ON DELETE CASCADE,
    kek_id       TEXT NOT NULL,
    wrapped      BLOB NOT NULL
);

CREATE TABLE recording_tags (
    recording_id TEXT NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    tag          TEXT NOT NULL,
    PRIMARY KEY (recording_id, tag)
);

CREATE TABLE redaction_spans (
    recording_id TEXT NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    channel      INTEGER NOT NULL,
    start_ms     BIGINT NOT NULL,
    end_ms       BIGINT NOT NULL,
    kind         TEXT NOT NULL
);
CREATE INDEX redaction_spans_recording ON redaction_spans (recording_id);

CREATE TABLE tombstones (
    recording_id    TEXT PRIMARY KEY,
    erased_at_ms    BIGINT NOT NULL,
    reason          TEXT NOT NULL,            -- erasure_request | subject_request | retention | revoked
    retention_class TEXT NOT NULL
);

CREATE TABLE audit_log (
    id           INTEGER PRIMARY KEY,
    at_ms        BIGINT NOT NULL,
    actor        TEXT NOT NULL,
    action       TEXT NOT NULL,
    recording_id TEXT,
    detail       TEXT NOT NULL
);
