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
# # Cohort outcome analysis
#
# Outcomes of the episodes with paired scores (a baseline and a later score) on one
# symptom instrument, broken down by **programme**, **baseline severity** and
# **number of attended sessions**: reliable improvement, recovery (of those at
# caseness at baseline) and reliable deterioration, with the definitions of
# docs/metrics.md.
#
# Every number here goes through the project's one suppression function
# (`assets.suppression.suppress`, CONTRACT.md section 4): a cell built from fewer than
# `min_cell_size` distinct clients, or publishing a count between 1 and k - 1, is shown
# as *suppressed*, and complementary cells are suppressed so that no hidden value can
# be recovered from the totals. The figures refuse unsuppressed frames.
#
# Baseline severity uses the bands of the expected-response mart (subclinical,
# moderate, severe: see assets/sql/etr_expected_trajectory.sql).
#
# Parameters (papermill style, the cell tagged `parameters`):
#
# - `INSTRUMENT`: a symptom instrument code of the registry.
# - `SESSION_BANDS`: lower bounds of the attended-session bands.
# - `MIN_CELL_SIZE`: k; 0 uses the clinic's `min_cell_size` (default 10). Never lower
#   it for anything that leaves the analysis team.
# - `SNAPSHOT`: DuckDB file to read; empty means the published snapshot.

# %% tags=["parameters"]
INSTRUMENT = "PHQ-9"
SESSION_BANDS = [1, 3, 6, 12]
MIN_CELL_SIZE = 0
SNAPSHOT = ""

# %%
# ruff: noqa: E402, B018  (a notebook: imports follow the parameters; bare names display)
import pandas as pd
import plotly.io as pio

from assets.figures import grouped_bars
from assets.suppression import SUPPRESSED, Additive, CellSpec, suppress
from pipelines.snapshot import connect
from schemas.settings import load_settings

pio.renderers.default = "plotly_mimetype+notebook"  # offline: no CDN
settings = load_settings()
K = MIN_CELL_SIZE or settings.min_cell_size
ALL = "all episodes"  # the total row of each breakdown

con = connect(SNAPSHOT or None)
con.execute("SELECT run_id, as_of FROM staging.run_info").df()

# %% [markdown]
# ## Paired episodes

# %%
bands = sorted(int(b) for b in SESSION_BANDS)
labels = [
    f"{lo}-{hi - 1}" if hi - 1 > lo else f"{lo}" for lo, hi in zip(bands, bands[1:], strict=False)
] + [f"{bands[-1]}+"]
band_sql = (
    "CASE "
    + " ".join(
        f"WHEN coalesce(a.attended, 0) >= {lo} THEN '{label}'"
        for lo, label in reversed(list(zip(bands, labels, strict=True)))
    )
    + f" ELSE 'under {bands[0]}' END"
)

episodes = con.execute(
    f"""
    SELECT o.episode_id, o.client_id,
           coalesce(e.program, 'not recorded') AS program,
           coalesce(b.severity_band, 'unknown') AS baseline_severity,
           {band_sql} AS attended_sessions,
           o.outcome_class, o.baseline_caseness, o.recovered, o.change
    FROM marts.episode_outcomes o
    JOIN staging.episodes e USING (episode_id)
    LEFT JOIN marts.episode_attendance a USING (episode_id)
    LEFT JOIN (
        SELECT DISTINCT episode_id, instrument, severity_band FROM marts.expected_trajectory
    ) b USING (episode_id, instrument)
    WHERE o.instrument = ? AND o.paired
    """,
    [INSTRUMENT],
).df()
print(f"{len(episodes)} paired {INSTRUMENT} episodes of {episodes['client_id'].nunique()} clients")

# %% [markdown]
# ## Cells, then suppression
#
# One cell per (breakdown, group, measure), plus the total of each breakdown. A rate
# goes with its events and non-events as private counts: each must be 0 or at least
# k, or the rate times its denominator would give a small count back. A cell's
# `n_episodes` is the rate's denominator (recovery: episodes at caseness at baseline)
# and `n_clients` the distinct clients behind it.

