-- Item numbers and responses must lie within the administration's instrument.
-- These are row rules (out_of_range), so they run before duplicate keys
-- (edge rule 1); the instrument comes from the first row-valid copy of the
-- administration. An item whose administration is missing is left for the
-- reference rule (unknown_reference).
UPDATE _in_assessment_items AS i
SET _rule = 'out_of_range',
    _detail = CASE
        WHEN i.item < 1 OR i.item > r.items
            THEN 'item: ' || i.item || ' is outside 1..' || r.items || ' for ' || r.code
        ELSE 'score: ' || i.score || ' is outside ' || r.item_min || '..' || r.item_max
             || ' for ' || r.code
    END
FROM (
    SELECT a.assessment_id, ins.code, ins.items, ins.item_min, ins.item_max
    FROM (
        SELECT assessment_id, arg_min(instrument, _rid) AS instrument
        FROM _in_assessments
        WHERE _rule IS NULL
        GROUP BY assessment_id
    ) AS a
    JOIN _instruments AS ins ON ins.code = a.instrument
) AS r
WHERE i._rule IS NULL
  AND i.assessment_id = r.assessment_id
  AND (i.item < 1 OR i.item > r.items OR i.score < r.item_min OR i.score > r.item_max);
