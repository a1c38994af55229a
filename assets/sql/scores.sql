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

WITH attended_sessions AS (
    SELECT episode_id, scheduled_at
    FROM staging.sessions
    WHERE status = 'attended'
),

session_numbers AS (
    SELECT
        a.assessment_id,
        count(s.scheduled_at) AS session_number
    FROM staging.assessments AS a
    LEFT JOIN attended_sessions AS s
        ON s.episode_id = a.episode_id
       AND s.scheduled_at <= a.administered_at
    GROUP BY a.assessment_id
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
    CAST(n.session_number AS INTEGER) AS session_number,
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
JOIN session_numbers AS n USING (assessment_id)
LEFT JOIN staging.episodes AS e USING (episode_id)
LEFT JOIN staging.instruments AS i ON i.code = a.instrument
ORDER BY a.episode_id, a.instrument, score_ordinal
