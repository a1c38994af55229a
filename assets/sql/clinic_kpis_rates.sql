-- marts.clinic_kpis, rate KPIs: every rate is numerator / denominator over
-- "units" (sessions or episodes), one unit row per KPI it counts in, so the
-- definition of each KPI reads as one block below (docs/metrics_service.md).
-- Cells: per month and clinic, per month for the service, all-time per clinic
-- and all-time for the service ($service_key).
WITH kpi_episodes AS (
    SELECT * FROM marts.clinic_kpis_episodes
),
finished AS (
    SELECT * FROM kpi_episodes WHERE finished
),
sessions AS (  -- booked (future) appointments are never counted
    SELECT s.session_id, s.episode_id, s.status, e.client_id, e.clinic_id,
           date_trunc('month', s.scheduled_at)::DATE AS month
    FROM staging.sessions s
    JOIN staging.episodes e ON e.episode_id = s.episode_id
    WHERE s.status <> 'booked'
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
           (status = 'attended')::INTEGER AS num, NULL::DOUBLE AS target
    FROM sessions WHERE status IN ('attended', 'no_show', 'late_cancelled')
    UNION ALL
    SELECT 'dna_rate', NULL, month, clinic_id, client_id, episode_id,
           (status = 'no_show')::INTEGER, NULL
    FROM sessions WHERE status IN ('attended', 'no_show', 'late_cancelled')
    UNION ALL
    -- NHS Talking Therapies variant: DNAs over attended + DNA only
    SELECT 'dna_rate_nhs', NULL, month, clinic_id, client_id, episode_id,
           (status = 'no_show')::INTEGER, NULL
    FROM sessions WHERE status IN ('attended', 'no_show')
    UNION ALL
    -- Dropout: episodes that left treatment in the month (any reason, incl. disengaged)
    SELECT 'dropout_rate', NULL, ended_month, clinic_id, client_id, episode_id,
           dropout::INTEGER, NULL
    FROM kpi_episodes WHERE ended_on IS NOT NULL
    UNION ALL
    SELECT 'early_dropout_rate', NULL, ended_month, clinic_id, client_id, episode_id,
           early_dropout::INTEGER, NULL
    FROM kpi_episodes WHERE ended_on IS NOT NULL
    UNION ALL
    -- NHS Talking Therapies style, depression + anxiety measures together ($pair_label)
    SELECT 'recovery_rate', $pair_label, ended_month, clinic_id, client_id, episode_id,
           recovered::INTEGER, NULL
    FROM finished WHERE pair_paired AND caseness_start
    UNION ALL
    SELECT 'reliable_recovery_rate', $pair_label, ended_month, clinic_id, client_id, episode_id,
           reliably_recovered::INTEGER, NULL
    FROM finished WHERE pair_paired AND caseness_start
    UNION ALL
    SELECT 'reliable_improvement_rate', $pair_label, ended_month, clinic_id, client_id, episode_id,
           reliably_improved::INTEGER, NULL
    FROM finished WHERE pair_paired
    UNION ALL
    SELECT 'reliable_deterioration_rate', $pair_label, ended_month, clinic_id, client_id,
           episode_id, reliably_deteriorated::INTEGER, NULL
    FROM finished WHERE pair_paired
    UNION ALL
    -- The same four rates on one symptom instrument (marts.episode_outcomes)
    SELECT 'recovery_rate', instrument, ended_month, clinic_id, client_id, episode_id,
           recovered::INTEGER, NULL
    FROM instrument_outcomes WHERE paired AND baseline_caseness
    UNION ALL
    SELECT 'reliable_recovery_rate', instrument, ended_month, clinic_id, client_id, episode_id,
           reliably_recovered::INTEGER, NULL
    FROM instrument_outcomes WHERE paired AND baseline_caseness
    UNION ALL
    SELECT 'reliable_improvement_rate', instrument, ended_month, clinic_id, client_id, episode_id,
           (outcome_class = 'reliably_improved')::INTEGER, NULL
    FROM instrument_outcomes WHERE paired
    UNION ALL
    SELECT 'reliable_deterioration_rate', instrument, ended_month, clinic_id, client_id,
           episode_id, (outcome_class = 'reliably_deteriorated')::INTEGER, NULL
    FROM instrument_outcomes WHERE paired
    UNION ALL
    -- Measurement completeness: finished episodes with paired scores (aim $paired_share_aim)
    SELECT 'paired_share_finished', $pair_label, ended_month, clinic_id, client_id, episode_id,
           pair_paired::INTEGER, $paired_share_aim
    FROM finished
    UNION ALL
    SELECT 'paired_share_finished', NULL, f.ended_month, f.clinic_id, f.client_id, f.episode_id,
           coalesce(p.paired, false)::INTEGER, $paired_share_aim
    FROM finished f LEFT JOIN any_symptom_paired p ON p.episode_id = f.episode_id
    UNION ALL
    SELECT 'sessions_with_symptom_measure', NULL, s.month, s.clinic_id, s.client_id, s.episode_id,
           coalesce(m.has_symptom, false)::INTEGER, NULL
    FROM sessions s LEFT JOIN session_measures m ON m.session_id = s.session_id
    WHERE s.status = 'attended'
    UNION ALL
    SELECT 'sessions_with_alliance_measure', NULL, s.month, s.clinic_id, s.client_id, s.episode_id,
           coalesce(m.has_alliance, false)::INTEGER, NULL
    FROM sessions s LEFT JOIN session_measures m ON m.session_id = s.session_id
    WHERE s.status = 'attended'
)
SELECT CASE WHEN grouping(unit_month) = 0 THEN 'month' ELSE 'all' END AS period_type,
       unit_month AS period_start,
       CASE WHEN grouping(unit_clinic) = 0 THEN unit_clinic ELSE $service_key END AS clinic_id,
       kpi,
       instrument,
       sum(num)::DOUBLE AS numerator,
       count(*)::DOUBLE AS denominator,
       sum(num)::DOUBLE / count(*) AS value,
       count(DISTINCT client_id) AS n_clients,
       count(DISTINCT episode_id) AS n_episodes,
       any_value(target) AS target
FROM units
GROUP BY GROUPING SETS ((kpi, instrument, unit_month, unit_clinic), (kpi, instrument, unit_month),
                        (kpi, instrument, unit_clinic), (kpi, instrument))
