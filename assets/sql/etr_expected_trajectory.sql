-- marts.expected_trajectory: the expected treatment response (ETR) of every
-- symptom administration after the baseline (METRICS.md "Expected treatment
-- response"; method and its reasons in docs/decisions/005-etr-method.md).
--
-- One row per evaluated administration: every symptom score after the
-- episode's first (score_ordinal > 1) dated on or before the episode's end
-- (end_date, else as-of). Each is compared with the clinic's own reference:
--
--   reference episodes  status 'completed' (marts.episode_attendance) and at
--                       least 2 scores of the instrument dated on or before
--                       their end_date; each contributes, per session number,
--                       the value of its last administration at that session.
--   severity band       from the episode's baseline score and the registry:
--                       subclinical = not at caseness; severe = at caseness and
--                       at least one reliable change beyond the cutoff
--                       (>= cutoff + rc, or < cutoff - rc for higher-better);
--                       moderate = at caseness, nearer the cutoff.
--   NO LEAKAGE          the reference of an administration in calendar month M
--                       holds only episodes that ended before the first day of
--                       M, and only their scores dated on or before their end.
--                       An evaluated administration is dated on or before its
--                       own episode's end, so its episode ended on or after M
--                       and is never in its own reference. Percentiles are
--                       computed once per (month, instrument, band, session).
--   cells               band cell (instrument, band, session_number); when it
--                       holds fewer than min_reference episodes the coarse cell
--                       (all bands of the instrument); when that is thin too,
--                       the fallback rule.
--   off_track           percentile / coarse: the score is worse than the
--                       tolerance bound (strictly above the upper quantile for
--                       higher-is-worse, strictly below the lower quantile for
--                       higher-is-better). fallback_rule: session_number >=
--                       fallback_session, not reliably improved against the
--                       baseline and still at caseness.
--
-- basis 'change' (default): reference values are score - baseline, and the
-- percentiles are placed on the episode's own baseline (expected = baseline +
-- median change), as Lambert's curves are conditional on the intake score.
-- basis 'score': reference values are the band's scores themselves.
-- Tunables (Settings) come from marts.etr_settings (the quantile fractions
-- also as the session variables etr_q_lower / etr_q_upper, because
-- quantile_cont takes constants only), thresholds from staging.instruments.
-- Totals are compared after rounding to 6 decimals.

WITH run AS (
    SELECT as_of FROM staging.run_info
),

cfg AS (
    SELECT * FROM marts.etr_settings
),

symptom AS (
    SELECT code AS instrument, higher_is_worse, cutoff, rc_threshold, rc_strict
    FROM staging.instruments
    WHERE construct = 'symptom'
),

episodes AS (
    SELECT e.episode_id, e.clinician_id, e.end_date, a.status
    FROM staging.episodes AS e
    LEFT JOIN marts.episode_attendance AS a USING (episode_id)
),

