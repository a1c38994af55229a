-- marts.clinician_summary: one row per (clinic, primary clinician of the episode).
-- Caseload as of the data cut date, attendance, dropout and the NHS Talking
-- Therapies-style outcome rates (same definitions as marts.clinic_kpis, all time),
-- each with numerator, denominator and distinct clients; plus the severity-adjusted
-- effect size on $primary_instrument from marts.clinician_adjusted_outcomes.
WITH episodes AS (
    SELECT k.*, a.attended, a.no_show, a.late_cancelled
    FROM marts.clinic_kpis_episodes k
    LEFT JOIN marts.episode_attendance a ON a.episode_id = k.episode_id
),
counts AS (
    SELECT clinic_id, clinician_id,
           count(*) AS episodes_total,
           count(DISTINCT client_id) AS clients_total,
           count(*) FILTER (WHERE status = 'open') AS open_episodes,
           count(DISTINCT client_id) FILTER (WHERE status = 'open') AS open_clients,
           count(*) FILTER (WHERE status = 'disengaged') AS disengaged_episodes,
           -- attendance: attended / (attended + no_show + late_cancelled)
           coalesce(sum(attended), 0) AS sessions_attended,
           coalesce(sum(no_show), 0) AS sessions_no_show,
           coalesce(sum(late_cancelled), 0) AS sessions_late_cancelled,
           count(DISTINCT client_id) FILTER (WHERE attended + no_show + late_cancelled > 0)
               AS attendance_n_clients,
           -- dropout: over episodes that left treatment (ended or disengaged)
           count(*) FILTER (WHERE ended_on IS NOT NULL) AS dropout_denominator,
           count(*) FILTER (WHERE ended_on IS NOT NULL AND dropout) AS dropout_numerator,
           count(*) FILTER (WHERE ended_on IS NOT NULL AND early_dropout) AS early_dropout_numerator,
           count(DISTINCT client_id) FILTER (WHERE ended_on IS NOT NULL) AS dropout_n_clients,
           -- NHS-style outcomes of finished episodes
           count(*) FILTER (WHERE finished) AS finished_episodes,
           count(*) FILTER (WHERE finished AND pair_paired) AS improvement_denominator,
           count(*) FILTER (WHERE finished AND pair_paired AND reliably_improved)
               AS improvement_numerator,
           count(*) FILTER (WHERE finished AND pair_paired AND reliably_deteriorated)
               AS deterioration_numerator,
           count(DISTINCT client_id) FILTER (WHERE finished AND pair_paired)
               AS improvement_n_clients,
           count(*) FILTER (WHERE finished AND pair_paired AND caseness_start)
               AS recovery_denominator,
           count(*) FILTER (WHERE finished AND pair_paired AND caseness_start AND recovered)
               AS recovery_numerator,
           count(*) FILTER (WHERE finished AND pair_paired AND caseness_start
                            AND reliably_recovered) AS reliable_recovery_numerator,
           count(DISTINCT client_id) FILTER (WHERE finished AND pair_paired AND caseness_start)
               AS recovery_n_clients
    FROM episodes
    GROUP BY clinic_id, clinician_id
)
SELECT c.clinic_id, c.clinician_id,
       c.episodes_total, c.clients_total, c.open_episodes, c.open_clients,
       c.disengaged_episodes,
       c.sessions_attended, c.sessions_no_show, c.sessions_late_cancelled,
       c.sessions_attended + c.sessions_no_show + c.sessions_late_cancelled
           AS attendance_denominator,
       c.sessions_attended / nullif(c.sessions_attended + c.sessions_no_show
                                    + c.sessions_late_cancelled, 0) AS attendance_rate,
       c.sessions_no_show / nullif(c.sessions_attended + c.sessions_no_show
                                   + c.sessions_late_cancelled, 0) AS dna_rate,
       c.sessions_no_show / nullif(c.sessions_attended + c.sessions_no_show, 0) AS dna_rate_nhs,
       c.attendance_n_clients,
       c.dropout_numerator, c.dropout_denominator,
       c.dropout_numerator / nullif(c.dropout_denominator, 0) AS dropout_rate,
       c.early_dropout_numerator,
       c.early_dropout_numerator / nullif(c.dropout_denominator, 0) AS early_dropout_rate,
       c.dropout_n_clients,
       c.finished_episodes,
       c.recovery_numerator, c.recovery_denominator,
       c.recovery_numerator / nullif(c.recovery_denominator, 0) AS recovery_rate,
       c.reliable_recovery_numerator,
       c.reliable_recovery_numerator / nullif(c.recovery_denominator, 0) AS reliable_recovery_rate,
       c.recovery_n_clients,
       c.improvement_numerator AS reliable_improvement_numerator,
       c.improvement_denominator AS reliable_improvement_denominator,
       c.improvement_numerator / nullif(c.improvement_denominator, 0) AS reliable_improvement_rate,
       c.deterioration_numerator AS reliable_deterioration_numerator,
       c.deterioration_numerator / nullif(c.improvement_denominator, 0)
           AS reliable_deterioration_rate,
       c.improvement_n_clients,
       $primary_instrument AS adjusted_instrument,
       coalesce(a.n_episodes, 0) AS adjusted_n_episodes,
       coalesce(a.n_clients, 0) AS adjusted_n_clients,
       a.mean_residual, a.mean_residual_se, a.mean_residual_ci_low, a.mean_residual_ci_high,
       a.saes, a.saes_se, a.saes_ci_low, a.saes_ci_high, a.service_saes
FROM counts c
LEFT JOIN marts.clinician_adjusted_outcomes a
       ON a.clinic_id = c.clinic_id AND a.clinician_id = c.clinician_id
      AND a.instrument = $primary_instrument
ORDER BY c.clinic_id, c.clinician_id
