-- The hospital's human side: patient states (waiting / replayed / discarded, kept for the record),
-- edits, replay claims, the audit log and the notice positions. Recorded in the hospital's own
-- migrations table (`_keel_hospital_migrations`), not the queue's.
--
-- A message that fails again after it was replayed is a new patient. Admissions are serialized
-- (a table lock), which keeps them idempotent and makes patient ids grow in commit order, so a
-- notice cursor on the id never skips a patient.
ALTER TABLE hospital_patients DROP CONSTRAINT hospital_patients_grp_message_id_key;
-- Message ids become text, as on the other engines, so that one set of statements serves all.
ALTER TABLE hospital_attempts ALTER COLUMN message_id TYPE TEXT;
ALTER TABLE hospital_patients ALTER COLUMN message_id TYPE TEXT;
ALTER TABLE hospital_patients
    ADD COLUMN state TEXT NOT NULL DEFAULT 'waiting'
        CHECK (state IN ('waiting', 'replayed', 'discarded')),
    -- The newest attempt's error, and its normalised first line (what "group by cause" groups
    -- by). NULL cause: not yet computed (rows from before this migration; filled on open).
    ADD COLUMN last_error TEXT,
    ADD COLUMN cause TEXT,
    -- Who replayed or discarded it, when, and why (the discard reason).
    ADD COLUMN settled_by TEXT,
    ADD COLUMN settled_at BIGINT,
    ADD COLUMN settled_note TEXT,
    -- The last edit, and the body as admitted (kept from the first edit on).
    ADD COLUMN edited_by TEXT,
    ADD COLUMN edited_at BIGINT,
    ADD COLUMN original_body BYTEA,
    -- A replay in progress: whoever holds the token may mark the patient replayed; after
    -- claim_until another replay may take it over (the first one died).
    ADD COLUMN claim_token TEXT,
    ADD COLUMN claimed_by TEXT,
    ADD COLUMN claim_until BIGINT;
UPDATE hospital_patients p SET last_error = (
    SELECT a.error FROM hospital_attempts a WHERE a.grp = p.grp AND a.message_id = p.message_id
    ORDER BY a.attempt DESC LIMIT 1);
CREATE INDEX hospital_patients_message ON hospital_patients (grp, message_id);
CREATE INDEX hospital_patients_state ON hospital_patients (state, id);
CREATE INDEX hospital_patients_cause ON hospital_patients (grp, reason, cause);
CREATE INDEX hospital_patients_admitted ON hospital_patients (admitted_at);

-- A patient's attempts, moved out of hospital_attempts at admission: those then only hold the
-- attempts of messages still in their queues, and a replayed message's new attempts never mix
-- with the old patient's.
CREATE TABLE hospital_patient_attempts (
    patient_id BIGINT NOT NULL,
    attempt    BIGINT NOT NULL,
    error      TEXT   NOT NULL,
    at         BIGINT NOT NULL,
    PRIMARY KEY (patient_id, attempt)
);
INSERT INTO hospital_patient_attempts (patient_id, attempt, error, at)
SELECT p.id, a.attempt, a.error, a.at
FROM hospital_patients p JOIN hospital_attempts a ON a.grp = p.grp AND a.message_id = p.message_id;
DELETE FROM hospital_attempts a USING hospital_patients p
WHERE p.grp = a.grp AND p.message_id = a.message_id;

-- The audit log: one row per operator action, written in the transaction of its effect.
-- Append-only: the trigger below refuses to change or delete a row.
CREATE TABLE hospital_audit (
    id          BIGSERIAL PRIMARY KEY,
    at          BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    patient_ids TEXT   NOT NULL, -- a JSON array
    detail      TEXT   NOT NULL  -- a JSON object
);
CREATE FUNCTION hospital_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the hospital audit log is append-only';
END
$$;
CREATE TRIGGER hospital_audit_append_only BEFORE UPDATE OR DELETE ON hospital_audit
    FOR EACH ROW EXECUTE FUNCTION hospital_audit_append_only();
-- Which entries concern a patient (its history on the patient page).
CREATE TABLE hospital_audit_patients (
    patient_id BIGINT NOT NULL,
    audit_id   BIGINT NOT NULL,
    PRIMARY KEY (patient_id, audit_id)
);

-- Notice channels (admissions, digest): how far notices were sent, and which process holds the
-- channel now (a lease), so that each admission is notified by one process of many.
CREATE TABLE hospital_notices (
    channel     TEXT   PRIMARY KEY,
    pos         BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    lease_token TEXT,
    lease_until BIGINT
);
