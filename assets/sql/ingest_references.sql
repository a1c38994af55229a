-- Cross-table rules, in the precedence of edge rule 1: unknown_reference,
-- client_mismatch, then the sessions time window. Only rows that passed every
-- earlier rule are looked at; a reference to a quarantined row is a reference
-- to a missing row (edge rule 3). Duplicate keys were marked before this runs.

-- sessions ------------------------------------------------------------------
UPDATE _in_sessions AS s
SET _rule = 'unknown_reference',
    _detail = 'episode_id ' || s.episode_id || ' is not a staged episode (missing or quarantined)'
WHERE s._rule IS NULL
  AND NOT EXISTS (SELECT 1 FROM _in_episodes AS e
                  WHERE e._rule IS NULL AND e.episode_id = s.episode_id);

UPDATE _in_sessions AS s
SET _rule = 'client_mismatch',
    _detail = 'client_id ' || s.client_id || ' differs from the client_id of episode '
              || e.episode_id
FROM _in_episodes AS e
WHERE s._rule IS NULL AND e._rule IS NULL
  AND e.episode_id = s.episode_id AND e.client_id <> s.client_id;

UPDATE _in_sessions AS s
SET _rule = 'out_of_range',
    _detail = 'scheduled_at ' || strftime(s.scheduled_at, '%Y-%m-%d %H:%M')
              || ' is outside the episode''s window ' || w.earliest || ' .. ' || w.latest
FROM (
    SELECT episode_id,
           least(coalesce(referral_date, start_date), start_date)
               - CAST($before_days AS INTEGER) AS earliest,
           CAST($window_as_of AS DATE) + CAST($after_days AS INTEGER) AS latest
    FROM _in_episodes
    WHERE _rule IS NULL
) AS w
WHERE s._rule IS NULL AND s.episode_id = w.episode_id
  AND (CAST(s.scheduled_at AS DATE) < w.earliest OR CAST(s.scheduled_at AS DATE) > w.latest);

-- assessments ---------------------------------------------------------------
UPDATE _in_assessments AS a
SET _rule = 'unknown_reference',
    _detail = CASE
        WHEN NOT EXISTS (SELECT 1 FROM _in_episodes AS e
                         WHERE e._rule IS NULL AND e.episode_id = a.episode_id)
            THEN 'episode_id ' || a.episode_id || ' is not a staged episode (missing or quarantined)'
        ELSE 'session_id ' || a.session_id || ' is not a staged session of episode ' || a.episode_id
    END
WHERE a._rule IS NULL
  AND (NOT EXISTS (SELECT 1 FROM _in_episodes AS e
                   WHERE e._rule IS NULL AND e.episode_id = a.episode_id)
       OR (a.session_id IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM _in_sessions AS s
                           WHERE s._rule IS NULL AND s.session_id = a.session_id
                             AND s.episode_id = a.episode_id)));

UPDATE _in_assessments AS a
SET _rule = 'client_mismatch',
    _detail = 'client_id ' || a.client_id || ' differs from the client_id of episode '
              || e.episode_id
FROM _in_episodes AS e
WHERE a._rule IS NULL AND e._rule IS NULL
  AND e.episode_id = a.episode_id AND e.client_id <> a.client_id;

-- assessment items: their administration must have passed so far -------------
UPDATE _in_assessment_items AS i
SET _rule = 'unknown_reference',
    _detail = 'assessment_id ' || i.assessment_id
              || ' is not a staged administration (missing or quarantined)'
WHERE i._rule IS NULL
  AND NOT EXISTS (SELECT 1 FROM _in_assessments AS a
                  WHERE a._rule IS NULL AND a.assessment_id = i.assessment_id);

-- goals -----------------------------------------------------------------------
UPDATE _in_goals AS g
SET _rule = 'unknown_reference',
    _detail = 'episode_id ' || g.episode_id || ' is not a staged episode (missing or quarantined)'
WHERE g._rule IS NULL
  AND NOT EXISTS (SELECT 1 FROM _in_episodes AS e
                  WHERE e._rule IS NULL AND e.episode_id = g.episode_id);
