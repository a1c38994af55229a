-- Input of marts.alliance_outcome: one row per episode and symptom instrument
-- with an early alliance (marts.episode_alliance.early_srs) and paired scores.
-- improvement = baseline - final for higher-is-worse instruments, final -
-- baseline otherwise (METRICS.md), so positive is better on every instrument
-- and a positive r means "better early alliance, more improvement".

SELECT
    o.instrument,
    a.episode_id,
    a.client_id,
    a.early_srs,
    CASE WHEN i.higher_is_worse THEN -o.change ELSE o.change END AS improvement
FROM marts.episode_alliance AS a
JOIN marts.episode_outcomes AS o
    ON o.episode_id = a.episode_id
JOIN staging.instruments AS i
    ON i.code = o.instrument AND i.construct = 'symptom'
WHERE o.paired
  AND a.early_srs IS NOT NULL
  AND o.change IS NOT NULL
ORDER BY o.instrument, a.episode_id
