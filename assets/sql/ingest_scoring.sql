-- Scoring is part of validation (edge rule 4; METRICS.md "Scoring an administration").
-- An administration with staged items is scored from them: sum when complete,
-- mean(answered) x items when up to max_missing are missing (prorated), and
-- not scored (too_many_missing_items) beyond that; 'mean' instruments (GBO)
-- take the mean of the answered items with no missing-item rule. Without
-- items the supplied total_score is used, if present and within range.

-- Reverse keying: a reverse item counts as (item_min + item_max - response).
UPDATE _in_assessment_items AS i
SET keyed_score = CASE
        WHEN list_contains(string_split(coalesce(r.reverse_items, ''), ','), CAST(i.item AS VARCHAR))
            THEN r.item_min + r.item_max - i.score
        ELSE i.score
    END
FROM _in_assessments AS a
JOIN _instruments AS r ON r.code = a.instrument
WHERE i._rule IS NULL AND a._rule IS NULL AND a.assessment_id = i.assessment_id;

CREATE OR REPLACE TEMP TABLE _scored AS
SELECT a._rid,
       r.items, r.max_missing, r.scoring, r.total_min, r.total_max,
       coalesce(agg.answered, 0) AS answered, agg.keyed_sum, agg.keyed_mean,
       had.assessment_id IS NOT NULL AS had_item_rows,
       a.total_score
FROM _in_assessments AS a
JOIN _instruments AS r ON r.code = a.instrument
LEFT JOIN (
    SELECT assessment_id, count(*) AS answered, sum(keyed_score) AS keyed_sum,
           avg(keyed_score) AS keyed_mean
    FROM _in_assessment_items
    WHERE _rule IS NULL
    GROUP BY assessment_id
) AS agg ON agg.assessment_id = a.assessment_id
LEFT JOIN (
    SELECT DISTINCT raw_assessment_id AS assessment_id FROM _in_assessment_items
) AS had ON had.assessment_id = a.assessment_id
WHERE a._rule IS NULL;

UPDATE _in_assessments AS a
SET _rule = CASE
        WHEN s.max_missing IS NOT NULL AND (s.answered > 0 OR s.had_item_rows)
             AND s.items - s.answered > s.max_missing
            THEN 'too_many_missing_items'
        WHEN s.answered = 0 AND s.total_score IS NULL THEN 'no_score'
        WHEN s.answered = 0 AND (s.total_score < s.total_min OR s.total_score > s.total_max)
            THEN 'out_of_range'
    END,
    _detail = CASE
        WHEN s.max_missing IS NOT NULL AND (s.answered > 0 OR s.had_item_rows)
             AND s.items - s.answered > s.max_missing
            THEN (s.items - s.answered) || ' of ' || s.items || ' items missing; at most '
                 || s.max_missing || ' may be missing for ' || a.instrument
        WHEN s.answered = 0 AND s.total_score IS NULL
            THEN 'no item responses and no total_score'
        WHEN s.answered = 0 AND (s.total_score < s.total_min OR s.total_score > s.total_max)
            THEN 'total_score: ' || s.total_score || ' is outside ' || s.total_min || '..'
                 || s.total_max || ' for ' || a.instrument
    END,
    total = CASE
        WHEN s.answered = 0 THEN s.total_score
        WHEN s.scoring = 'mean' THEN s.keyed_mean
        WHEN s.answered = s.items THEN s.keyed_sum
        ELSE s.keyed_mean * s.items
    END,
    items_answered = CASE WHEN s.answered > 0 THEN s.answered END,
    prorated = s.answered > 0 AND s.scoring = 'sum' AND s.answered < s.items
FROM _scored AS s
WHERE a._rid = s._rid;

-- Risk items are a safety signal (edge rule 6): keep every valid risk-item
-- response, including those of administrations quarantined for missing items.
CREATE OR REPLACE TEMP TABLE _risk_responses AS
SELECT a.assessment_id, a.episode_id, a.client_id, a.instrument, a.administered_at,
       CAST(i.item AS INTEGER) AS item, i.score, a._rule IS NULL AS staged
FROM _in_assessments AS a
JOIN _instruments AS r ON r.code = a.instrument AND r.risk_item IS NOT NULL
JOIN _in_assessment_items AS i
  ON i.assessment_id = a.assessment_id AND i._rule IS NULL AND i.item = r.risk_item
WHERE a._rule IS NULL OR a._rule = 'too_many_missing_items';

-- Items of an administration that was not scored follow it into quarantine
-- (references were settled above, so scoring is the only reason left).
UPDATE _in_assessment_items AS i
SET _rule = 'unknown_reference',
    _detail = 'assessment_id ' || i.assessment_id
              || ' was quarantined when it was scored (see its own row)'
WHERE i._rule IS NULL
  AND NOT EXISTS (SELECT 1 FROM _in_assessments AS a
                  WHERE a._rule IS NULL AND a.assessment_id = i.assessment_id);
