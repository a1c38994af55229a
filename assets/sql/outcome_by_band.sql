-- Symptom outcome rates by an episode-level band: marts.alliance_outcome_bands
-- (early-alliance band) and marts.practice_outcome (practice-share band).
--
-- Reads the temporary view episode_band(episode_id, band, band_order) that the
-- calling asset defines from its own mart, joined to marts.episode_outcomes.
-- One row per symptom instrument and band, over episodes with paired scores.
-- Every rate keeps its numerator (_num) and denominator (_den):
--   reliably improved / deteriorated: over paired episodes (outcome_class);
--   recovered / reliably recovered: over paired episodes that started at
--   caseness (where episode_outcomes.recovered is not NULL).

WITH joined AS (
    SELECT
        o.instrument,
        b.band,
        b.band_order,
        o.episode_id,
        e.client_id,
        o.outcome_class,
        o.recovered,
        o.reliably_recovered,
        CASE WHEN i.higher_is_worse THEN -o.change ELSE o.change END AS improvement
    FROM episode_band AS b
    JOIN marts.episode_outcomes AS o
        ON o.episode_id = b.episode_id
    JOIN staging.instruments AS i
        ON i.code = o.instrument AND i.construct = 'symptom'
    JOIN staging.episodes AS e
        ON e.episode_id = b.episode_id
    WHERE o.paired AND b.band IS NOT NULL
),

counts AS (
    SELECT
        instrument,
        band,
        band_order,
        count(*) AS episodes,
        count(DISTINCT client_id) AS clients,
        avg(improvement) AS mean_improvement,
        count(*) FILTER (WHERE outcome_class = 'reliably_improved') AS reliably_improved_num,
        count(*) AS reliably_improved_den,
        count(*) FILTER (WHERE outcome_class = 'reliably_deteriorated') AS reliably_deteriorated_num,
        count(*) AS reliably_deteriorated_den,
        count(*) FILTER (WHERE recovered) AS recovered_num,
        count(recovered) AS recovered_den,
        count(*) FILTER (WHERE reliably_recovered) AS reliably_recovered_num,
        count(reliably_recovered) AS reliably_recovered_den
    FROM joined
    GROUP BY instrument, band, band_order
)

SELECT
    instrument,
    band,
    band_order,
    episodes,
    clients,
    mean_improvement,
    reliably_improved_num,
    reliably_improved_den,
    reliably_improved_num / nullif(reliably_improved_den, 0) AS reliably_improved_rate,
    reliably_deteriorated_num,
    reliably_deteriorated_den,
    reliably_deteriorated_num / nullif(reliably_deteriorated_den, 0) AS reliably_deteriorated_rate,
    recovered_num,
    recovered_den,
    recovered_num / nullif(recovered_den, 0) AS recovered_rate,
    reliably_recovered_num,
    reliably_recovered_den,
    reliably_recovered_num / nullif(reliably_recovered_den, 0) AS reliably_recovered_rate
FROM counts
ORDER BY instrument, band_order
