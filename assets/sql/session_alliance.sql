-- marts.session_alliance: one row per alliance administration (SRS, WAI-SR ...;
-- every registry instrument with construct 'alliance'). METRICS.md "Alliance".
--
-- Parameters:
--   $srs          code of the session-by-session alliance scale (SRS)
--   $drop_points  settings.alliance_drop_points: a fall of at least this many
--                 points from the previous SRS of the episode is a possible rupture
--
-- Ordering (METRICS.md): within an episode and instrument by administered_at,
-- ties broken by assessment_id. Differences are rounded to 6 decimals before
-- they meet a threshold, so 33.3 -> 28.3 counts as a drop of 5 (binary floating
-- point would make it 4.9999999999999964).

WITH alliance AS (
    SELECT
        s.assessment_id,
        s.episode_id,
        s.client_id,
        s.instrument,
        s.administered_at,
        s.total,
        s.items_answered,
        s.prorated,
        s.session_number,
        a.session_id,
        i.items,
        i.scoring,
        i.cutoff,
        i.higher_is_worse
    FROM marts.scores AS s
    JOIN staging.instruments AS i
        ON i.code = s.instrument AND i.construct = 'alliance'
    LEFT JOIN staging.assessments AS a
        ON a.assessment_id = s.assessment_id
),

ordered AS (
    SELECT
        *,
        row_number() OVER w AS administration_number,
        lag(total) OVER w AS previous_total,
        lead(total) OVER w AS next_total
    FROM alliance
    WINDOW w AS (PARTITION BY episode_id, instrument ORDER BY administered_at, assessment_id)
),

scored AS (
    SELECT
        *,
        -- positive = the alliance got worse since the previous administration
        round(
            CASE WHEN higher_is_worse THEN total - previous_total ELSE previous_total - total END,
            6
        ) AS drop_points
    FROM ordered
)

SELECT
    s.assessment_id,
    s.episode_id,
    s.client_id,
    e.clinic_id,
    e.clinician_id,
    s.session_id,
    s.session_number,
    s.instrument,
    s.administered_at,
    s.administration_number,
    s.total,
    s.items_answered,
    s.prorated,
    -- WAI-SR: 12..60 total as 1..5 mean item score (prorated totals give the mean of the answered items)
    CASE WHEN s.scoring = 'sum' THEN s.total / s.items ELSE s.total END AS mean_item_score,
    -- SRS < 36 (registry cutoff); NULL for instruments without a cutoff (WAI-SR)
    CASE
        WHEN s.cutoff IS NULL THEN NULL
        WHEN s.higher_is_worse THEN round(s.total, 6) >= s.cutoff
        ELSE round(s.total, 6) < s.cutoff
    END AS low_alliance,
    s.previous_total,
    s.drop_points,
    -- SRS only; false for the first SRS of the episode (nothing to drop from)
    CASE
        WHEN s.instrument <> $srs THEN NULL
        ELSE coalesce(s.drop_points >= $drop_points, false)
    END AS possible_rupture,
    s.next_total,
    -- recovered: the next SRS of the episode is back to at least the pre-drop score
    -- (previous_total); NULL when this is not a rupture or no later SRS exists yet
    CASE
        WHEN s.instrument = $srs AND s.drop_points >= $drop_points AND s.next_total IS NOT NULL
            THEN round(
                CASE WHEN s.higher_is_worse THEN s.previous_total - s.next_total
                     ELSE s.next_total - s.previous_total END,
                6
            ) >= 0
    END AS rupture_recovered
FROM scored AS s
JOIN staging.episodes AS e
    ON e.episode_id = s.episode_id
ORDER BY s.episode_id, s.instrument, s.administration_number
