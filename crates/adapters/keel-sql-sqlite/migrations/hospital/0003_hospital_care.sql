-- The hospital's human side: patient states (waiting / replayed / discarded, kept for the record),
-- edits, replay claims, the audit log and the notice positions. Recorded in the hospital's own
-- migrations table (`_keel_hospital_migrations`), not the queue's.
--
-- Patients are rebuilt without UNIQUE (grp, message_id): a message that fails again after it was
-- replayed is a new patient. Admissions are serialized (BEGIN IMMEDIATE), which keeps them
-- idempotent and makes patient ids grow in commit order, so a notice cursor on the id never skips
-- a patient.
CREATE TABLE hospital_patients_v3 (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    grp           TEXT    NOT NULL,
    message_id    TEXT    NOT NULL,
    topic         TEXT    NOT NULL,
    msg_key       TEXT,
    headers       TEXT    NOT NULL,
    -- What a replay sends: the body as admitted, or as last edited.
    body          BLOB    NOT NULL,
    published_at  INTEGER NOT NULL,
    admitted_at   INTEGER NOT NULL,
    reason        TEXT    NOT NULL,
    trace_id      TEXT,
    state         TEXT    NOT NULL DEFAULT 'waiting'
                  CHECK (state IN ('waiting', 'replayed', 'discarded')),
    -- The newest attempt's error, and its normalised first line (what "group by cause" groups
    -- by). NULL cause: not yet computed (rows from before this migration; filled on open).
    last_error    TEXT,
    cause         TEXT,
    -- Who replayed or discarded it, when, and why (the discard reason).
    settled_by    TEXT,
    settled_at    INTEGER,
    settled_note  TEXT,
    -- The last edit, and the body as admitted (kept from the first edit on).
    edited_by     TEXT,
    edited_at     INTEGER,
    original_body BLOB,
    -- A replay in progress: whoever holds the token may mark the patient replayed; after
    -- claim_until another replay may take it over (the first one died).
    claim_token   TEXT,
    claimed_by    TEXT,
    claim_until   INTEGER
);
INSERT INTO hospital_patients_v3 (id, grp, message_id, topic, msg_key, headers, body, published_at,
                                  admitted_at, reason, trace_id, last_error)
SELECT p.id, p.grp, p.message_id, p.topic, p.msg_key, p.headers, p.body, p.published_at,
       p.admitted_at, p.reason, p.trace_id,
       (SELECT a.error FROM hospital_attempts a WHERE a.grp = p.grp AND a.message_id = p.message_id
        ORDER BY a.attempt DESC LIMIT 1)
FROM hospital_patients p;

-- A patient's attempts, moved out of hospital_attempts at admission: those then only hold the
-- attempts of messages still in their queues, and a replayed message's new attempts never mix
-- with the old patient's.
CREATE TABLE hospital_patient_attempts (
    patient_id INTEGER NOT NULL,
    attempt    INTEGER NOT NULL,
    error      TEXT    NOT NULL,
    at         INTEGER NOT NULL,
    PRIMARY KEY (patient_id, attempt)
);
INSERT INTO hospital_patient_attempts (patient_id, attempt, error, at)
SELECT p.id, a.attempt, a.error, a.at
FROM hospital_patients p JOIN hospital_attempts a ON a.grp = p.grp AND a.message_id = p.message_id;
DELETE FROM hospital_attempts WHERE EXISTS (
    SELECT 1 FROM hospital_patients p
    WHERE p.grp = hospital_attempts.grp AND p.message_id = hospital_attempts.message_id);

DROP TABLE hospital_patients;
ALTER TABLE hospital_patients_v3 RENAME TO hospital_patients;
CREATE INDEX hospital_patients_message ON hospital_patients (grp, message_id);
CREATE INDEX hospital_patients_state ON hospital_patients (state, id);
CREATE INDEX hospital_patients_cause ON hospital_patients (grp, reason, cause);
CREATE INDEX hospital_patients_admitted ON hospital_patients (admitted_at);

-- The audit log: one row per operator action, written in the transaction of its effect.
-- Append-only: the triggers below refuse to change or delete a row.
CREATE TABLE hospital_audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    action      TEXT    NOT NULL,
    patient_ids TEXT    NOT NULL, -- a JSON array
    detail      TEXT    NOT NULL  -- a JSON object
);
CREATE TRIGGER hospital_audit_no_update BEFORE UPDATE ON hospital_audit
BEGIN SELECT RAISE(ABORT, 'the hospital audit log is append-only'); END;
CREATE TRIGGER hospital_audit_no_delete BEFORE DELETE ON hospital_audit
BEGIN SELECT RAISE(ABORT, 'the hospital audit log is append-only'); END;
-- Which entries concern a patient (its history on the patient page).
CREATE TABLE hospital_audit_patients (
    patient_id INTEGER NOT NULL,
    audit_id   INTEGER NOT NULL,
    PRIMARY KEY (patient_id, audit_id)
);

-- Notice channels (admissions, digest): how far notices were sent, and which process holds the
-- channel now (a lease), so that each admission is notified by one process of many.
CREATE TABLE hospital_notices (
    channel     TEXT    PRIMARY KEY,
    pos         INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    lease_token TEXT,
    lease_until INTEGER
);
