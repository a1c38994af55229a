-- QI report, equity section: the four episode-level KPIs of marts.clinic_kpis
-- (same units as assets/sql/clinic_kpis_rates.sql) over the 12-month window
-- ($start .. $month, by the month the episode ended), by age band and by gender,
-- per clinic and for the service ($service_key); band '__all__' is the window
-- total that the monthly cells add up to. Empty or missing age band / gender is
-- counted as 'not recorded', never dropped. Tested in tests/test_reports.py.
WITH eps AS (
    SELECT k.episode_id, k.client_id, k.clinic_id, k.ended_on, k.finished, k.pair_paired,
           k.caseness_start, k.dropout, k.recovered, k.reliably_improved, k.reliably_deteriorated,
           coalesce(nullif(trim(e.age_band), ''), 'not recorded') AS age_band,
           coalesce(nullif(trim(e.gender), ''), 'not recorded') AS gender
    FROM marts.clinic_kpis_episodes k
    JOIN staging.episodes e ON e.episode_id = k.episode_id
    WHERE k.ended_month BETWEEN $start AND $month
),
repeat_clients AS (  -- clients with more than one episode
    SELECT client_id FROM staging.episodes GROUP BY client_id HAVING count(*) > 1
),
units AS (
    SELECT 'dropout_rate' AS kpi, '' AS instrument, *, coalesce(dropout, false)::INTEGER AS num
    FROM eps WHERE ended_on IS NOT NULL
    UNION ALL
    SELECT 'recovery_rate', $pair_label, *, coalesce(recovered, false)::INTEGER
    FROM eps WHERE finished AND pair_paired AND caseness_start
    UNION ALL
    SELECT 'reliable_improvement_rate', $pair_label, *, coalesce(reliably_improved, false)::INTEGER
    FROM eps WHERE finished AND pair_paired
    UNION ALL
    SELECT 'reliable_deterioration_rate', $pair_label, *,
           coalesce(reliably_deteriorated, false)::INTEGER
    FROM eps WHERE finished AND pair_paired
),
counted AS (
    SELECT u.*, r.client_id IS NOT NULL AS repeat_client
    FROM units AS u
    LEFT JOIN repeat_clients AS r ON r.client_id = u.client_id
),
long AS (
    SELECT kpi, instrument, clinic_id, client_id, episode_id, num, repeat_client,
           'age_band' AS breakdown, age_band AS band FROM counted
    UNION ALL
    SELECT kpi, instrument, clinic_id, client_id, episode_id, num, repeat_client,
           'gender' AS breakdown, gender AS band FROM counted
)
SELECT CASE WHEN grouping(clinic_id) = 0 THEN clinic_id ELSE $service_key END AS clinic_id,
       kpi, instrument, breakdown,
       CASE WHEN grouping(band) = 0 THEN band ELSE '__all__' END AS band,
       sum(num)::DOUBLE AS numerator,
       count(*)::DOUBLE AS denominator,
       sum(num)::DOUBLE / count(*) AS value,
       -- distinct clients as in clinic_kpis_rates.sql: a client with one episode has
       -- one row here; count(DISTINCT) only over the few with several (2.5x faster)
       count(*) FILTER (WHERE NOT repeat_client)
           + count(DISTINCT CASE WHEN repeat_client THEN client_id END) AS n_clients,
       -- one row per episode in each (kpi, breakdown): a DISTINCT here doubled the time
       count(*) AS n_episodes
FROM long
GROUP BY GROUPING SETS ((kpi, instrument, breakdown, clinic_id, band),
                        (kpi, instrument, breakdown, band),
                        (kpi, instrument, breakdown, clinic_id),
                        (kpi, instrument, breakdown))
ORDER BY kpi, instrument, breakdown, clinic_id, band
