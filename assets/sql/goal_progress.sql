-- marts.goal_progress: one row per goal of an episode. METRICS.md "Goals".
--
-- Goals come from staging.goals; their ratings are the items of GBO
-- administrations (item number = goal_number, CONTRACT.md assessment_items),
-- ordered by administered_at, ties by assessment_id. A goal rated but missing
-- from staging.goals is kept (in_goals = false, horizon NULL): GBO items are not
-- cross-checked against goals (edge rule 5). Totals-only GBO administrations
-- carry no per-goal ratings and do not appear here.
--
-- Parameters:
--   $gbo  code of the goal instrument (GBO); its reliable change (2.45 points)
--         comes from staging.instruments (rc_threshold, rc_strict).
-- change = last - first rating (higher is better), NULL with fewer than two
-- ratings; rounded to 6 decimals before it meets the threshold.

WITH ratings AS (
    SELECT
        a.episode_id,
        it.item AS goal_number,
        a.assessment_id,
        a.administered_at,
        it.keyed_score AS rating
    FROM staging.assessments AS a
    JOIN staging.assessment_items AS it
        ON it.assessment_id = a.assessment_id
    WHERE a.instrument = $gbo
),

ordered AS (
    SELECT
        *,
        row_number() OVER w AS k,
        count(*) OVER (PARTITION BY episode_id, goal_number) AS n
    FROM ratings
    WINDOW w AS (PARTITION BY episode_id, goal_number ORDER BY administered_at, assessment_id)
),

per_goal AS (
    SELECT
        episode_id,
        goal_number,
        max(n) AS n_ratings,
        max(rating) FILTER (WHERE k = 1) AS first_rating,
        max(administered_at) FILTER (WHERE k = 1) AS first_rated_at,
        max(rating) FILTER (WHERE k = n) AS last_rating,
        max(administered_at) FILTER (WHERE k = n) AS last_rated_at
    FROM ordered
    GROUP BY episode_id, goal_number
),

goals AS (
    SELECT
        coalesce(g.episode_id, r.episode_id) AS episode_id,
        coalesce(g.goal_number, r.goal_number) AS goal_number,
        g.episode_id IS NOT NULL AS in_goals,
        g.horizon,
        g.set_at,
        coalesce(r.n_ratings, 0) AS n_ratings,
        r.first_rating,
        r.first_rated_at,
        r.last_rating,
        r.last_rated_at,
        CASE WHEN r.n_ratings >= 2 THEN round(r.last_rating - r.first_rating, 6) END AS change
    FROM staging.goals AS g
    FULL OUTER JOIN per_goal AS r
        ON r.episode_id = g.episode_id AND r.goal_number = g.goal_number
),

rc AS (
    SELECT max(rc_threshold) AS rc_threshold, bool_or(rc_strict) AS rc_strict
    FROM staging.instruments
    WHERE code = $gbo
)

SELECT
    g.episode_id,
    e.client_id,
    e.clinic_id,
    e.clinician_id,
    g.goal_number,
    g.in_goals,
    g.horizon,
    g.set_at,
    g.n_ratings,
    g.first_rating,
    g.first_rated_at,
    g.last_rating,
    g.last_rated_at,
    g.change,
    g.change IS NOT NULL AS paired,
    CASE
        WHEN g.change IS NULL OR rc.rc_threshold IS NULL THEN NULL
        WHEN rc.rc_strict THEN g.change > rc.rc_threshold
        ELSE g.change >= rc.rc_threshold
    END AS reliably_improved,
    CASE
        WHEN g.change IS NULL OR rc.rc_threshold IS NULL THEN NULL
        WHEN rc.rc_strict THEN -g.change > rc.rc_threshold
        ELSE -g.change >= rc.rc_threshold
    END AS reliably_deteriorated
FROM goals AS g
JOIN staging.episodes AS e
    ON e.episode_id = g.episode_id
CROSS JOIN rc
ORDER BY g.episode_id, g.goal_number
