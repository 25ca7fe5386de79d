-- The error hospital on MariaDB / MySQL, whole (the embedded SQL queues' 0002 and 0003 in one):
-- there is no queue on this engine, only the hospital, which may share keel's database. Recorded
-- in the hospital's own migrations table (`_keel_hospital_migrations`), apart from the stores'.
-- Times are microseconds since the epoch (BIGINT), as on the other engines, so that one set of
-- statements serves all. Text is utf8mb4 with binary collation (exact comparisons).

-- Attempts of messages still in their queues, recorded as they fail, keyed by group and message
-- id, so an admission carries every attempt's error whichever worker process made it.
CREATE TABLE hospital_attempts (
    grp        VARCHAR(200) NOT NULL,
    message_id CHAR(36) CHARACTER SET ascii NOT NULL,
    attempt    BIGINT       NOT NULL,
    error      MEDIUMTEXT   NOT NULL,
    at         BIGINT       NOT NULL,
    PRIMARY KEY (grp, message_id, attempt)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per admission. A message that fails again after it was replayed is a new patient.
-- Rows are never evicted to make room; replayed and discarded ones stay for the record.
CREATE TABLE hospital_patients (
    id            BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    grp           VARCHAR(200) NOT NULL,
    message_id    CHAR(36) CHARACTER SET ascii NOT NULL,
    topic         VARCHAR(200) NOT NULL,
    msg_key       TEXT,
    headers       MEDIUMTEXT   NOT NULL,
    -- What a replay sends: the body as admitted, or as last edited.
    body          LONGBLOB     NOT NULL,
    published_at  BIGINT       NOT NULL,
    admitted_at   BIGINT       NOT NULL,
    reason        VARCHAR(16)  NOT NULL,
    trace_id      VARCHAR(32),
    state         VARCHAR(16)  NOT NULL DEFAULT 'waiting',
    -- The newest attempt's error, and its normalised first line (what "group by cause" groups by).
    last_error    MEDIUMTEXT,
    cause         VARCHAR(200),
    -- Who replayed or discarded it, when, and why (the discard reason).
    settled_by    VARCHAR(200),
    settled_at    BIGINT,
    settled_note  TEXT,
    -- The last edit, and the body as admitted (kept from the first edit on).
    edited_by     VARCHAR(200),
    edited_at     BIGINT,
    original_body LONGBLOB,
    -- A replay in progress: whoever holds the token may mark the patient replayed; after
    -- claim_until another replay may take it over (the first one died).
    claim_token   CHAR(36) CHARACTER SET ascii,
    claimed_by    VARCHAR(200),
    claim_until   BIGINT,
    CONSTRAINT hospital_patients_state_check CHECK (state IN ('waiting', 'replayed', 'discarded')),
    INDEX hospital_patients_message (grp, message_id),
    INDEX hospital_patients_state (state, id),
    INDEX hospital_patients_cause (grp, reason, cause),
    INDEX hospital_patients_admitted (admitted_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- A patient's attempts, moved out of hospital_attempts at admission.
CREATE TABLE hospital_patient_attempts (
    patient_id BIGINT     NOT NULL,
    attempt    BIGINT     NOT NULL,
    error      MEDIUMTEXT NOT NULL,
    at         BIGINT     NOT NULL,
    PRIMARY KEY (patient_id, attempt)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row, locked by each admission (SELECT … FOR UPDATE): admissions are serialized, which
-- keeps them idempotent and the capacity check exact, and makes patient ids grow in commit
-- order, so a notice cursor on the id never skips a patient.
CREATE TABLE hospital_admission_lock (
    id INT NOT NULL PRIMARY KEY
) ENGINE = InnoDB;
INSERT INTO hospital_admission_lock (id) VALUES (1);

-- The audit log: one row per operator action, written in the transaction of its effect.
-- Append-only: the triggers below refuse to change or delete a row.
CREATE TABLE hospital_audit (
    id          BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    at          BIGINT       NOT NULL,
    actor       VARCHAR(200) NOT NULL,
    action      VARCHAR(32)  NOT NULL,
    patient_ids MEDIUMTEXT   NOT NULL, -- a JSON array
    detail      LONGTEXT     NOT NULL  -- a JSON object
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TRIGGER hospital_audit_no_update BEFORE UPDATE ON hospital_audit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the hospital audit log is append-only';
CREATE TRIGGER hospital_audit_no_delete BEFORE DELETE ON hospital_audit FOR EACH ROW
    SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the hospital audit log is append-only';
-- Which entries concern a patient (its history on the patient page).
CREATE TABLE hospital_audit_patients (
    patient_id BIGINT NOT NULL,
    audit_id   BIGINT NOT NULL,
    PRIMARY KEY (patient_id, audit_id)
) ENGINE = InnoDB;

-- Notice channels (admissions, digest): how far notices were sent, and which process holds the
-- channel now (a lease), so that each admission is notified by one process of many.
CREATE TABLE hospital_notices (
    channel     VARCHAR(64) NOT NULL PRIMARY KEY,
    pos         BIGINT      NOT NULL,
    updated_at  BIGINT      NOT NULL,
    lease_token CHAR(36) CHARACTER SET ascii,
    lease_until BIGINT
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
