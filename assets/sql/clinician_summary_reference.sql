-- Reference sample of the severity-adjusted effect size (ACORN style) behind
-- marts.clinician_adjusted_outcomes: finished episodes with paired scores whose
-- baseline was at caseness (clinical range), per symptom instrument, with the
-- episode's primary clinician. improvement is direction-adjusted (positive = better).
SELECT o.instrument, k.clinic_id, k.clinician_id, k.client_id, k.episode_id,
       o.baseline_score, o.final_score, o.improvement
FROM marts.episode_outcomes o
JOIN marts.clinic_kpis_episodes k ON k.episode_id = o.episode_id
WHERE k.finished AND o.paired AND o.baseline_caseness
ORDER BY o.instrument, k.clinic_id, k.clinician_id, k.episode_id
