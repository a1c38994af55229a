-- Item numbers and responses must lie within the administration's instrument.
-- These are row rules (out_of_range), so they run before duplicate keys
-- (edge rule 1); the instrument comes from the first row-valid copy of the
-- administration. An item whose administration is missing is left for the
-- reference rule (unknown_reference).
--
-- Item rows are the largest table by far (25M at 200k episodes): one aggregate
-- per administration finds the few administrations with an item out of range,
-- and only their rows are joined to the instrument. The same aggregate gives
-- the duplicate-key rule its candidates (_mark_duplicates in ingest_engine.py):
-- more rows than distinct item numbers (a bit per number 0..62; any other
-- number leaves its bit unset, so its administration is a candidate). Counted
-- before this rule removes rows, which can only remove duplicates: the
-- candidates stay a superset.

CREATE OR REPLACE TABLE _item_stats AS
SELECT assessment_id,
       min(item) AS lowest_item, max(item) AS highest_item,
       min(score) AS lowest_score, max(score) AS highest_score,
       count(*) AS n_rows,
       bit_count(bit_or(CASE WHEN item BETWEEN 0 AND 62 THEN 1::BIGINT << item END))
           AS n_item_bits
FROM _in_assessment_items
WHERE _rule IS NULL
GROUP BY assessment_id;

CREATE OR REPLACE TABLE _item_range_instrument AS
SELECT a.assessment_id, ins.code, ins.items, ins.item_min, ins.item_max
FROM (
    SELECT assessment_id, arg_min(instrument, _rid) AS instrument
    FROM _in_assessments
    WHERE _rule IS NULL
    GROUP BY assessment_id
) AS a
JOIN _instruments AS ins ON ins.code = a.instrument
JOIN _item_stats AS st ON st.assessment_id = a.assessment_id
WHERE st.lowest_item < 1 OR st.highest_item > ins.items
   OR st.lowest_score < ins.item_min OR st.highest_score > ins.item_max;

UPDATE _in_assessment_items AS i
SET _rule = 'out_of_range',
    _detail = CASE
        WHEN i.item < 1 OR i.item > r.items
            THEN 'item: ' || i.item || ' is outside 1..' || r.items || ' for ' || r.code
        ELSE 'score: ' || i.score || ' is outside ' || r.item_min || '..' || r.item_max
             || ' for ' || r.code
    END
FROM _item_range_instrument AS r
WHERE i._rule IS NULL
  AND i.assessment_id = r.assessment_id
  AND (i.item < 1 OR i.item > r.items OR i.score < r.item_min OR i.score > r.item_max);
