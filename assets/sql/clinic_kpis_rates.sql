-- marts.clinic_kpis, rate KPIs: every rate is numerator / denominator over
-- "units" (sessions or episodes), so the definition of each KPI reads as one
-- block of `units` below (docs/metrics.md 6.3). A units row holds one episode's
-- units of a KPI in one month: `num` of its `den` units count in the numerator
-- (a session KPI: the episode's sessions of that month; an episode KPI: the
-- episode itself, den = 1).
-- Cells: per month and clinic, per month for the service, all-time per clinic
-- and all-time for the service ($service_key).
--
-- n_episodes and n_clients (distinct, for small-cell suppression) are counted
-- without count(DISTINCT) over every unit, which took 30 s and 5 GB at 200k
-- episodes (docs/decisions/008-scale.md). An episode has one client and one
-- clinic (staging.episodes; sessions and assessments carry the episode's
-- client, CONTRACT.md) and at most one units row per KPI, instrument and month:
--   * n_episodes: the rows of a month cell; all-time, the rows flagged
--     first_unit (the episode's first month in the KPI);
--   * n_clients: the same count over clients with a single episode, plus the
--     distinct clients among the few with more than one (repeat_client).
WITH kpi_episodes AS (
    SELECT * FROM marts.clinic_kpis_episodes
),
finished AS (
    SELECT * FROM kpi_episodes WHERE finished
),
session_measures AS (  -- attended sessions with an administration of each construct
    SELECT s.session_id,
           bool_or(i.construct = 'symptom') AS has_symptom,
           bool_or(i.construct = 'alliance') AS has_alliance
    FROM staging.sessions s
    JOIN staging.assessments a
      ON a.episode_id = s.episode_id
     AND (a.session_id = s.session_id
          OR (a.session_id IS NULL AND a.administered_at::DATE = s.scheduled_at::DATE))
    JOIN staging.instruments i ON i.code = a.instrument
    WHERE s.status = 'attended'
    GROUP BY s.session_id
),
session_counts AS (  -- held or missed sessions per episode and calendar month
    SELECT s.episode_id, e.client_id, e.clinic_id,
           date_trunc('month', s.scheduled_at)::DATE AS month,
           count(*) FILTER (WHERE s.status = 'attended') AS attended,
           count(*) FILTER (WHERE s.status = 'no_show') AS no_show,
           count(*) FILTER (WHERE s.status = 'late_cancelled') AS late_cancelled,
           count(*) FILTER (WHERE s.status = 'attended' AND m.has_symptom) AS with_symptom,
           count(*) FILTER (WHERE s.status = 'attended' AND m.has_alliance) AS with_alliance
    FROM staging.sessions s
    JOIN staging.episodes e ON e.episode_id = s.episode_id
    LEFT JOIN session_measures m ON m.session_id = s.session_id
    WHERE s.status IN ('attended', 'no_show', 'late_cancelled')  -- booked: never counted
    GROUP BY s.episode_id, e.client_id, e.clinic_id, month
),
session_months AS (  -- ... and whether the month is the episode's first with such sessions
    SELECT *,
           month IS NOT DISTINCT FROM min(month) OVER episode AS first_held_or_missed,
           month IS NOT DISTINCT FROM min(month) FILTER (WHERE attended + no_show > 0) OVER episode
               AS first_attended_or_dna,
           month IS NOT DISTINCT FROM min(month) FILTER (WHERE attended > 0) OVER episode
               AS first_attended
    FROM session_counts
    WINDOW episode AS (PARTITION BY episode_id)
),
instrument_outcomes AS (  -- per symptom instrument, finished episodes only
    SELECT o.*, f.client_id, f.clinic_id, f.ended_month
    FROM marts.episode_outcomes o
    JOIN finished f ON f.episode_id = o.episode_id
),
any_symptom_paired AS (
    SELECT episode_id, bool_or(paired) AS paired
    FROM marts.episode_outcomes
    GROUP BY episode_id
),
units AS (
    -- Attendance: held or missed appointments (cancellations made in advance are not missed)
    SELECT 'attendance_rate' AS kpi, NULL::VARCHAR AS instrument, month AS unit_month,
           clinic_id AS unit_clinic, client_id, episode_id,
           attended AS num, attended + no_show + late_cancelled AS den,
           NULL::DOUBLE AS target, first_held_or_missed AS first_unit
    FROM session_months
    UNION ALL
    SELECT 'dna_rate', NULL, month, clinic_id, client_id, episode_id,
           no_show, attended + no_show + late_cancelled, NULL, first_held_or_missed
    FROM session_months
    UNION ALL
    -- NHS Talking Therapies variant: DNAs over attended + DNA only
    SELECT 'dna_rate_nhs', NULL, month, clinic_id, client_id, episode_id,
           no_show, attended + no_show, NULL, first_attended_or_dna
    FROM session_months WHERE attended + no_show > 0
    UNION ALL
    -- Dropout: episodes that left treatment in the month (any reason, incl. disengaged)
    SELECT 'dropout_rate', NULL, ended_month, clinic_id, client_id, episode_id,
           dropout::INTEGER, 1, NULL, true
    FROM kpi_episodes WHERE ended_on IS NOT NULL
    UNION ALL
    SELECT 'early_dropout_rate', NULL, ended_month, clinic_id, client_id, episode_id,
           early_dropout::INTEGER, 1, NULL, true
    FROM kpi_episodes WHERE ended_on IS NOT NULL
    UNION ALL
    -- NHS Talking Therapies style, depression + anxiety measures together ($pair_label)
    SELECT 'recovery_rate', $pair_label, ended_month, clinic_id, client_id, episode_id,
           recovered::INTEGER, 1, NULL, true
    FROM finished WHERE pair_paired AND caseness_start
    UNION ALL
    SELECT 'reliable_recovery_rate', $pair_label, ended_month, clinic_id, client_id, episode_id,
           reliably_recovered::INTEGER, 1, NULL, true
    FROM finished WHERE pair_paired AND caseness_start
    UNION ALL
    SELECT 'reliable_improvement_rate', $pair_label, ended_month, clinic_id, client_id, episode_id,
           reliably_improved::INTEGER, 1, NULL, true
    FROM finished WHERE pair_paired
    UNION ALL
    SELECT 'reliable_deterioration_rate', $pair_label, ended_month, clinic_id, client_id,
           episode_id, reliably_deteriorated::INTEGER, 1, NULL, true
    FROM finished WHERE pair_paired
    UNION ALL
    -- The same four rates on one symptom instrument (marts.episode_outcomes)
    SELECT 'recovery_rate', instrument, ended_month, clinic_id, client_id, episode_id,
           recovered::INTEGER, 1, NULL, true
    FROM instrument_outcomes WHERE paired AND baseline_caseness
    UNION ALL
    SELECT 'reliable_recovery_rate', instrument, ended_month, clinic_id, client_id, episode_id,
           reliably_recovered::INTEGER, 1, NULL, true
    FROM instrument_outcomes WHERE paired AND baseline_caseness
    UNION ALL
    SELECT 'reliable_improvement_rate', instrument, ended_month, clinic_id, client_id, episode_id,
           (outcome_class = 'reliably_improved')::INTEGER, 1, NULL, true
    FROM instrument_outcomes WHERE paired
    UNION ALL
    SELECT 'reliable_deterioration_rate', instrument, ended_month, clinic_id, client_id,
           episode_id, (outcome_class = 'reliably_deteriorated')::INTEGER, 1, NULL, true
    FROM instrument_outcomes WHERE paired
    UNION ALL
    -- Measurement completeness: finished episodes with paired scores (aim $paired_share_aim)
    SELECT 'paired_share_finished', $pair_label, ended_month, clinic_id, client_id, episode_id,
           pair_paired::INTEGER, 1, $paired_share_aim, true
    FROM finished
    UNION ALL
    SELECT 'paired_share_finished', NULL, f.ended_month, f.clinic_id, f.client_id, f.episode_id,
           coalesce(p.paired, false)::INTEGER, 1, $paired_share_aim, true
    FROM finished f LEFT JOIN any_symptom_paired p ON p.episode_id = f.episode_id
    UNION ALL
    -- Attended sessions with a questionnaire of the construct
    SELECT 'sessions_with_symptom_measure', NULL, month, clinic_id, client_id, episode_id,
           with_symptom, attended, NULL, first_attended
    FROM session_months WHERE attended > 0
    UNION ALL
    SELECT 'sessions_with_alliance_measure', NULL, month, clinic_id, client_id, episode_id,
           with_alliance, attended, NULL, first_attended
    FROM session_months WHERE attended > 0
),
repeat_clients AS (  -- clients with more than one episode
    SELECT client_id FROM staging.episodes GROUP BY client_id HAVING count(*) > 1
),
counted AS (
    SELECT u.*,
           r.client_id IS NOT NULL AS repeat_client,
           -- counts its client: the client's only episode (distinct count for the others)
           r.client_id IS NULL AND u.client_id IS NOT NULL AS single_client
    FROM units u
    LEFT JOIN repeat_clients r ON r.client_id = u.client_id
)
SELECT CASE WHEN grouping(unit_month) = 0 THEN 'month' ELSE 'all' END AS period_type,
       unit_month AS period_start,
       CASE WHEN grouping(unit_clinic) = 0 THEN unit_clinic ELSE $service_key END AS clinic_id,
       kpi,
       instrument,
       sum(num)::DOUBLE AS numerator,
       sum(den)::DOUBLE AS denominator,
       sum(num)::DOUBLE / sum(den) AS value,
       CASE WHEN grouping(unit_month) = 0 THEN count(*) FILTER (WHERE single_client)
            ELSE count(*) FILTER (WHERE single_client AND first_unit) END
           + count(DISTINCT CASE WHEN repeat_client THEN client_id END) AS n_clients,
       CASE WHEN grouping(unit_month) = 0 THEN count(*)
            ELSE count(*) FILTER (WHERE first_unit) END AS n_episodes,
       any_value(target) AS target
FROM counted
GROUP BY GROUPING SETS ((kpi, instrument, unit_month, unit_clinic), (kpi, instrument, unit_month),
                        (kpi, instrument, unit_clinic), (kpi, instrument))
