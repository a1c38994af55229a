-- marts.alliance_monthly: alliance administrations per calendar month, by
-- clinician within clinic (level = 'clinician') and by clinic (level = 'clinic',
-- clinician_id NULL). Distinct clients are counted per row, so clinic rows are
-- not sums of clinician rows; reports use `clients` for small-cell suppression.
-- The clinician is the episode's primary clinician (as for alerts, edge rule 11).
-- One row per instrument (SRS, WAI-SR); low-alliance counts are NULL for an
-- instrument without a cutoff.

WITH monthly AS (
    SELECT
        *,
        CAST(date_trunc('month', administered_at) AS DATE) AS month
    FROM marts.session_alliance
)

SELECT
    CASE WHEN grouping(clinician_id) = 1 THEN 'clinic' ELSE 'clinician' END AS level,
    clinic_id,
    clinician_id,
    month,
    instrument,
    count(*) AS administrations,
    count(DISTINCT client_id) AS clients,
    count(DISTINCT episode_id) AS episodes,
    avg(total) AS mean_total,
    avg(mean_item_score) AS mean_item_score,
    min(total) AS min_total,
    CASE WHEN count(low_alliance) > 0
        THEN count(*) FILTER (WHERE low_alliance) END AS low_alliance_administrations,
    CASE WHEN count(low_alliance) > 0
        THEN count(*) FILTER (WHERE low_alliance) / count(low_alliance) END AS low_alliance_share,
    CASE WHEN count(possible_rupture) > 0
        THEN count(*) FILTER (WHERE possible_rupture) END AS possible_ruptures
FROM monthly
GROUP BY GROUPING SETS (
    (clinic_id, clinician_id, month, instrument),
    (clinic_id, month, instrument)
)
ORDER BY clinic_id, month, instrument, level, clinician_id