-- Scores in the METRICS.md order (administered_at, then assessment_id).
ordered AS (
    SELECT
        s.assessment_id,
        s.episode_id,
        s.client_id,
        s.instrument,
        s.administered_at,
        s.session_number,
        round(s.total, 6) AS total,
        CAST(row_number() OVER w AS INTEGER) AS score_ordinal,
        round(first_value(s.total) OVER w, 6) AS baseline_score,
        ep.clinician_id,
        ep.end_date,
        ep.status,
        CAST(s.administered_at AS DATE) <= coalesce(ep.end_date, run.as_of) AS in_episode
    FROM marts.scores AS s
    JOIN symptom USING (instrument)
    LEFT JOIN episodes AS ep USING (episode_id)
    CROSS JOIN run
    WINDOW w AS (
        PARTITION BY s.episode_id, s.instrument
        ORDER BY s.administered_at, s.assessment_id
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),

banded AS (
    SELECT
        o.*,
        -- scores dated within the episode: a reference episode must be paired
        sum(CAST(o.in_episode AS INTEGER)) OVER (PARTITION BY o.episode_id, o.instrument)
            AS n_in_episode,
        sy.higher_is_worse,
        sy.cutoff,
        sy.rc_threshold,
        sy.rc_strict,
        CASE
            WHEN sy.cutoff IS NULL THEN 'all'
            WHEN sy.higher_is_worse AND o.baseline_score < sy.cutoff THEN 'subclinical'
            WHEN NOT sy.higher_is_worse AND o.baseline_score >= sy.cutoff THEN 'subclinical'
            WHEN sy.rc_threshold IS NULL THEN 'moderate'
            WHEN sy.higher_is_worse AND o.baseline_score >= sy.cutoff + sy.rc_threshold
                THEN 'severe'
            WHEN NOT sy.higher_is_worse AND o.baseline_score < sy.cutoff - sy.rc_threshold
                THEN 'severe'
            ELSE 'moderate'
        END AS severity_band,
        -- the value the reference distribution is built from
        CASE WHEN cfg.basis = 'change' THEN o.total - o.baseline_score ELSE o.total END
            AS ref_value,
        CASE WHEN cfg.basis = 'change' THEN o.baseline_score ELSE 0 END AS ref_offset
    FROM ordered AS o
    JOIN symptom AS sy USING (instrument)
    CROSS JOIN cfg
),

-- One value per reference episode, instrument and session number.
reference_rows AS (
    SELECT
        episode_id,
        instrument,
        severity_band,
        session_number,
        any_value(end_date) AS end_date,
        arg_max(ref_value, score_ordinal) AS ref_value
    FROM banded
    WHERE status = 'completed'
      AND end_date IS NOT NULL
      AND in_episode
      AND n_in_episode >= 2
    GROUP BY episode_id, instrument, severity_band, session_number
),

evaluated AS (
    SELECT
        *,
        CAST(date_trunc('month', administered_at) AS DATE) AS reference_month
    FROM banded
    WHERE score_ordinal > 1 AND in_episode
),

months AS (
    SELECT DISTINCT instrument, reference_month FROM evaluated
),

-- Percentiles once per (month, instrument, band, session) and per (month,
-- instrument, session) over all bands: the time split of the reference.
cells AS (
    SELECT
        m.instrument,
        m.reference_month,
        r.severity_band,
        r.session_number,
        grouping(r.severity_band) = 1 AS coarse,
        CAST(count(*) AS INTEGER) AS n,
        -- [lower bound, median, upper bound]; DuckDB needs constant fractions here,
        -- so they come as session variables (set by assets/etr.py from marts.etr_settings)
        quantile_cont(r.ref_value,
                      [getvariable('etr_q_lower'), 0.5, getvariable('etr_q_upper')]) AS q
    FROM months AS m
    JOIN reference_rows AS r
        ON r.instrument = m.instrument AND r.end_date < m.reference_month
    GROUP BY GROUPING SETS (
        (m.instrument, m.reference_month, r.severity_band, r.session_number),
        (m.instrument, m.reference_month, r.session_number))
),

matched AS (
    SELECT
        e.*,
        cfg.min_reference,
        cfg.fallback_session,
        cfg.tolerance_percentile,
        bc.n AS band_n,
        cc.n AS coarse_n,
        CASE
            WHEN bc.n >= cfg.min_reference THEN 'percentile'
            WHEN cc.n >= cfg.min_reference THEN 'coarse'
            ELSE 'fallback_rule'
        END AS method,
        CASE WHEN bc.n >= cfg.min_reference THEN bc.q
             WHEN cc.n >= cfg.min_reference THEN cc.q END AS q,
        -- improvement against the baseline, positive = better
        round(CASE WHEN e.higher_is_worse THEN e.baseline_score - e.total
                   ELSE e.total - e.baseline_score END, 6) AS improvement
    FROM evaluated AS e
    CROSS JOIN cfg
    LEFT JOIN cells AS bc
        ON NOT bc.coarse
       AND bc.instrument = e.instrument
       AND bc.reference_month = e.reference_month
       AND bc.severity_band = e.severity_band
       AND bc.session_number = e.session_number
    LEFT JOIN cells AS cc
        ON cc.coarse
       AND cc.instrument = e.instrument
       AND cc.reference_month = e.reference_month
       AND cc.session_number = e.session_number
),

judged AS (
    SELECT
        *,
        round(ref_offset + q[2], 6) AS expected_score,
        round(ref_offset + q[1], 6) AS tolerance_lower,
        round(ref_offset + q[3], 6) AS tolerance_upper,
        CASE WHEN higher_is_worse THEN total >= cutoff ELSE total < cutoff END AS at_caseness,
        CASE WHEN rc_strict THEN improvement > rc_threshold
             ELSE improvement >= rc_threshold END AS reliably_improved,
        CASE WHEN rc_strict THEN -improvement > rc_threshold
             ELSE -improvement >= rc_threshold END AS reliably_deteriorated
    FROM matched
)

SELECT
    assessment_id,
    episode_id,
    client_id,
    clinician_id,
    instrument,
    administered_at,
    session_number,
    score_ordinal,
    total,
    baseline_score,
    improvement,
    severity_band,
    method,
    CASE method WHEN 'percentile' THEN severity_band WHEN 'coarse' THEN 'all' END
        AS reference_band,
    CASE method WHEN 'percentile' THEN band_n ELSE coalesce(coarse_n, 0) END AS reference_n,
    reference_month,
    expected_score,
    tolerance_lower,
    tolerance_upper,
    tolerance_percentile,
    -- the side of the band that counts as "worse"
    CASE WHEN higher_is_worse THEN tolerance_upper ELSE tolerance_lower END AS tolerance_bound,
    at_caseness,
    reliably_improved,
    reliably_deteriorated,
    CASE
        WHEN method = 'fallback_rule' THEN
            coalesce(session_number >= fallback_session
                     AND at_caseness AND NOT reliably_improved, false)
        WHEN higher_is_worse THEN total > tolerance_upper
        ELSE total < tolerance_lower
    END AS off_track
FROM judged
ORDER BY episode_id, instrument, score_ordinal
