-- marts.dose_response: cumulative share of episodes reliably improved by session
-- number, per symptom instrument (PHQ-9 is the one reports show first), for each
-- clinic and the whole service ($service_key).
-- Population (denominator, fixed for every session number): finished episodes
-- (marts.clinic_kpis_episodes) with paired scores on the instrument.
-- Numerator at session k: those episodes with a score at session_number <= k
-- (attended sessions up to the administration, marts.scores) that is a reliable
-- improvement on the baseline (first score): improvement >= rc_threshold (> when
-- the threshold is Jacobson & Truax derived, rc_strict), direction from the registry,
-- the difference rounded to 6 decimals as in marts.episode_outcomes.
-- n_reached_session: episodes of the population that attended at least k sessions.
-- n_clients: distinct clients of the population (the same at every session number).
--
-- Episodes alike at every session number (instrument, clinic, session first
-- improved, sessions attended) are counted once and expanded as a group: at
-- 200k episodes expanding each episode made 9.6M rows and took 3 GB (issue 8).
WITH population AS (
    SELECT o.episode_id, o.instrument, o.baseline_score, k.client_id, k.clinic_id,
           coalesce(a.attended, 0) AS attended
    FROM marts.episode_outcomes o
    JOIN marts.clinic_kpis_episodes k ON k.episode_id = o.episode_id
    LEFT JOIN marts.episode_attendance a ON a.episode_id = o.episode_id
    WHERE k.finished AND o.paired
),
first_improved AS (  -- the session number at which reliable improvement was first reached
    SELECT p.episode_id, p.instrument, min(s.session_number) AS session_number
    FROM population p
    JOIN marts.scores s ON s.episode_id = p.episode_id AND s.instrument = p.instrument
    JOIN staging.instruments i ON i.code = p.instrument
    CROSS JOIN LATERAL (
        SELECT round(CASE WHEN i.higher_is_worse THEN p.baseline_score - s.total
                          ELSE s.total - p.baseline_score END, 6) AS improvement
    ) d
    WHERE CASE WHEN i.rc_strict THEN d.improvement > i.rc_threshold
               ELSE d.improvement >= i.rc_threshold END
    GROUP BY p.episode_id, p.instrument
),
episodes AS (
    SELECT p.*, f.session_number AS improved_at
    FROM population p
    LEFT JOIN first_improved f ON f.episode_id = p.episode_id AND f.instrument = p.instrument
),
session_grid AS (  -- 1 .. the highest session number scored for the instrument
    SELECT s.instrument, unnest(generate_series(1, max(s.session_number))) AS session_number
    FROM marts.scores s
    JOIN population p ON p.episode_id = s.episode_id AND p.instrument = s.instrument
    GROUP BY s.instrument
),
episode_groups AS (  -- the episodes, grouped where every session number treats them alike
    SELECT instrument, clinic_id, improved_at, attended, count(*) AS episodes
    FROM episodes
    GROUP BY instrument, clinic_id, improved_at, attended
),
expanded AS (
    SELECT g.instrument, g.session_number, e.clinic_id, e.episodes,
           coalesce(e.improved_at <= g.session_number, false) AS improved_by,
           coalesce(e.improved_at = g.session_number
                    OR (g.session_number = 1 AND e.improved_at < 1), false) AS improved_at,
           e.attended >= g.session_number AS reached
    FROM session_grid g
    JOIN episode_groups e ON e.instrument = g.instrument
),
cells AS (
    SELECT instrument, clinic_id, grouping(clinic_id) AS whole_service, session_number,
           coalesce(sum(episodes) FILTER (WHERE improved_by), 0)::BIGINT AS improved,
           sum(episodes)::BIGINT AS population_size,
           coalesce(sum(episodes) FILTER (WHERE improved_at), 0)::BIGINT AS newly_improved,
           coalesce(sum(episodes) FILTER (WHERE reached), 0)::BIGINT AS n_reached_session
    FROM expanded
    GROUP BY GROUPING SETS ((instrument, session_number, clinic_id), (instrument, session_number))
),
clients AS (  -- n_clients, from the population itself (not expanded)
    SELECT instrument, clinic_id, grouping(clinic_id) AS whole_service,
           count(DISTINCT client_id) AS n_clients
    FROM population
    GROUP BY GROUPING SETS ((instrument, clinic_id), (instrument))
)
SELECT c.instrument,
       CASE WHEN c.whole_service = 0 THEN c.clinic_id ELSE $service_key END AS clinic_id,
       c.session_number,
       c.improved::DOUBLE AS numerator,
       c.population_size::DOUBLE AS denominator,
       c.improved / c.population_size AS value,
       c.newly_improved,
       c.n_reached_session,
       n.n_clients
FROM cells c
JOIN clients n
  ON n.instrument = c.instrument AND n.whole_service = c.whole_service
 AND n.clinic_id IS NOT DISTINCT FROM c.clinic_id
ORDER BY instrument, clinic_id, session_number
