-- marts.clinic_kpis, measurement completeness: median whole days between
-- consecutive administrations of the same instrument in an episode (ordered by
-- administered_at, ties by assessment_id). A gap counts in the month of its
-- later administration. instrument NULL = all instruments pooled.
-- Not a rate: numerator is NULL, denominator is the number of gaps.
WITH ordered AS (
    SELECT s.instrument, s.episode_id, e.client_id, e.clinic_id, s.administered_at,
           lag(s.administered_at) OVER (
               PARTITION BY s.episode_id, s.instrument
               ORDER BY s.administered_at, s.assessment_id) AS previous_at
    FROM marts.scores s
    JOIN staging.episodes e ON e.episode_id = s.episode_id
),
gaps AS (
    SELECT instrument, date_trunc('month', administered_at)::DATE AS unit_month,
           clinic_id AS unit_clinic, client_id, episode_id,
           date_diff('day', previous_at::DATE, administered_at::DATE) AS gap_days
    FROM ordered
    WHERE previous_at IS NOT NULL
)
SELECT CASE WHEN grouping(unit_month) = 0 THEN 'month' ELSE 'all' END AS period_type,
       unit_month AS period_start,
       CASE WHEN grouping(unit_clinic) = 0 THEN unit_clinic ELSE $service_key END AS clinic_id,
       'median_days_between_measures' AS kpi,
       CASE WHEN grouping(instrument) = 0 THEN instrument END AS instrument,
       NULL::DOUBLE AS numerator,
       count(*)::DOUBLE AS denominator,
       median(gap_days)::DOUBLE AS value,
       count(DISTINCT client_id) AS n_clients,
       count(DISTINCT episode_id) AS n_episodes
FROM gaps
GROUP BY GROUPING SETS ((instrument, unit_month, unit_clinic), (instrument, unit_month),
                        (instrument, unit_clinic), (instrument),
                        (unit_month, unit_clinic), (unit_month), (unit_clinic), ())
