-- Input of marts.retention_curve (Kaplan-Meier, assets/engagement.py): one row per
-- episode that attended at least one session.
-- event: the episode ended in dropout (episode_attendance.dropout: end reason
--   dropout, or disengaged); otherwise censored (still open, or ended another way).
-- sessions: attended sessions.
-- weeks: days from the first attended session to the last one, or to the data cut
--   date for an open episode (still attending then), divided by 7.
SELECT a.episode_id, a.client_id, a.clinic_id,
       a.attended AS sessions,
       greatest(date_diff('day', a.first_attended_at::DATE,
                          CASE WHEN a.status = 'open' THEN r.as_of
                               ELSE a.last_attended_at::DATE END), 0) / 7.0 AS weeks,
       a.dropout AS event
FROM marts.episode_attendance a
CROSS JOIN (SELECT as_of FROM staging.run_info) r
WHERE a.attended >= 1
ORDER BY a.episode_id
