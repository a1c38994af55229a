-- marts.etr_backtest_episodes: per ended episode, symptom instrument and
-- horizon ("by session 4", "by session 6"), was it flagged in time, and how
-- did it end? The drill-down behind marts.etr_backtest (METRICS.md "Expected
-- treatment response": the report shows how well the alert would have
-- predicted the final outcome on the clinic's own history).
--
-- Eligible: the episode has ended (end_date set), its outcome is paired
-- (marts.episode_outcomes.outcome_class not 'not_paired' nor NULL), and it has
-- an evaluated administration after the horizon. The last condition keeps the
-- backtest prospective: the final score, which decides the outcome, comes after
-- every administration that can raise a flag by the horizon.
--
--   outcome_group       'deteriorated_or_not_improved' (reliably_deteriorated
--                       or no_reliable_change) or 'improved' (reliably_improved)
--   flagged_not_on_track        the not_on_track alert (marts.etr_alerts) was
--                               raised at session_number <= horizon
--   flagged_reliable_deterioration  the plain rule: an administration at
--                               session_number <= horizon was reliably worse than
--                               the baseline (the reliable_deterioration alert)
-- Horizons come from marts.etr_settings.backtest_sessions.

WITH horizons AS (
    SELECT unnest(backtest_sessions) AS by_session FROM marts.etr_settings
),

per_episode AS (
    SELECT
        t.episode_id,
        t.instrument,
        any_value(t.client_id)      AS client_id,
        any_value(t.clinician_id)   AS clinician_id,
        any_value(t.severity_band)  AS severity_band,
        max(t.session_number)       AS last_session,
        min(t.session_number) FILTER (WHERE t.reliably_deteriorated)
                                    AS reliable_deterioration_session
    FROM marts.expected_trajectory AS t
    GROUP BY t.episode_id, t.instrument
),

ended AS (
    SELECT
        p.*,
        o.outcome_class,
        CASE WHEN o.outcome_class = 'reliably_improved' THEN 'improved'
             ELSE 'deteriorated_or_not_improved' END AS outcome_group,
        a.session_number AS not_on_track_session
    FROM per_episode AS p
    JOIN staging.episodes AS e USING (episode_id)
    JOIN marts.episode_outcomes AS o USING (episode_id, instrument)
    LEFT JOIN marts.etr_alerts AS a USING (episode_id, instrument)
    WHERE e.end_date IS NOT NULL
      AND o.outcome_class IN ('reliably_improved', 'no_reliable_change', 'reliably_deteriorated')
)

SELECT
    e.episode_id,
    e.client_id,
    e.clinician_id,
    e.instrument,
    h.by_session,
    e.severity_band,
    e.last_session,
    e.outcome_class,
    e.outcome_group,
    coalesce(e.not_on_track_session <= h.by_session, false) AS flagged_not_on_track,
    coalesce(e.reliable_deterioration_session <= h.by_session, false)
        AS flagged_reliable_deterioration,
    e.not_on_track_session,
    e.reliable_deterioration_session
FROM ended AS e
JOIN horizons AS h ON e.last_session > h.by_session
ORDER BY e.episode_id, e.instrument, h.by_session
