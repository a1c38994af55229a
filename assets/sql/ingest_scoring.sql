-- Scoring is part of validation (edge rule 4; METRICS.md "Scoring an administration").
-- An administration with staged items is scored from them: sum when complete,
-- mean(answered) x items when up to max_missing are missing (prorated), and
-- not scored (too_many_missing_items) beyond that; 'mean' instruments (GBO)
-- take the mean of the answered items with no missing-item rule. Without
-- items the supplied total_score is used, if present and within range.
--
-- Item rows are the largest table by far: only the rows that change are
-- updated (reverse-keyed responses, rows that break a rule); totals are a
-- table joined when staging is published.

-- Reverse keying: a reverse item counts as (item_min + item_max - response).
-- Items were loaded with keyed_score = score; the reverse-keyed responses of
-- valid administrations are turned here. reverse_items lists item numbers ('2,3').
CREATE OR REPLACE TABLE _reverse_items AS
SELECT DISTINCT code, TRY_CAST(part AS BIGINT) AS item
FROM (SELECT code, unnest(string_split(reverse_items, ',')) AS part
      FROM _instruments WHERE reverse_items IS NOT NULL)
WHERE CAST(TRY_CAST(part AS BIGINT) AS VARCHAR) = part;

UPDATE _in_assessment_items AS i
SET keyed_score = r.item_min + r.item_max - i.score
FROM _in_assessments AS a, _instruments AS r, _reverse_items AS rv
WHERE i._rule IS NULL AND a._rule IS NULL AND a.assessment_id = i.assessment_id
  AND r.code = a.instrument AND rv.code = a.instrument AND rv.item = i.item;

-- One row per valid administration: its scoring rule (NULL: scored) and total.
-- The item sum is taken in DECIMAL: a sum of doubles depends on the order the
-- rows arrive in (SRS lines 7.3 + 9.1 + 9.9 + 9.7 gave 36.0 in one file order and
-- 35.99999999999999 in another), and the same exports must give the same
-- warehouse. Responses carry at most a few decimals; 6 are kept.
CREATE OR REPLACE TABLE _scored AS
WITH item_sums AS (
    SELECT assessment_id,
           count(*) FILTER (WHERE _rule IS NULL) AS answered,
           -- CASE, not FILTER: a rejected response (1e300) must never reach the cast
           sum(CASE WHEN _rule IS NULL THEN CAST(keyed_score AS DECIMAL(18, 6)) END) AS exact_sum
    FROM _in_assessment_items
    GROUP BY assessment_id
),
items AS (
    SELECT assessment_id, answered,
           CAST(exact_sum AS DOUBLE) AS keyed_sum,
           CAST(exact_sum AS DOUBLE) / answered AS keyed_mean
    FROM item_sums
),
s AS (
    SELECT a._rid, a.assessment_id, a.instrument, a.total_score,
           r.items, r.max_missing, r.scoring, r.total_min, r.total_max,
           coalesce(it.answered, 0) AS answered, it.keyed_sum, it.keyed_mean,
           it.assessment_id IS NOT NULL AS had_item_rows
    FROM _in_assessments AS a
    JOIN _instruments AS r ON r.code = a.instrument
    LEFT JOIN items AS it ON it.assessment_id = a.assessment_id
    WHERE a._rule IS NULL
)
SELECT _rid, assessment_id,
       CASE
           WHEN max_missing IS NOT NULL AND (answered > 0 OR had_item_rows)
                AND items - answered > max_missing
               THEN 'too_many_missing_items'
           WHEN answered = 0 AND total_score IS NULL THEN 'no_score'
           WHEN answered = 0 AND (total_score < total_min OR total_score > total_max)
               THEN 'out_of_range'
       END AS rule,
       CASE
           WHEN max_missing IS NOT NULL AND (answered > 0 OR had_item_rows)
                AND items - answered > max_missing
               THEN (items - answered) || ' of ' || items || ' items missing; at most '
                    || max_missing || ' may be missing for ' || instrument
           WHEN answered = 0 AND total_score IS NULL
               THEN 'no item responses and no total_score'
           WHEN answered = 0 AND (total_score < total_min OR total_score > total_max)
               THEN 'total_score: ' || total_score || ' is outside ' || total_min || '..'
                    || total_max || ' for ' || instrument
       END AS detail,
       CASE
           WHEN answered = 0 THEN total_score
           WHEN scoring = 'mean' THEN keyed_mean
           WHEN answered = items THEN keyed_sum
           ELSE keyed_mean * items
       END AS total,
       CASE WHEN answered > 0 THEN answered END AS items_answered,
       answered > 0 AND scoring = 'sum' AND answered < items AS prorated
FROM s;

UPDATE _in_assessments AS a
SET _rule = s.rule, _detail = s.detail
FROM _scored AS s
WHERE a._rid = s._rid AND s.rule IS NOT NULL;

-- Administrations as staging receives them: with their scored columns. The
-- scored columns are laid out row for row beside the scratch table (which holds
-- its rows in _rid order) and joined by position: a keyed join of the wide rows
-- would lose file order and sorting them back cost twice as much.
CREATE OR REPLACE TABLE _scored_aligned AS
SELECT s.total, s.items_answered, s.prorated
FROM _in_assessments AS a
LEFT JOIN _scored AS s ON s._rid = a._rid
ORDER BY a._rid;

CREATE OR REPLACE VIEW _assessments_scored AS
SELECT * FROM _in_assessments POSITIONAL JOIN _scored_aligned;

-- Risk items are a safety signal (edge rule 6): keep every valid risk-item
-- response, including those of administrations quarantined for missing items.
CREATE OR REPLACE TABLE _risk_responses AS
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
  AND i.assessment_id IN (SELECT assessment_id FROM _scored WHERE rule IS NOT NULL);