# %%
DIMENSIONS = {
    "program": "Programme",
    "baseline_severity": "Baseline severity",
    "attended_sessions": "Attended sessions",
}
MEASURES = {
    "reliable_improvement": "Reliable improvement",
    "recovery": "Recovery",
    "reliable_deterioration": "Reliable deterioration",
}
COUNTS = ("events", "non_events")


def measures(frame: pd.DataFrame) -> list[dict[str, object]]:
    """The published quantities of one group of paired episodes."""
    at_caseness = frame[frame["baseline_caseness"].fillna(False).astype(bool)]
    flags = {
        "reliable_improvement": (frame, frame["outcome_class"] == "reliably_improved"),
        "recovery": (at_caseness, at_caseness["recovered"].fillna(False).astype(bool)),
        "reliable_deterioration": (frame, frame["outcome_class"] == "reliably_deteriorated"),
    }
    out = []
    for measure, (base, hit) in flags.items():
        events = int(hit.sum())
        out.append(
            {
                "measure": measure,
                "value": events / len(base) if len(base) else None,
                "n_episodes": len(base),
                "n_clients": base["client_id"].nunique(),
                "events": events,
                "non_events": len(base) - events,
            }
        )
    out.append(
        {
            "measure": "mean_change",
            "value": float(frame["change"].mean()) if len(frame) else None,
            "n_episodes": len(frame),
            "n_clients": frame["client_id"].nunique(),
            "events": None,
            "non_events": None,
        }
    )
    return out


rows = []
for dimension in DIMENSIONS:
    groups = [(g, f) for g, f in episodes.groupby(dimension, dropna=False)]
    for group, frame in [*groups, (ALL, episodes)]:
        for m in measures(frame):
            where = "all" if group == ALL else f"{dimension}={group}"
            rows.append(
                {"dimension": dimension, "group": group, "quantity": f"{m['measure']}:{where}", **m}
            )
cells = pd.DataFrame(rows)

SPEC = CellSpec(
    keys=("dimension", "group", "measure"),
    clients="n_clients",
    small_counts=COUNTS,
    additive=(Additive(by=("dimension", "measure"), over="group", total=ALL),),
    same_as="quantity",  # a total is the same number in every breakdown
    rounded=("n_episodes", "n_clients"),
    private=COUNTS,
)
published_cells = suppress(cells, SPEC, K, settings.round_counts_to)
print(
    f"k = {K}: {int(published_cells[SUPPRESSED].sum())} of {len(published_cells)} cells suppressed"
)


def shown(frame: pd.DataFrame) -> pd.DataFrame:
    """A readable table: suppressed cells read 'suppressed', never a number or a blank."""
    text = [
        "suppressed"
        if hidden
        else ("" if value is None else f"{value:.1%}" if rate else f"{value:.2f}")
        for value, hidden, rate in zip(
            frame["value"], frame[SUPPRESSED], frame["measure"] != "mean_change", strict=True
        )
    ]
    table = frame.assign(value=text).pivot(
        index=["dimension", "group"], columns="measure", values="value"
    )
    return table[[*MEASURES, "mean_change"]]


shown(published_cells)

# %% [markdown]
# ## Outcomes by programme, baseline severity and attended sessions

# %%
orders = {
    "baseline_severity": ["subclinical", "moderate", "severe", "unknown"],
    "attended_sessions": [f"under {bands[0]}", *labels],
}
for dimension, title in DIMENSIONS.items():
    part = published_cells[
        (published_cells["dimension"] == dimension) & published_cells["measure"].isin(MEASURES)
    ]
    part.attrs["min_cell_size"] = K
    present = list(dict.fromkeys(part["group"]))
    order = [g for g in orders.get(dimension, sorted(present, key=str)) if g in present]
    order = [g for g in order if g != ALL] + [ALL]
    fig = grouped_bars(
        part,
        x="group",
        series="measure",
        labels=MEASURES,
        x_order=order,
        title=f"{INSTRUMENT}: outcomes by {title.lower()} (k = {K})",
    )
    fig.show()

# %%
con.close()
