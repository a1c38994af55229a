-- marts.alerts: one row per alert (METRICS.md "Alerts"; CONTRACT.md edge rules 6 and 11).
--
-- Every alert carries the episode's primary clinician (episodes.clinician_id)
-- and pseudonymous ids only. Columns, in this order, for every source:
--   alert_type, episode_id, client_id, clinician_id, raised_at, assessment_id,
--   instrument, detail
-- Thresholds come from the registry (staging.instruments): risk_item /
-- risk_threshold, rc_threshold / rc_strict, cutoff. The not_on_track source is
-- built elsewhere (expected treatment response) and unioned by assets/core_marts.py.

WITH run AS (
    SELECT as_of FROM staging.run_info
),

-- risk_item (edge rule 6): one alert per administration whose risk item has a
-- response at or above the threshold, including administrations quarantined as
-- too_many_missing_items (staging.risk_responses.staged = false).
risk_item AS (
    SELECT
        'risk_item'                 AS alert_type,
        r.episode_id,
        r.client_id,
        e.clinician_id,
        r.administered_at           AS raised_at,
        r.assessment_id,
        r.instrument,
        format('{} item {} = {:g} (threshold {:g}){}',
               r.instrument, r.item, max(r.score), any_value(i.risk_threshold),
               CASE WHEN bool_and(r.staged) THEN ''
                    ELSE '; administration quarantined (too many missing items), not scored' END)
                                    AS detail
    FROM staging.risk_responses AS r
    JOIN staging.instruments AS i
        ON i.code = r.instrument AND r.item = i.risk_item
    LEFT JOIN staging.episodes AS e USING (episode_id)
    WHERE r.score >= i.risk_threshold
    GROUP BY r.episode_id, r.client_id, e.clinician_id, r.administered_at,
             r.assessment_id, r.instrument, r.item
),

-- reliable_deterioration: the first administration of an episode and symptom
-- instrument that is worse than the baseline (score_ordinal 1) by at least the
-- reliable change (strictly more when the threshold is Jacobson & Truax-derived).
vs_baseline AS (
    SELECT
        s.*,
        i.rc_threshold,
        i.rc_strict,
        b.total AS baseline_score,
        round(CASE WHEN i.higher_is_worse THEN s.total - b.total
                   ELSE b.total - s.total END, 6) AS worsening
    FROM marts.scores AS s
    JOIN staging.instruments AS i ON i.code = s.instrument
    JOIN marts.scores AS b
        ON b.episode_id = s.episode_id AND b.instrument = s.instrument AND b.score_ordinal = 1
    WHERE i.construct = 'symptom' AND s.score_ordinal > 1
),

reliable_deterioration AS (
    SELECT
        'reliable_deterioration'    AS alert_type,
        episode_id,
        client_id,
        clinician_id,
        administered_at             AS raised_at,
        assessment_id,
        instrument,
        format('{} {:g} vs baseline {:g}: worse by {:g} (reliable change {} {:g})',
               instrument, total, baseline_score, worsening,
               CASE WHEN rc_strict THEN '>' ELSE '>=' END, rc_threshold)
                                    AS detail
    FROM vs_baseline
    WHERE CASE WHEN rc_strict THEN worsening > rc_threshold
               ELSE worsening >= rc_threshold END
    QUALIFY row_number() OVER (
        PARTITION BY episode_id, instrument ORDER BY score_ordinal) = 1
),

-- low_alliance: an alliance administration below its cutoff (SRS < 36 by
-- default); one alert per administration.
low_alliance AS (
    SELECT
        'low_alliance'              AS alert_type,
        s.episode_id,
        s.client_id,
        s.clinician_id,
        s.administered_at           AS raised_at,
        s.assessment_id,
        s.instrument,
        format('{} {:g} (below {:g})', s.instrument, s.total, i.cutoff) AS detail
    FROM marts.scores AS s
    JOIN staging.instruments AS i ON i.code = s.instrument
    WHERE i.construct = 'alliance'
      AND i.cutoff IS NOT NULL
      AND CASE WHEN i.higher_is_worse THEN round(s.total, 6) >= i.cutoff
               ELSE round(s.total, 6) < i.cutoff END
),

-- disengaged: one per episode with that status; raised at as-of 00:00 (edge rule 11).
disengaged AS (
    SELECT
        'disengaged'                AS alert_type,
        a.episode_id,
        a.client_id,
        a.clinician_id,
        CAST(run.as_of AS TIMESTAMP) AS raised_at,
        CAST(NULL AS VARCHAR)       AS assessment_id,
        CAST(NULL AS VARCHAR)       AS instrument,
        format('no attended session for {} days ({}) and none scheduled after {}',
               a.days_inactive,
               CASE WHEN a.last_attended_at IS NULL THEN 'none attended since the start'
                    ELSE 'last attended ' || CAST(CAST(a.last_attended_at AS DATE) AS VARCHAR) END,
               CAST(run.as_of AS VARCHAR)) AS detail
    FROM marts.episode_attendance AS a, run
    WHERE a.status = 'disengaged'
)

SELECT * FROM risk_item
UNION ALL
SELECT * FROM reliable_deterioration
UNION ALL
SELECT * FROM low_alliance
UNION ALL
SELECT * FROM disengaged
