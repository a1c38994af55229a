-- marts.clinic_kpis, measurement completeness: median whole days between
-- consecutive administrations of the same instrument in an episode (ordered by
-- administered_at, ties by assessment_id). A gap counts in the month of its
-- later administration. instrument NULL = all instruments pooled.
-- Not a rate: numerator is NULL, denominator is the number of gaps.
--
-- n_episodes and n_clients are counted without count(DISTINCT) under the eight
-- grouping sets (issue 8; as in clinic_kpis_rates.sql): an episode has one
-- client and one clinic, so a cell's distinct episodes are its gaps that are
-- the episode's first in the cell: first on the instrument (in the month), or
-- first on any instrument (in the month) for the pooled cells. Months follow
-- the time order, so each flag compares a gap with the one before it. Clients
-- with a single episode count as that episode; the few with more are counted
-- distinctly (repeat_client).
--
-- The median is read from the number of gaps of each length in days (a few
-- hundred lengths per cell), not from every gap: under a memory cap, DuckDB's
-- median over 16M gaps in eight grouping sets at 1M episodes took 2 minutes.
-- It is quantile_cont(0.5) as median() computes it: the mean of the lengths at
-- positions (n - 1) // 2 and n // 2 (0-based) of the n sorted gaps.
WITH episodes AS (
    SELECT episode_id, client_id, clinic_id,
           count(*) OVER (PARTITION BY client_id) > 1 AS repeat_client
    FROM staging.episodes
),
ordered AS (
    SELECT s.instrument, s.episode_id, e.client_id, e.clinic_id, e.repeat_client,
           s.administered_at,
           lag(s.administered_at) OVER instrument_order AS previous_at,
           lag(s.administered_at, 2) OVER instrument_order AS second_previous_at
    FROM marts.scores s
    JOIN episodes e ON e.episode_id = s.episode_id
    WINDOW instrument_order AS (
        PARTITION BY s.episode_id, s.instrument ORDER BY s.administered_at, s.assessment_id)
),
gaps AS (
    SELECT instrument, date_trunc('month', administered_at)::DATE AS unit_month,
           clinic_id AS unit_clinic, client_id, episode_id, repeat_client, administered_at,
           date_diff('day', previous_at::DATE, administered_at::DATE) AS gap_days,
           second_previous_at IS NULL AS first_on_instrument,
           second_previous_at IS NULL
               OR date_trunc('month', previous_at)
                  IS DISTINCT FROM date_trunc('month', administered_at)
               AS first_on_instrument_in_month
    FROM ordered
    WHERE previous_at IS NOT NULL
),
flagged AS (
    SELECT *,
           row_number() OVER episode_order = 1 AS first_in_episode,
           lag(unit_month) OVER episode_order IS DISTINCT FROM unit_month AS first_in_month,
           client_id IS NOT NULL AND NOT repeat_client AS single_client
    FROM gaps
    WINDOW episode_order AS (PARTITION BY episode_id ORDER BY administered_at)
),
counts AS (  -- per cell: gaps, distinct episodes and clients
    SELECT instrument, unit_month, unit_clinic,
           grouping(instrument, unit_month, unit_clinic) AS cell_level,
           count(*) AS gaps,
           -- grouping(instrument, unit_month): 0 both kept, 1 all months, 2 pooled, 3 both
           CASE grouping(instrument, unit_month)
               WHEN 0 THEN count(*) FILTER (WHERE single_client AND first_on_instrument_in_month)
               WHEN 1 THEN count(*) FILTER (WHERE single_client AND first_on_instrument)
               WHEN 2 THEN count(*) FILTER (WHERE single_client AND first_in_month)
               ELSE count(*) FILTER (WHERE single_client AND first_in_episode)
           END + count(DISTINCT CASE WHEN repeat_client THEN client_id END) AS n_clients,
           CASE grouping(instrument, unit_month)
               WHEN 0 THEN count(*) FILTER (WHERE first_on_instrument_in_month)
               WHEN 1 THEN count(*) FILTER (WHERE first_on_instrument)
               WHEN 2 THEN count(*) FILTER (WHERE first_in_month)
               ELSE count(*) FILTER (WHERE first_in_episode)
           END AS n_episodes
    FROM flagged
    GROUP BY GROUPING SETS ((instrument, unit_month, unit_clinic), (instrument, unit_month),
                            (instrument, unit_clinic), (instrument),
                            (unit_month, unit_clinic), (unit_month), (unit_clinic), ())
),
lengths AS (  -- per cell and gap length: gaps of that length, of that length or less, in all
    SELECT *,
           sum(gaps) OVER (cell ORDER BY gap_days) AS gaps_up_to,
           sum(gaps) OVER cell AS cell_gaps
    FROM (
        SELECT instrument, unit_month, unit_clinic,
               grouping(instrument, unit_month, unit_clinic) AS cell_level,
               gap_days, count(*) AS gaps
        FROM gaps
        WHERE gap_days IS NOT NULL
        GROUP BY GROUPING SETS (
            (instrument, unit_month, unit_clinic, gap_days), (instrument, unit_month, gap_days),
            (instrument, unit_clinic, gap_days), (instrument, gap_days),
            (unit_month, unit_clinic, gap_days), (unit_month, gap_days),
            (unit_clinic, gap_days), (gap_days))
    )
    WINDOW cell AS (PARTITION BY cell_level, instrument, unit_month, unit_clinic)
),
medians AS (
    SELECT cell_level, instrument, unit_month, unit_clinic,
           (min(gap_days) FILTER (WHERE gaps_up_to > (cell_gaps - 1) // 2)
            + min(gap_days) FILTER (WHERE gaps_up_to > cell_gaps // 2)) / 2 AS median_days
    FROM lengths
    GROUP BY cell_level, instrument, unit_month, unit_clinic
)
-- cell_level = grouping(instrument, unit_month, unit_clinic): bit 2 all months, bit 1 service
SELECT CASE WHEN c.cell_level & 2 = 0 THEN 'month' ELSE 'all' END AS period_type,
       c.unit_month AS period_start,
       CASE WHEN c.cell_level & 1 = 0 THEN c.unit_clinic ELSE $service_key END AS clinic_id,
       'median_days_between_measures' AS kpi,
       c.instrument,
       NULL::DOUBLE AS numerator,
       c.gaps::DOUBLE AS denominator,
       m.median_days::DOUBLE AS value,
       c.n_clients,
       c.n_episodes
FROM counts c
LEFT JOIN medians m
  ON m.cell_level = c.cell_level AND m.instrument IS NOT DISTINCT FROM c.instrument
 AND m.unit_month IS NOT DISTINCT FROM c.unit_month
 AND m.unit_clinic IS NOT DISTINCT FROM c.unit_clinic
