-- marts.episode_outcomes: one row per (episode, symptom instrument) with at least
-- one score (METRICS.md "Symptom outcomes"; CONTRACT.md edge rules 7 and 8).
--
-- Thresholds come from the instrument registry (staging.instruments):
--   cutoff        caseness: total >= cutoff (higher_is_worse) or total < cutoff
--   rc_threshold  reliable change in points; rc_strict = true when it was derived
--                 Jacobson & Truax style (1.96 x S_diff): the improvement must be
--                 strictly greater; otherwise (points, NHS style) greater or equal.
-- Totals are compared after rounding to 6 decimals so that decimal item sums
-- (ORS/SRS lines, prorated totals) land exactly on a threshold when they should.
-- Baseline / final come from marts.scores.score_ordinal (administered_at, then
-- assessment_id).

WITH scores AS (
    SELECT
        s.*,
        i.higher_is_worse,
        i.cutoff,
        i.rc_threshold,
        i.rc_strict,
        i.s_diff,
        -- weeks since the first administration, from exact seconds (edge rule 8)
        (epoch(s.administered_at)
            - epoch(min(s.administered_at) OVER (PARTITION BY s.episode_id, s.instrument)))
            / 86400.0 / 7.0 AS weeks
    FROM marts.scores AS s
    JOIN staging.instruments AS i ON i.code = s.instrument
    WHERE i.construct = 'symptom'
),

per_pair AS (
    SELECT
        episode_id,
        instrument,
        any_value(client_id)                        AS client_id,
        any_value(clinic_id)                        AS clinic_id,
        any_value(clinician_id)                     AS clinician_id,
        any_value(higher_is_worse)                  AS higher_is_worse,
        any_value(cutoff)                           AS cutoff,
        any_value(rc_threshold)                     AS rc_threshold,
        any_value(rc_strict)                        AS rc_strict,
        any_value(s_diff)                           AS s_diff,
        CAST(count(*) AS INTEGER)                   AS n_scores,
        count(DISTINCT administered_at)             AS n_times,
        arg_min(total, score_ordinal)               AS baseline_score,
        arg_min(administered_at, score_ordinal)     AS baseline_at,
        arg_min(assessment_id, score_ordinal)       AS baseline_assessment_id,
        arg_max(total, score_ordinal)               AS last_score,
        arg_max(administered_at, score_ordinal)     AS last_at,
        arg_max(assessment_id, score_ordinal)       AS last_assessment_id,
        regr_slope(total, weeks)                    AS fitted_slope
    FROM scores
    GROUP BY episode_id, instrument
),

measured AS (
    SELECT
        *,
        n_scores >= 2 AS paired,
        CASE WHEN n_scores >= 2 THEN round(last_score - baseline_score, 6) END AS change,
        -- improvement: positive = better, whatever the instrument's direction
        CASE WHEN n_scores >= 2 THEN
            round(CASE WHEN higher_is_worse THEN baseline_score - last_score
                       ELSE last_score - baseline_score END, 6)
        END AS improvement,
        CASE WHEN higher_is_worse THEN round(baseline_score, 6) >= cutoff
             ELSE round(baseline_score, 6) < cutoff END AS baseline_caseness,
        CASE WHEN n_scores >= 2 THEN
            CASE WHEN higher_is_worse THEN round(last_score, 6) >= cutoff
                 ELSE round(last_score, 6) < cutoff END
        END AS final_caseness
    FROM per_pair
),

classified AS (
    SELECT
        *,
        CASE WHEN rc_strict THEN improvement > rc_threshold
             ELSE improvement >= rc_threshold END  AS reliably_improved,
        CASE WHEN rc_strict THEN -improvement > rc_threshold
             ELSE -improvement >= rc_threshold END AS reliably_deteriorated
    FROM measured
)

SELECT
    episode_id,
    instrument,
    n_scores,
    baseline_score,
    baseline_at,
    last_score                                            AS final_score,
    last_at                                               AS final_at,
    change,
    paired,
    baseline_caseness,
    final_caseness,
    CASE
        WHEN NOT paired THEN 'not_paired'
        WHEN reliably_improved THEN 'reliably_improved'
        WHEN reliably_deteriorated THEN 'reliably_deteriorated'
        WHEN rc_threshold IS NOT NULL THEN 'no_reliable_change'
        -- NULL: the instrument has no reliable-change threshold in the registry
    END                                                   AS outcome_class,
    CASE WHEN paired AND baseline_caseness THEN NOT final_caseness END AS recovered,
    CASE WHEN paired AND baseline_caseness
         THEN NOT final_caseness AND reliably_improved END AS reliably_recovered,
    CASE WHEN n_times >= 2 THEN fitted_slope END          AS slope_per_week,
    -- extras
    client_id,
    clinic_id,
    clinician_id,
    baseline_assessment_id,
    last_assessment_id                                    AS final_assessment_id,
    improvement,
    -- reliable change index, direction-adjusted (positive = better); only for
    -- instruments whose reliable change is derived from reliability and SD
    CASE WHEN paired AND s_diff > 0 THEN improvement / s_diff END AS rci,
    -- "harmed" (Jacobson & Truax): reliably deteriorated, crossing from
    -- functional at baseline to clinical at the end
    CASE WHEN paired THEN
        coalesce(reliably_deteriorated, false) AND NOT baseline_caseness AND final_caseness
    END                                                   AS harmed
FROM classified
ORDER BY episode_id, instrument
