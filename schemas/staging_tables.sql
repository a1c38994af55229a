-- Typed staging tables (CONTRACT.md section 6). Ingest creates exactly these
-- and fills them with the rows that passed validation; test factories use the
-- same DDL so metric tests run against the real column types.
-- Timestamps are clinic local time (offsets converted on ingest; edge rule 12).

CREATE TABLE staging.episodes (
    episode_id    VARCHAR NOT NULL,
    client_id     VARCHAR NOT NULL,
    clinic_id     VARCHAR NOT NULL,
    clinician_id  VARCHAR NOT NULL,
    referral_date DATE,
    start_date    DATE NOT NULL,
    end_date      DATE,
    end_reason    VARCHAR,   -- completed | mutual_agreement | dropout | declined | transferred | moved_away | other
    program       VARCHAR,
    age_band      VARCHAR,   -- <18 | 18-24 | 25-34 | 35-44 | 45-54 | 55-64 | 65+
    gender        VARCHAR,
    source_file   VARCHAR NOT NULL,
    source_row    BIGINT NOT NULL
);

CREATE TABLE staging.sessions (
    session_id         VARCHAR NOT NULL,
    episode_id         VARCHAR NOT NULL,
    client_id          VARCHAR NOT NULL,
    clinician_id       VARCHAR NOT NULL,
    scheduled_at       TIMESTAMP NOT NULL,
    status             VARCHAR NOT NULL, -- attended | no_show | late_cancelled | client_cancelled | clinic_cancelled | booked
    session_type       VARCHAR NOT NULL, -- assessment | treatment | review | group | discharge (default treatment)
    modality           VARCHAR,          -- in_person | video | phone
    duration_minutes   INTEGER,
    practice_completed VARCHAR,          -- yes | partial | no | not_assigned
    source_file        VARCHAR NOT NULL,
    source_row         BIGINT NOT NULL
);

CREATE TABLE staging.assessments (
    assessment_id   VARCHAR NOT NULL,
    episode_id      VARCHAR NOT NULL,
    client_id       VARCHAR NOT NULL,
    session_id      VARCHAR,
    instrument      VARCHAR NOT NULL,  -- the registry's canonical code (PHQ-9, ...)
    administered_at TIMESTAMP NOT NULL,
    total_score     DOUBLE,            -- as supplied by the export
    total           DOUBLE NOT NULL,   -- as scored (items with proration, else total_score)
    items_answered  INTEGER,           -- staged item rows; NULL for totals-only
    prorated        BOOLEAN NOT NULL,
    source_file     VARCHAR NOT NULL,
    source_row      BIGINT NOT NULL
);

CREATE TABLE staging.assessment_items (
    assessment_id VARCHAR NOT NULL,
    item          INTEGER NOT NULL,
    score         DOUBLE NOT NULL,     -- as ticked
    keyed_score   DOUBLE NOT NULL,     -- after reverse keying (what the total sums)
    source_file   VARCHAR NOT NULL,
    source_row    BIGINT NOT NULL
);

CREATE TABLE staging.goals (
    episode_id  VARCHAR NOT NULL,
    goal_number INTEGER NOT NULL,
    set_at      DATE NOT NULL,
    horizon     VARCHAR NOT NULL,      -- short_term | long_term
    source_file VARCHAR NOT NULL,
    source_row  BIGINT NOT NULL
);

-- Risk-item responses of every administration that has one, including
-- administrations quarantined as too_many_missing_items (edge rule 6).
CREATE TABLE staging.risk_responses (
    assessment_id   VARCHAR NOT NULL,
    episode_id      VARCHAR NOT NULL,
    client_id       VARCHAR NOT NULL,
    instrument      VARCHAR NOT NULL,
    administered_at TIMESTAMP NOT NULL,
    item            INTEGER NOT NULL,
    score           DOUBLE NOT NULL,
    staged          BOOLEAN NOT NULL   -- false: the administration itself was quarantined
);

-- The registry used for this staging (Registry.frame()): metric SQL joins its thresholds.
CREATE TABLE staging.instruments (
    code            VARCHAR NOT NULL,
    construct       VARCHAR NOT NULL,
    items           INTEGER NOT NULL,
    item_min        DOUBLE NOT NULL,
    item_max        DOUBLE NOT NULL,
    scoring         VARCHAR NOT NULL,
    direction       VARCHAR NOT NULL,
    cutoff          DOUBLE,
    reliable_change DOUBLE,
    reliability     DOUBLE,
    normative_sd    DOUBLE,
    reverse_items   VARCHAR,
    max_missing     INTEGER,
    risk_item       INTEGER,
    risk_threshold  DOUBLE,
    higher_is_worse BOOLEAN NOT NULL,
    total_min       DOUBLE NOT NULL,
    total_max       DOUBLE NOT NULL,
    rc_threshold    DOUBLE,            -- smallest reliable change in points
    rc_strict       BOOLEAN NOT NULL,  -- true: change must exceed rc_threshold (J&T 1.96 x S_diff)
    s_diff          DOUBLE
);

-- One row: the run that wrote this staging, and its data cut date.
CREATE TABLE staging.run_info (
    run_id        VARCHAR NOT NULL,
    as_of         DATE NOT NULL,       -- OUTCOMES_AS_OF or derived from staged rows
    as_of_source  VARCHAR NOT NULL,    -- 'config' or 'data'
    exports_dir   VARCHAR NOT NULL,
    settings_json VARCHAR NOT NULL     -- Settings.public_dict() as JSON
);

CREATE TABLE quarantine.rejected_rows (
    table_name  VARCHAR NOT NULL,
    source_file VARCHAR NOT NULL,
    source_row  BIGINT NOT NULL,
    record      VARCHAR NOT NULL,      -- the raw row as JSON text
    rule        VARCHAR NOT NULL,
    detail      VARCHAR NOT NULL,
    run_id      VARCHAR NOT NULL
);
