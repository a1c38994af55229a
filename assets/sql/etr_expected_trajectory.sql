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
--                       computed once per (month, instrument, band, session),
--                       from value counts: how many reference episodes that
--                       ended in each earlier month had each value (memory
--                       bounded by the values a score can take, not by the
--                       episodes); the same numbers as quantile_cont.
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
-- Tunables (Settings) come from marts.etr_settings (the band's quantile
-- fractions also as the session variables etr_q_lower / etr_q_upper, set by
-- assets/etr.py), thresholds from staging.instruments.
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

-- Symptom scores with their episode's end and status.
in_scope AS (
    SELECT
        s.assessment_id,
        s.episode_id,
        s.client_id,
        s.instrument,
        s.administered_at,
        s.session_number,
        round(s.total, 6) AS total,
        ep.clinician_id,
        ep.end_date,
        ep.status,
        CAST(s.administered_at AS DATE) <= coalesce(ep.end_date, run.as_of) AS in_episode
    FROM marts.scores AS s
    JOIN symptom USING (instrument)
    LEFT JOIN episodes AS ep USING (episode_id)
    CROSS JOIN run
),

-- Scores in the METRICS.md order (administered_at, then assessment_id), in one
-- window pass (one sort of every symptom score).
ordered AS (
    SELECT
        *,
        CAST(row_number() OVER w AS INTEGER) AS score_ordinal,
        first_value(total) OVER w AS baseline_score,
        -- scores dated within the episode: a reference episode must be paired
        sum(CAST(in_episode AS INTEGER)) OVER (PARTITION BY episode_id, instrument)
            AS n_in_episode
    FROM in_scope
    WINDOW w AS (
        PARTITION BY episode_id, instrument
        ORDER BY administered_at, assessment_id
        ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),

banded AS (
    SELECT
        o.*,
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

-- The time split of the reference without copying it for every month: how many
-- reference episodes had each value, per instrument, band, session number and
-- month of their end. Its size is bounded by the distinct values a score can
-- take, not by the number of episodes.
reference_hist AS (
    SELECT
        instrument,
        severity_band,
        session_number,
        CAST(date_trunc('month', end_date) AS DATE) AS end_month,
        ref_value,
        count(*) AS k
    FROM reference_rows
    GROUP BY ALL
),

-- Per (month, instrument, band, session) and per (month, instrument, session)
-- over all bands (band '*'): the reference distribution of that month, as value
-- counts of the episodes that ended before the month began. A NULL value (no
-- total) counts towards n but is not a percentile input, as in quantile_cont.
cell_hist AS (
    SELECT
        m.instrument,
        m.reference_month,
        CASE WHEN grouping(h.severity_band) = 1 THEN '*' ELSE h.severity_band END AS band,
        h.session_number,
        h.ref_value,
        sum(h.k) AS k
    FROM months AS m
    JOIN reference_hist AS h
        ON h.instrument = m.instrument AND h.end_month < m.reference_month
    GROUP BY GROUPING SETS (
        (m.instrument, m.reference_month, h.severity_band, h.session_number, h.ref_value),
        (m.instrument, m.reference_month, h.session_number, h.ref_value))
),

-- Each value's 0-based positions [first_pos, next_pos) among the sorted values.
cell_ranks AS (
    SELECT
        *,
        sum(k) OVER cell AS next_pos,
        sum(k) OVER cell - k AS first_pos
    FROM cell_hist
    WHERE ref_value IS NOT NULL
    WINDOW cell AS (
        PARTITION BY instrument, reference_month, band, session_number
        ORDER BY ref_value ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
),

cell_n AS (
    SELECT
        instrument, reference_month, band, session_number,
        CAST(sum(k) AS INTEGER) AS n,
        coalesce(sum(k) FILTER (WHERE ref_value IS NOT NULL), 0) AS n_values
    FROM cell_hist
    GROUP BY ALL
),

-- The [lower bound, median, upper bound] fractions at the positions
-- quantile_cont uses: rn = (n_values - 1) * q, between the values at floor(rn)
-- and ceil(rn). The fractions come from the session variables etr_q_lower /
-- etr_q_upper, set by assets/etr.py from marts.etr_settings.
positions AS (
    SELECT
        c.instrument, c.reference_month, c.band, c.session_number,
        f.i,
        CAST(c.n_values - 1 AS DOUBLE) * f.q AS rn,
        floor(CAST(c.n_values - 1 AS DOUBLE) * f.q) AS frn,
        ceil(CAST(c.n_values - 1 AS DOUBLE) * f.q) AS crn
    FROM cell_n AS c
    CROSS JOIN (VALUES (1, getvariable('etr_q_lower')), (2, 0.5),
                       (3, getvariable('etr_q_upper'))) AS f(i, q)
    WHERE c.n_values > 0
),

-- Linear interpolation as quantile_cont does it: lo * (1 - d) + hi * d.
quantiles AS (
    SELECT
        p.instrument, p.reference_month, p.band, p.session_number, p.i,
        any_value(r.ref_value) FILTER (WHERE r.first_pos <= p.frn AND p.frn < r.next_pos)
            AS lo,
        any_value(r.ref_value) FILTER (WHERE r.first_pos <= p.crn AND p.crn < r.next_pos)
            AS hi,
        any_value(p.rn - p.frn) AS d
    FROM positions AS p
    JOIN cell_ranks AS r
        ON r.instrument = p.instrument AND r.reference_month = p.reference_month
       AND r.band = p.band AND r.session_number = p.session_number
       AND r.first_pos <= p.crn AND p.frn < r.next_pos
    GROUP BY ALL
),

cells AS (
    SELECT
        c.instrument,
        c.reference_month,
        CASE WHEN c.band <> '*' THEN c.band END AS severity_band,
        c.session_number,
        c.band = '*' AS coarse,
        c.n,
        -- [lower bound, median, upper bound]; NULL when every value is NULL
        CASE WHEN c.n_values > 0 THEN
            list(CASE WHEN q.d = 0 THEN q.lo ELSE q.lo * (1 - q.d) + q.hi * q.d END
                 ORDER BY q.i)
        END AS q
    FROM cell_n AS c
    LEFT JOIN quantiles AS q
        ON q.instrument = c.instrument AND q.reference_month = c.reference_month
       AND q.band = c.band AND q.session_number = c.session_number
    GROUP BY c.instrument, c.reference_month, c.band, c.session_number, c.n, c.n_values
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
