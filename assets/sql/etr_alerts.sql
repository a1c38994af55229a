-- marts.etr_alerts: not_on_track alerts (METRICS.md "Alerts" and "Expected
-- treatment response"), unioned into marts.alerts by assets/core_marts.py.
--
-- One alert per episode and symptom instrument, raised at the first off-track
-- administration of marts.expected_trajectory (score_ordinal order). The
-- warehouse has no event that closes an alert, so "at most one open alert per
-- episode and instrument" is kept as "one alert per episode and instrument",
-- like reliable_deterioration. Columns: the marts.alerts contract columns in
-- core_marts.ALERT_COLUMNS order, then extras (session_number, method,
-- severity_band) that the backtest and reports use.

WITH cfg AS (
    SELECT * FROM marts.etr_settings
),

first_off_track AS (
    SELECT t.*, i.higher_is_worse, i.cutoff, i.rc_threshold, i.rc_strict
    FROM marts.expected_trajectory AS t
    JOIN staging.instruments AS i ON i.code = t.instrument
    WHERE t.off_track
    QUALIFY row_number() OVER (
        PARTITION BY t.episode_id, t.instrument ORDER BY t.score_ordinal) = 1
)

SELECT
    'not_on_track'                  AS alert_type,
    f.episode_id,
    f.client_id,
    f.clinician_id,
    f.administered_at               AS raised_at,
    f.assessment_id,
    f.instrument,
    CASE
        WHEN f.method = 'fallback_rule' THEN
            format('{} {:g} at session {}: fewer than {} reference episodes, so the rule '
                   || '"no reliable improvement by session {} while at caseness" applies: '
                   || 'baseline {:g}, improvement {:g} (reliable change {} {:g}), '
                   || 'caseness {} {:g}',
                   f.instrument, f.total, f.session_number, cfg.min_reference,
                   cfg.fallback_session, f.baseline_score, f.improvement,
                   CASE WHEN f.rc_strict THEN '>' ELSE '>=' END, f.rc_threshold,
                   CASE WHEN f.higher_is_worse THEN '>=' ELSE '<' END, f.cutoff)
        ELSE
            format('{} {:g} at session {}: worse than the {:g}th percentile ({:.4g}) of {} '
                   || 'reference episodes ({}); expected {:.4g}',
                   f.instrument, f.total, f.session_number,
                   CASE WHEN f.higher_is_worse THEN f.tolerance_percentile
                        ELSE 100 - f.tolerance_percentile END,
                   f.tolerance_bound, f.reference_n,
                   CASE WHEN f.method = 'percentile' THEN f.severity_band || ' baseline band'
                        ELSE 'all baseline bands: the ' || f.severity_band
                             || ' band had too few' END,
                   f.expected_score)
    END                             AS detail,
    -- extras
    f.session_number,
    f.method,
    f.severity_band
FROM first_off_track AS f
CROSS JOIN cfg
ORDER BY raised_at, episode_id, instrument
