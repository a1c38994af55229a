-- marts.clinic_kpis, pre-post effect size per symptom instrument.
-- Finished episodes with paired scores on the instrument:
--   d = mean(improvement) / SD(baseline)            (improvement: positive = better;
--                                                    SD: sample SD, n - 1)
--   Var(d) = 2 (1 - r) / n + d^2 / (2 n)            (Becker 1988 large-sample variance of a
--                                                    standardized mean change; r = Pearson
--                                                    correlation of baseline and final scores)
--   95% CI = d -/+ $z * sqrt(Var(d))
-- numerator = mean improvement, denominator = SD of baseline, so value = numerator / denominator.
-- The depression instrument carries the Minami et al. (2008) benchmark.
WITH paired AS (
    SELECT o.instrument, k.ended_month AS unit_month, k.clinic_id AS unit_clinic,
           k.client_id, k.episode_id, o.baseline_score, o.final_score, o.improvement
    FROM marts.episode_outcomes o
    JOIN marts.clinic_kpis_episodes k ON k.episode_id = o.episode_id
    WHERE k.finished AND o.paired
),
cells AS (
    SELECT CASE WHEN grouping(unit_month) = 0 THEN 'month' ELSE 'all' END AS period_type,
           unit_month AS period_start,
           CASE WHEN grouping(unit_clinic) = 0 THEN unit_clinic ELSE $service_key END AS clinic_id,
           instrument,
           count(*) AS n,
           count(DISTINCT client_id) AS n_clients,
           avg(improvement) AS mean_improvement,
           stddev_samp(baseline_score) AS sd_baseline,
           CASE WHEN var_samp(baseline_score) > 0 AND var_samp(final_score) > 0
                THEN corr(baseline_score, final_score) END AS r
    FROM paired
    GROUP BY GROUPING SETS ((instrument, unit_month, unit_clinic), (instrument, unit_month),
                            (instrument, unit_clinic), (instrument))
),
with_d AS (
    SELECT *, CASE WHEN sd_baseline > 0 THEN mean_improvement / sd_baseline END AS d
    FROM cells
),
with_se AS (
    SELECT *, sqrt(2 * (1 - r) / n + d * d / (2 * n)) AS se_d
    FROM with_d
)
SELECT period_type, period_start, clinic_id,
       'effect_size_d' AS kpi,
       instrument,
       mean_improvement AS numerator,
       sd_baseline AS denominator,
       d AS value,
       n_clients,
       n AS n_episodes,
       d - $z * se_d AS ci_low,
       d + $z * se_d AS ci_high,
       CASE WHEN instrument = $depression_instrument THEN $benchmark_d END AS benchmark,
       CASE WHEN instrument = $depression_instrument THEN $benchmark_source END AS benchmark_source
FROM with_se
