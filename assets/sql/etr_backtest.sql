-- marts.etr_backtest: how well would the not_on_track alert have predicted the
-- final outcome on the clinic's own history, next to the plain rule "reliable
-- deterioration so far" (METRICS.md "Expected treatment response").
--
-- One row per symptom instrument (and 'all' pooled), horizon and rule, over the
-- eligible episodes of marts.etr_backtest_episodes:
--   sensitivity      flagged / episodes that ended reliably deteriorated or
--                    with no reliable change (the alert should fire for them)
--   sensitivity_deteriorated   the same over reliably deteriorated episodes only
--   false_alarm_rate flagged / episodes that ended reliably improved
-- Rates are NULL when their denominator is 0; counts are raw (small-cell
-- suppression belongs to the published report).

WITH long AS (
    SELECT episode_id, client_id, instrument, by_session, outcome_class, outcome_group,
           'not_on_track' AS rule, flagged_not_on_track AS flagged
    FROM marts.etr_backtest_episodes
    UNION ALL
    SELECT episode_id, client_id, instrument, by_session, outcome_class, outcome_group,
           'reliable_deterioration' AS rule, flagged_reliable_deterioration AS flagged
    FROM marts.etr_backtest_episodes
),

counted AS (
    SELECT
        coalesce(instrument, 'all') AS instrument,
        by_session,
        rule,
        count(*) AS episodes,
        count(DISTINCT client_id) AS clients,
        count(*) FILTER (WHERE outcome_group = 'deteriorated_or_not_improved') AS positives,
        count(*) FILTER (WHERE outcome_group = 'deteriorated_or_not_improved' AND flagged)
            AS positives_flagged,
        count(*) FILTER (WHERE outcome_class = 'reliably_deteriorated') AS deteriorated,
        count(*) FILTER (WHERE outcome_class = 'reliably_deteriorated' AND flagged)
            AS deteriorated_flagged,
        count(*) FILTER (WHERE outcome_group = 'improved') AS negatives,
        count(*) FILTER (WHERE outcome_group = 'improved' AND flagged) AS negatives_flagged
    FROM long
    GROUP BY GROUPING SETS ((instrument, by_session, rule), (by_session, rule))
)

SELECT
    instrument,
    by_session,
    rule,
    episodes,
    clients,
    positives,
    positives_flagged,
    CASE WHEN positives > 0 THEN positives_flagged / positives END AS sensitivity,
    deteriorated,
    deteriorated_flagged,
    CASE WHEN deteriorated > 0 THEN deteriorated_flagged / deteriorated END
        AS sensitivity_deteriorated,
    negatives,
    negatives_flagged,
    CASE WHEN negatives > 0 THEN negatives_flagged / negatives END AS false_alarm_rate
FROM counted
ORDER BY instrument = 'all', instrument, by_session, rule
