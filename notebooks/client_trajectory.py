# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Client trajectory explorer
#
# Pick one episode and see its symptom scores against the clinical cutoff and the
# reliable-change band, the expected-response band where the clinic has enough
# reference episodes, the SRS alliance ratings, attended and missed sessions, its
# alerts and its goals. The chart is the same `client_trajectory` figure the
# clinician caseload report uses (`assets/figures.py`).
#
# This is a per-client view with pseudonymous ids only: keep it inside the service.
# It reads the **published snapshot** of the warehouse (`pipelines.snapshot.connect()`),
# never the live warehouse, so it cannot make a run fail and a run cannot break it.
# Re-run it after a refresh to see the new data.
#
# Parameters (papermill style, the cell tagged `parameters`):
#
# - `EPISODE_ID`: the episode to show; empty picks the episode with the most scores
#   among those with an open alert.
# - `INSTRUMENT`: the symptom instrument to draw (`PHQ-9`, `GAD-7`, ...); empty picks
#   the episode's most-used one.
# - `SNAPSHOT`: path of the DuckDB file to read; empty means the published snapshot
#   (`OUTCOMES_SNAPSHOT`, or `<warehouse>.snapshot.duckdb` beside the warehouse).

# %% tags=["parameters"]
EPISODE_ID = ""
INSTRUMENT = ""
SNAPSHOT = ""

# %%
# ruff: noqa: E402, B018  (a notebook: imports follow the parameters; bare names display)
import pandas as pd
import plotly.io as pio

from assets.figures import client_trajectory
from pipelines.snapshot import connect

# Offline-safe: plotly.js is embedded once, never fetched from a CDN.
pio.renderers.default = "plotly_mimetype+notebook"
pd.set_option("display.max_columns", 30)

con = connect(SNAPSHOT or None)
run = con.execute("SELECT run_id, as_of FROM staging.run_info").df()
run

# %% [markdown]
# ## Choose the episode

# %%
if not EPISODE_ID:
    candidates = con.execute(
        """
        SELECT s.episode_id, count(*) AS n_scores
        FROM marts.scores s
        WHERE s.construct = 'symptom'
          AND s.episode_id IN (SELECT episode_id FROM marts.alerts)
        GROUP BY s.episode_id
        ORDER BY n_scores DESC, s.episode_id
        LIMIT 1
        """
    ).fetchall()
    if not candidates:  # no alerts at all: the episode with the most symptom scores
        candidates = con.execute(
            "SELECT episode_id, count(*) FROM marts.scores WHERE construct = 'symptom' "
            "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1"
        ).fetchall()
    if not candidates:
        raise ValueError("The snapshot holds no symptom scores yet.")
    EPISODE_ID = candidates[0][0]

episode = con.execute(
    """
    SELECT e.episode_id, e.client_id, e.clinic_id, e.clinician_id, e.program, e.start_date,
           e.end_date, e.end_reason, a.status, a.scheduled, a.attended, a.no_show,
           a.late_cancelled, a.attendance_rate, a.last_attended_at
    FROM staging.episodes e LEFT JOIN marts.episode_attendance a USING (episode_id)
    WHERE e.episode_id = ?
    """,
    [EPISODE_ID],
).df()
if episode.empty:
    raise ValueError(f"episode {EPISODE_ID!r} is not in the snapshot")
episode.T

# %%
scores = con.execute(
    "SELECT instrument, administered_at, total, session_number, items_answered, prorated "
    "FROM marts.scores WHERE episode_id = ? ORDER BY administered_at",
    [EPISODE_ID],
).df()
symptom = con.execute(
    "SELECT instrument, count(*) AS n FROM marts.scores "
    "WHERE episode_id = ? AND construct = 'symptom' GROUP BY 1 ORDER BY 2 DESC, 1",
    [EPISODE_ID],
).df()
if not INSTRUMENT:
    INSTRUMENT = symptom["instrument"].iloc[0] if len(symptom) else ""
print(f"episode {EPISODE_ID}: instrument {INSTRUMENT or '(none)'}")
symptom

# %% [markdown]
# ## Trajectory

# %%
instruments = con.execute("SELECT * FROM staging.instruments").df().set_index("code")
sessions = con.execute(
    "SELECT scheduled_at, status FROM staging.sessions WHERE episode_id = ? ORDER BY 1",
    [EPISODE_ID],
).df()
srs = con.execute(
    "SELECT administered_at, total FROM marts.session_alliance "
    "WHERE episode_id = ? AND instrument = 'SRS' ORDER BY 1",
    [EPISODE_ID],
).df()
expected = con.execute(
    "SELECT administered_at, expected_score, tolerance_lower, tolerance_upper, off_track "
    "FROM marts.expected_trajectory WHERE episode_id = ? AND instrument = ? ORDER BY 1",
    [EPISODE_ID, INSTRUMENT],
).df()

fig = client_trajectory(
    scores[scores["instrument"] == INSTRUMENT],
    {"code": INSTRUMENT, **instruments.loc[INSTRUMENT].to_dict()} if INSTRUMENT else {},
    sessions=sessions,
    alliance=srs if len(srs) else None,
    alliance_instrument=(
        {"code": "SRS", **instruments.loc["SRS"].to_dict()} if "SRS" in instruments.index else None
    ),
    expected=expected if len(expected) else None,
    title=f"Episode {EPISODE_ID}: {INSTRUMENT}",
)
fig.show()

# %% [markdown]
# ## Outcome so far, per instrument

# %%
con.execute(
    "SELECT instrument, n_scores, baseline_score, final_score, change, outcome_class, "
    "baseline_caseness, final_caseness, recovered, reliably_recovered, slope_per_week "
    "FROM marts.episode_outcomes WHERE episode_id = ? ORDER BY instrument",
    [EPISODE_ID],
).df()

# %% [markdown]
# ## Alerts
#
# Every alert raised for the episode (risk item, reliable deterioration, not on
# track, low alliance, disengaged), newest first.

# %%
alerts = con.execute(
    "SELECT raised_at, alert_type, instrument, assessment_id, detail "
    "FROM marts.alerts WHERE episode_id = ? ORDER BY raised_at DESC",
    [EPISODE_ID],
).df()
alerts

# %% [markdown]
# ## Alliance and goals

# %%
con.execute(
    "SELECT session_number, administered_at, instrument, total, low_alliance, possible_rupture, "
    "rupture_recovered FROM marts.session_alliance WHERE episode_id = ? ORDER BY administered_at",
    [EPISODE_ID],
).df()

# %%
con.execute(
    "SELECT goal_number, horizon, set_at, n_ratings, first_rating, last_rating, change, "
    "reliably_improved FROM marts.goal_progress WHERE episode_id = ? ORDER BY goal_number",
    [EPISODE_ID],
).df()

# %%
con.close()
