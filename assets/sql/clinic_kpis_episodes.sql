-- marts.clinic_kpis_episodes: one row per staged episode with the episode-level
-- facts every service KPI is counted from (docs/metrics_service.md).
--
-- * ended_on / ended_month: when the episode left treatment, the month its
--   dropout/completion counts in. end_date when set; a disengaged episode
--   (no end_date) ended on its last attended session (start_date if none).
-- * finished: NHS Talking Therapies "finished a course of treatment": ended
--   (end_date set) with at least 2 attended sessions whose session_type is not
--   'assessment'; defined once, in marts.episode_attendance, and read from it.
-- * The NHS-style paired outcome uses $depression_instrument and
--   $anxiety_instrument together. An occasion is a calendar day (clinic time)
--   on which both were administered (the first administration of each that
--   day); the episode is pair_paired when its first and last occasions differ.
--   Caseness, reliable improvement and deterioration read each instrument's
--   cutoff, direction and reliable change from staging.instruments; scores and
--   differences are rounded to 6 decimals before they meet a threshold, as in
--   marts.episode_outcomes.
WITH daily AS (
    SELECT episode_id, instrument, administered_at::DATE AS day, total
    FROM marts.scores
    WHERE instrument IN ($depression_instrument, $anxiety_instrument)
    QUALIFY row_number() OVER (
        PARTITION BY episode_id, instrument, administered_at::DATE
        ORDER BY administered_at, assessment_id) = 1
),
occasions AS (
    SELECT episode_id, day
    FROM daily
    GROUP BY episode_id, day
    HAVING count(DISTINCT instrument) = 2
),
pair_ends AS (
    SELECT episode_id, min(day) AS first_day, max(day) AS last_day, count(*) AS occasions
    FROM occasions
    GROUP BY episode_id
),
measures AS (  -- one row per episode and instrument of the pair: first and last occasion
    SELECT d.episode_id, d.instrument,
           max(d.total) FILTER (WHERE d.day = e.first_day) AS first_score,
           max(d.total) FILTER (WHERE d.day = e.last_day) AS last_score
    FROM daily d
    JOIN pair_ends e ON e.episode_id = d.episode_id
    WHERE e.last_day > e.first_day
    GROUP BY d.episode_id, d.instrument
),
measure_flags AS (
    SELECT m.episode_id,
           CASE WHEN i.higher_is_worse THEN round(m.first_score, 6) >= i.cutoff
                ELSE round(m.first_score, 6) < i.cutoff END AS caseness_first,
           CASE WHEN i.higher_is_worse THEN round(m.last_score, 6) >= i.cutoff
                ELSE round(m.last_score, 6) < i.cutoff END AS caseness_last,
           round(CASE WHEN i.higher_is_worse THEN m.first_score - m.last_score
                      ELSE m.last_score - m.first_score END, 6) AS improvement,
           i.rc_threshold,
           i.rc_strict
    FROM measures m
    JOIN staging.instruments i ON i.code = m.instrument
),
pair_flags AS (
    SELECT episode_id,
           bool_or(caseness_first) AS caseness_start,
           bool_or(caseness_last) AS caseness_end,
           bool_or(CASE WHEN rc_strict THEN improvement > rc_threshold
                        ELSE improvement >= rc_threshold END) AS any_reliable_decrease,
           bool_or(CASE WHEN rc_strict THEN -improvement > rc_threshold
                        ELSE -improvement >= rc_threshold END) AS any_reliable_increase
    FROM measure_flags
    GROUP BY episode_id
),
episodes AS (
    SELECT e.episode_id, e.client_id, e.clinic_id, e.clinician_id, e.start_date, e.end_date,
           e.end_reason, a.status, a.dropout, a.early_dropout,
           CASE WHEN e.end_date IS NOT NULL THEN e.end_date
                WHEN a.status = 'disengaged' THEN coalesce(a.last_attended_at::DATE, e.start_date)
           END AS ended_on,
           coalesce(a.attended_non_assessment, 0) AS attended_treatment_sessions,
           coalesce(a.finished, false) AS finished
    FROM staging.episodes e
    LEFT JOIN marts.episode_attendance a ON a.episode_id = e.episode_id
)
SELECT e.episode_id, e.client_id, e.clinic_id, e.clinician_id, e.start_date, e.end_date,
       e.end_reason, e.status, e.dropout, e.early_dropout,
       e.ended_on,
       date_trunc('month', e.ended_on)::DATE AS ended_month,
       e.attended_treatment_sessions,
       e.finished,
       coalesce(p.occasions, 0) AS pair_occasions,
       coalesce(p.last_day > p.first_day, false) AS pair_paired,
       CASE WHEN p.last_day > p.first_day THEN p.first_day END AS pair_first_day,
       CASE WHEN p.last_day > p.first_day THEN p.last_day END AS pair_last_day,
       f.caseness_start,
       f.caseness_end,
       CASE WHEN f.caseness_start THEN NOT f.caseness_end END AS recovered,
       f.any_reliable_decrease AND NOT f.any_reliable_increase AS reliably_improved,
       f.any_reliable_increase AS reliably_deteriorated,
       CASE WHEN f.caseness_start
            THEN NOT f.caseness_end AND f.any_reliable_decrease AND NOT f.any_reliable_increase
       END AS reliably_recovered
FROM episodes e
LEFT JOIN pair_ends p ON p.episode_id = e.episode_id
LEFT JOIN pair_flags f ON f.episode_id = e.episode_id
ORDER BY e.episode_id
