-- marts.episode_attendance: one row per staged episode (METRICS.md "Attendance";
-- CONTRACT.md edge rules 9, 10 and 13).
--
-- Parameters (Settings, clinic config):
--   $disengaged_after_days       default 60
--   $early_dropout_max_attended  default 3
--   $finished_min_sessions       2 (core_marts.FINISHED_MIN_SESSIONS)
-- As-of is the data cut date in staging.run_info, never the clock.

WITH run AS (
    SELECT as_of FROM staging.run_info
),

-- Edge rule 10: booked (future, not yet held) sessions are left out of every
-- count and rate; they only matter for "scheduled after as-of" below.
held AS (
    SELECT * FROM staging.sessions WHERE status <> 'booked'
),

counts AS (
    SELECT
        episode_id,
        count(*)                                                 AS scheduled,
        count(*) FILTER (WHERE status = 'attended')              AS attended,
        count(*) FILTER (WHERE status = 'no_show')               AS no_show,
        count(*) FILTER (WHERE status = 'late_cancelled')        AS late_cancelled,
        count(*) FILTER (WHERE status = 'client_cancelled')      AS client_cancelled,
        count(*) FILTER (WHERE status = 'clinic_cancelled')      AS clinic_cancelled,
        -- NHS Talking Therapies "finished treatment" needs $finished_min_sessions of these
        count(*) FILTER (WHERE status = 'attended' AND session_type <> 'assessment')
                                                                 AS attended_non_assessment
    FROM held
    GROUP BY episode_id
),

-- Gaps: whole days between the dates of consecutive attended sessions.
attended AS (
    SELECT
        episode_id,
        scheduled_at,
        date_diff(
            'day',
            lag(CAST(scheduled_at AS DATE)) OVER (
                PARTITION BY episode_id ORDER BY scheduled_at, session_id),
            CAST(scheduled_at AS DATE)
        ) AS gap_days
    FROM staging.sessions
    WHERE status = 'attended'
),

attended_summary AS (
    SELECT
        a.episode_id,
        min(a.scheduled_at)                  AS first_attended_at,
        max(a.scheduled_at)                  AS last_attended_at,
        -- for the median: DuckDB's quantile_cont per episode ran 6-10x slower
        -- under a memory cap (issue 8, decision 008); a sorted list of a few gaps does not
        list_sort(list(a.gap_days) FILTER (WHERE a.gap_days IS NOT NULL)) AS sorted_gaps,
        CAST(max(a.gap_days) AS INTEGER)     AS max_gap_days,
        -- edge rule 9: only sessions on or before as-of count for "last attended"
        max(CAST(a.scheduled_at AS DATE)) FILTER (
            WHERE CAST(a.scheduled_at AS DATE) <= run.as_of) AS last_attended_date
    FROM attended AS a, run
    GROUP BY a.episode_id
),

-- "No non-cancelled session scheduled after as-of": a booked, attended or
-- no_show session dated after the as-of date keeps an open episode open;
-- cancelled ones (late, client, clinic) do not.
upcoming AS (
    SELECT DISTINCT s.episode_id
    FROM staging.sessions AS s, run
    WHERE s.status NOT IN ('late_cancelled', 'client_cancelled', 'clinic_cancelled')
      AND CAST(s.scheduled_at AS DATE) > run.as_of
),

base AS (
    SELECT
        e.episode_id,
        e.client_id,
        e.clinic_id,
        e.clinician_id,
        e.end_date,
        e.end_reason,
        CAST(coalesce(c.scheduled, 0) AS INTEGER)               AS scheduled,
        CAST(coalesce(c.attended, 0) AS INTEGER)                AS attended,
        CAST(coalesce(c.no_show, 0) AS INTEGER)                 AS no_show,
        CAST(coalesce(c.late_cancelled, 0) AS INTEGER)          AS late_cancelled,
        CAST(coalesce(c.client_cancelled, 0) AS INTEGER)        AS client_cancelled,
        CAST(coalesce(c.clinic_cancelled, 0) AS INTEGER)        AS clinic_cancelled,
        CAST(coalesce(c.attended_non_assessment, 0) AS INTEGER) AS attended_non_assessment,
        a.first_attended_at,
        a.last_attended_at,
        -- median as quantile_cont computes it: an even number of gaps gives the mean
        -- of the middle two (positions (n + 1) // 2 and n // 2 + 1, 1-based)
        CAST((a.sorted_gaps[(len(a.sorted_gaps) + 1) // 2]
              + a.sorted_gaps[len(a.sorted_gaps) // 2 + 1]) / 2 AS DOUBLE) AS median_gap_days,
        a.max_gap_days,
        -- an episode with no attended session (up to as-of) counts from its start
        date_diff('day', coalesce(a.last_attended_date, e.start_date), run.as_of)
                                                                AS days_inactive,
        u.episode_id IS NOT NULL                                AS has_upcoming
    FROM staging.episodes AS e
    CROSS JOIN run
    LEFT JOIN counts AS c USING (episode_id)
    LEFT JOIN attended_summary AS a USING (episode_id)
    LEFT JOIN upcoming AS u USING (episode_id)
),

with_status AS (
    SELECT
        *,
        CASE
            WHEN end_date IS NOT NULL THEN
                CASE
                    WHEN end_reason IN ('completed', 'mutual_agreement') THEN 'completed'
                    WHEN end_reason = 'dropout' THEN 'dropout'
                    WHEN end_reason = 'declined' THEN 'declined'
                    ELSE 'other_end'  -- transferred, moved_away, other
                END
            WHEN days_inactive >= $disengaged_after_days AND NOT has_upcoming THEN 'disengaged'
            ELSE 'open'
        END AS status
    FROM base
)

SELECT
    episode_id,
    client_id,
    clinic_id,
    clinician_id,
    scheduled,
    attended,
    no_show,
    late_cancelled,
    client_cancelled,
    clinic_cancelled,
    -- cancellations made in advance are not missed appointments
    CASE WHEN attended + no_show + late_cancelled > 0
         THEN attended / (attended + no_show + late_cancelled) END AS attendance_rate,
    CASE WHEN attended + no_show + late_cancelled > 0
         THEN no_show / (attended + no_show + late_cancelled) END  AS dna_rate,
    first_attended_at,
    last_attended_at,
    median_gap_days,
    max_gap_days,
    status,
    status IN ('dropout', 'disengaged')                            AS dropout,
    status IN ('dropout', 'disengaged')
        AND attended <= $early_dropout_max_attended                AS early_dropout,
    -- extras
    -- NHS Talking Therapies variant: DNAs over attended + DNA (no late-cancel category)
    CASE WHEN attended + no_show > 0
         THEN no_show / (attended + no_show) END                   AS dna_rate_nhs,
    attended_non_assessment,
    -- NHS Talking Therapies "finished treatment": ended, >= $finished_min_sessions attended
    -- non-assessment sessions (the one definition; marts.clinic_kpis_episodes reads it)
    end_date IS NOT NULL AND attended_non_assessment >= $finished_min_sessions AS finished,
    days_inactive
FROM with_status
ORDER BY episode_id
