-- marts.scores: one row per staged administration (METRICS.md "Scoring an administration").
--
-- Scoring itself happened at ingest (staging.assessments.total / items_answered /
-- prorated); administrations with too many missing items never reach staging.
-- This mart adds where in the episode each score sits:
--   session_number = attended sessions of the episode with scheduled_at <= administered_at
--   score_ordinal  = 1, 2, ... within episode and instrument, ordered by
--                    administered_at, ties broken by assessment_id (METRICS.md).
-- Every later mart that needs "baseline", "final" or "the n-th score" uses
-- score_ordinal, so the ordering rule lives here only.

-- session_number is counted in the list of the episode's attended session times
-- (about ten), not by joining every administration to every earlier session
-- (issue 8: that join made 22M pairs at 200k episodes and 110M at 1M). The list
-- is counted in its own CTE so that it is not carried through the window below.

WITH attended_sessions AS (
    SELECT episode_id, list(scheduled_at) AS attended_at
    FROM staging.sessions
    WHERE status = 'attended'
    GROUP BY episode_id
),

session_numbers AS (
    SELECT a.assessment_id,
           len(list_filter(n.attended_at, lambda t: t <= a.administered_at)) AS session_number
    FROM staging.assessments AS a
    JOIN attended_sessions AS n ON n.episode_id = a.episode_id
)

SELECT
    a.assessment_id,
    a.episode_id,
    a.client_id,
    a.instrument,
    a.administered_at,
    a.total,
    a.items_answered,
    a.prorated,
    CAST(coalesce(n.session_number, 0) AS INTEGER) AS session_number,
    -- extras
    i.construct,
    e.clinic_id,
    e.clinician_id,
    a.session_id,
    CAST(row_number() OVER (
        PARTITION BY a.episode_id, a.instrument
        ORDER BY a.administered_at, a.assessment_id
    ) AS INTEGER) AS score_ordinal
FROM staging.assessments AS a
LEFT JOIN session_numbers AS n ON n.assessment_id = a.assessment_id
LEFT JOIN staging.episodes AS e ON e.episode_id = a.episode_id
LEFT JOIN staging.instruments AS i ON i.code = a.instrument
ORDER BY a.episode_id, a.instrument, score_ordinal
