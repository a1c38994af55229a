-- marts.episode_goals: one row per episode with at least one goal (set or
-- rated), from marts.goal_progress. METRICS.md "Goals".
--
-- mean_goal_change: mean of change over goals rated at least twice (paired);
-- share_reliably_improved = goals_reliably_improved / goals_paired (NULL when no
-- goal is paired). The same three figures by horizon (short_term, long_term);
-- goals rated but never set in staging.goals (horizon NULL) count only overall.

SELECT
    episode_id,
    any_value(client_id) AS client_id,
    any_value(clinic_id) AS clinic_id,
    any_value(clinician_id) AS clinician_id,
    count(*) AS goals,
    count(*) FILTER (WHERE paired) AS goals_paired,
    avg(change) AS mean_goal_change,
    count(*) FILTER (WHERE reliably_improved) AS goals_reliably_improved,
    count(*) FILTER (WHERE reliably_improved)
        / nullif(count(*) FILTER (WHERE paired), 0) AS share_reliably_improved,

    count(*) FILTER (WHERE horizon = 'short_term') AS short_term_goals,
    count(*) FILTER (WHERE horizon = 'short_term' AND paired) AS short_term_paired,
    avg(change) FILTER (WHERE horizon = 'short_term') AS short_term_mean_change,
    count(*) FILTER (WHERE horizon = 'short_term' AND reliably_improved)
        AS short_term_reliably_improved,
    count(*) FILTER (WHERE horizon = 'short_term' AND reliably_improved)
        / nullif(count(*) FILTER (WHERE horizon = 'short_term' AND paired), 0)
        AS short_term_share_reliably_improved,

    count(*) FILTER (WHERE horizon = 'long_term') AS long_term_goals,
    count(*) FILTER (WHERE horizon = 'long_term' AND paired) AS long_term_paired,
    avg(change) FILTER (WHERE horizon = 'long_term') AS long_term_mean_change,
    count(*) FILTER (WHERE horizon = 'long_term' AND reliably_improved)
        AS long_term_reliably_improved,
    count(*) FILTER (WHERE horizon = 'long_term' AND reliably_improved)
        / nullif(count(*) FILTER (WHERE horizon = 'long_term' AND paired), 0)
        AS long_term_share_reliably_improved
FROM marts.goal_progress
GROUP BY episode_id
ORDER BY episode_id
