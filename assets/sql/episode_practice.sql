-- marts.episode_practice: between-session practice per staged episode, from
-- sessions.practice_completed (CONTRACT.md) of attended sessions (practice is
-- reported at a session that took place).
--
-- Denominator: attended sessions where practice was set (yes + partial + no);
-- `not_assigned` and unrecorded (NULL) sessions are left out of it. Shares are
-- NULL when the denominator is 0.
--
-- Parameters (practice band on share_yes, the share fully completed):
--   $band_medium  share_yes from which the band is 'medium' (below: 'low')
--   $band_high    share_yes from which the band is 'high'

WITH practice AS (
    SELECT
        episode_id,
        count(*) AS attended_sessions,
        count(practice_completed) AS practice_recorded,
        count(*) FILTER (WHERE practice_completed = 'yes') AS practice_yes,
        count(*) FILTER (WHERE practice_completed = 'partial') AS practice_partial,
        count(*) FILTER (WHERE practice_completed = 'no') AS practice_no,
        count(*) FILTER (WHERE practice_completed = 'not_assigned') AS practice_not_assigned
    FROM staging.sessions
    WHERE status = 'attended'
    GROUP BY episode_id
),

shares AS (
    SELECT
        e.episode_id,
        e.client_id,
        e.clinic_id,
        e.clinician_id,
        coalesce(p.attended_sessions, 0) AS attended_sessions,
        coalesce(p.practice_recorded, 0) AS practice_recorded,
        coalesce(p.practice_yes, 0) AS practice_yes,
        coalesce(p.practice_partial, 0) AS practice_partial,
        coalesce(p.practice_no, 0) AS practice_no,
        coalesce(p.practice_not_assigned, 0) AS practice_not_assigned,
        coalesce(p.practice_yes + p.practice_partial + p.practice_no, 0) AS practice_assigned
    FROM staging.episodes AS e
    LEFT JOIN practice AS p
        ON p.episode_id = e.episode_id
)

SELECT
    *,
    practice_yes / nullif(practice_assigned, 0) AS share_yes,
    practice_partial / nullif(practice_assigned, 0) AS share_partial,
    practice_no / nullif(practice_assigned, 0) AS share_no,
    CASE
        WHEN practice_assigned = 0 THEN NULL
        WHEN round(practice_yes / practice_assigned, 6) >= $band_high THEN 'high'
        WHEN round(practice_yes / practice_assigned, 6) >= $band_medium THEN 'medium'
        ELSE 'low'
    END AS practice_band,
    CASE
        WHEN practice_assigned = 0 THEN NULL
        WHEN round(practice_yes / practice_assigned, 6) >= $band_high THEN 3
        WHEN round(practice_yes / practice_assigned, 6) >= $band_medium THEN 2
        ELSE 1
    END AS practice_band_order
FROM shares
ORDER BY episode_id
