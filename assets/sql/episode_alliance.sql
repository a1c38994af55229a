-- marts.episode_alliance: one row per episode with at least one alliance
-- administration (SRS or WAI-SR). METRICS.md "Alliance".
--
-- Parameters:
--   $srs      code of the session rating scale (SRS)
--   $wai      code of the Working Alliance Inventory short form (WAI-SR)
--   $early_n  settings.early_alliance_sessions: early alliance = mean of the
--             first $early_n SRS of the episode (fewer when fewer exist;
--             early_srs_n says how many were averaged)
--
-- Reads marts.session_alliance, where each rupture already carries
-- rupture_recovered (next SRS back to at least the pre-drop score).

WITH srs AS (
    SELECT
        episode_id,
        count(*) AS rated_sessions,
        max(total) FILTER (WHERE administration_number = 1) AS first_srs,
        avg(total) FILTER (WHERE administration_number <= $early_n) AS early_srs,
        count(*) FILTER (WHERE administration_number <= $early_n) AS early_srs_n,
        avg(total) AS mean_srs,
        min(total) AS min_srs,
        arg_max(total, administration_number) AS last_srs,
        count(*) FILTER (WHERE low_alliance) AS low_alliance_sessions,
        count(*) FILTER (WHERE possible_rupture) AS ruptures,
        count(*) FILTER (WHERE rupture_recovered) AS ruptures_recovered,
        count(*) FILTER (WHERE NOT rupture_recovered) AS ruptures_not_recovered,
        count(*) FILTER (WHERE possible_rupture AND rupture_recovered IS NULL) AS ruptures_pending
    FROM marts.session_alliance
    WHERE instrument = $srs
    GROUP BY episode_id
),

wai AS (
    SELECT
        episode_id,
        count(*) AS wai_sr_administrations,
        max(total) FILTER (WHERE administration_number = 1) AS first_wai_sr,
        arg_max(total, administration_number) AS last_wai_sr,
        max(mean_item_score) FILTER (WHERE administration_number = 1) AS first_wai_sr_item_mean,
        arg_max(mean_item_score, administration_number) AS last_wai_sr_item_mean
    FROM marts.session_alliance
    WHERE instrument = $wai
    GROUP BY episode_id
)

SELECT
    e.episode_id,
    e.client_id,
    e.clinic_id,
    e.clinician_id,
    coalesce(srs.rated_sessions, 0) AS rated_sessions,
    srs.first_srs,
    srs.early_srs,
    coalesce(srs.early_srs_n, 0) AS early_srs_n,
    -- early alliance band against the registry's SRS cutoff (36): low below it
    CASE
        WHEN srs.early_srs IS NULL OR c.cutoff IS NULL THEN NULL
        WHEN round(srs.early_srs, 6) < c.cutoff THEN 'low'
        ELSE 'adequate'
    END AS early_alliance_band,
    CASE
        WHEN srs.early_srs IS NULL OR c.cutoff IS NULL THEN NULL
        WHEN round(srs.early_srs, 6) < c.cutoff THEN 1
        ELSE 2
    END AS early_alliance_band_order,
    srs.mean_srs,
    srs.min_srs,
    srs.last_srs,
    coalesce(srs.low_alliance_sessions, 0) AS low_alliance_sessions,
    coalesce(srs.ruptures, 0) AS ruptures,
    coalesce(srs.ruptures_recovered, 0) AS ruptures_recovered,
    coalesce(srs.ruptures_not_recovered, 0) AS ruptures_not_recovered,
    coalesce(srs.ruptures_pending, 0) AS ruptures_pending,
    coalesce(wai.wai_sr_administrations, 0) AS wai_sr_administrations,
    wai.first_wai_sr,
    wai.last_wai_sr,
    wai.first_wai_sr_item_mean,
    wai.last_wai_sr_item_mean
FROM staging.episodes AS e
LEFT JOIN srs ON srs.episode_id = e.episode_id
LEFT JOIN wai ON wai.episode_id = e.episode_id
CROSS JOIN (SELECT max(cutoff) AS cutoff FROM staging.instruments WHERE code = $srs) AS c
WHERE srs.episode_id IS NOT NULL OR wai.episode_id IS NOT NULL
ORDER BY e.episode_id
