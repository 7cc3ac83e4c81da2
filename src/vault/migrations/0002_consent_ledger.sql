-- callveil vault metadata, version 2: the consent ledger. One row per consent decision (grant,
-- decline, no answer, revocation, or a non-consent lawful basis applied), appended and never
-- changed: the triggers below make UPDATE and DELETE fail in the database itself, whatever code
-- runs against it. (PostgreSQL: the same with a trigger function that RAISEs, plus REVOKE
-- UPDATE, DELETE from the service role.)
--
-- No phone number is stored: the caller is the same peppered keyed hash as
-- recordings.subject_hash. Erasure by subject keeps these rows (see Vault::erase_subject): proof
-- of consent, of a refusal or of a withdrawal is itself a record the controller must be able to
-- show (GDPR art. 7(1)), erasure does not reach data needed for legal claims (art. 17(3)(e)),
-- and the row holds only a pseudonymous hash, never the number, audio or text.
-- recording_id has no foreign key on purpose: recordings are erased, their ledger rows are not.

CREATE TABLE consent_ledger (
    id              TEXT PRIMARY KEY,         -- referenced by recordings.basis_ref (basis consent)
    call_id         TEXT NOT NULL,            -- SIP Call-ID
    subject_hash    TEXT,                     -- HMAC-SHA-256(pepper, normalised caller number)
    route           TEXT NOT NULL,
    basis           TEXT NOT NULL,            -- consent, or the configured non-consent basis name
    method          TEXT NOT NULL CHECK (method IN ('ivr', 'dtmf', 'header', 'api', 'not_required')),
    decision        TEXT NOT NULL CHECK (decision IN ('granted', 'declined', 'revoked', 'no_answer')),
    prompt_id       TEXT,                     -- IVR: the prompt played
    prompt_language TEXT,
    prompt_sha256   TEXT,                     -- IVR: hash of the exact prompt file heard
    decided_at_ms   BIGINT NOT NULL,          -- unix epoch milliseconds
    recording_id    TEXT,                     -- the recording this decision applies to, if known
    CHECK ((basis = 'consent') = (method <> 'not_required'))
);
CREATE INDEX consent_ledger_call ON consent_ledger (call_id);
CREATE INDEX consent_ledger_subject ON consent_ledger (subject_hash);

CREATE TRIGGER consent_ledger_no_update BEFORE UPDATE ON consent_ledger
BEGIN
    SELECT RAISE(ABORT, 'consent_ledger is append-only');
END;

CREATE TRIGGER consent_ledger_no_delete BEFORE DELETE ON consent_ledger
BEGIN
    SELECT RAISE(ABORT, 'consent_ledger is append-only');
END;
