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
# # Data-quality review
#
# Which export rows did the last run reject, by table, rule and month, and what should
# go back to the team that runs the exporting system? Every rejected row is in
# `quarantine.rejected_rows` with its file, row number, raw record, rule code and
# detail (CONTRACT.md section 3); the rule codes are explained in
# `schemas/quarantine_rules.csv`.
#
# This is an internal, row-level review with pseudonymous ids: it is not published and
# is not suppressed. The list written for the exporting system carries file names, row
# numbers, ids, rules and what to fix, never the clinical values.
#
# It reads the **published snapshot** (the last successful run). When a run stopped on
# the blocking `max_rejected_share` check, the snapshot still holds the previous run:
# point `SNAPSHOT` at the live warehouse (`data/warehouse.duckdb`) to review the
# stopped run's quarantine, while no run is in progress (DuckDB cannot open a file that
# a run is writing).
#
# Parameters (papermill style, the cell tagged `parameters`):
#
# - `SNAPSHOT`: DuckDB file to read; empty means the published snapshot.
# - `OUTPUT_DIR`: folder for the CSV to send back; empty writes nothing.
# - `MAX_EXAMPLES`: example rows listed per table and rule.

# %% tags=["parameters"]
SNAPSHOT = ""
OUTPUT_DIR = ""
MAX_EXAMPLES = 10

# %%
# ruff: noqa: E402, B018  (a notebook: imports follow the parameters; bare names display)
from pathlib import Path

import pandas as pd

from assets.suppression import csv_safe
from pipelines.snapshot import connect
from schemas.rules import catalogue

pd.set_option("display.max_colwidth", 120)
con = connect(SNAPSHOT or None)
run = con.execute("SELECT run_id, as_of, exports_dir FROM staging.run_info").df()
run

# %% [markdown]
# ## Rows read, staged and quarantined per table

# %%
history = con.execute(
    """
    SELECT table_name, rows_read, rows_staged, rows_quarantined,
           round(100.0 * rows_quarantined / nullif(rows_read, 0), 2) AS pct_quarantined
    FROM quarantine.ingest_history
    WHERE run_id = (SELECT run_id FROM staging.run_info)
    ORDER BY table_name
    """
).df()
assert (history["rows_read"] == history["rows_staged"] + history["rows_quarantined"]).all()
history

# %% [markdown]
# ## Quarantine by table and rule

# %%
rules = pd.DataFrame(
    [(r.code, r.precedence, r.description) for r in catalogue().values()],
    columns=["rule", "precedence", "what_it_means"],
)
rejected = con.execute(
    r"""
    WITH q AS (
        SELECT *, json_valid(record) AS is_json FROM quarantine.rejected_rows
    ),
    dated AS (
        SELECT q.*,
               CASE WHEN is_json THEN coalesce(
                   json_extract_string(record, '$.scheduled_at'),
                   json_extract_string(record, '$.administered_at'),
                   json_extract_string(record, '$.start_date'),
                   json_extract_string(record, '$.referral_date'),
                   json_extract_string(record, '$.set_at')) END AS own_date,
               CASE WHEN is_json THEN coalesce(
                   json_extract_string(record, '$.session_id'),
                   json_extract_string(record, '$.assessment_id'),
                   json_extract_string(record, '$.episode_id')) END AS row_key,
               CASE WHEN is_json THEN json_extract_string(record, '$.episode_id') END
                   AS episode_id,
               CASE WHEN is_json THEN json_extract_string(record, '$.assessment_id') END
                   AS assessment_id
        FROM q
    )
    SELECT d.table_name, d.source_file, d.source_row, d.rule, d.detail, d.row_key,
           d.episode_id, d.assessment_id,
           coalesce(
               strftime(try_cast(left(d.own_date, 10) AS DATE), '%Y-%m'),
               -- an item row has no date of its own: its administration's month
               strftime(a.administered_at, '%Y-%m'),
               'no date'
           ) AS month
    FROM dated d
    LEFT JOIN staging.assessments a ON d.table_name = 'assessment_items'
        AND a.assessment_id = d.assessment_id
    ORDER BY d.table_name, d.source_file, d.source_row
    """
).df()
print(f"{len(rejected)} rejected rows in the warehouse's current quarantine")
by_rule = (
    rejected.groupby(["table_name", "rule"])
    .size()
    .rename("rows")
    .reset_index()
    .merge(rules, on="rule", how="left")
    .sort_values(["table_name", "precedence"])
)
by_rule

# %% [markdown]
# ## By month
#
# The month of the row's own date (session `scheduled_at`, assessment
# `administered_at`, episode start or referral date, goal `set_at`; an item takes its
# administration's month). A spike in one month usually means one bad monthly drop.

# %%
if rejected.empty:
    by_month = pd.DataFrame()
else:
    by_month = rejected.pivot_table(
        index=["table_name", "rule"],
        columns="month",
        values="source_row",
        aggfunc="count",
        fill_value=0,
    )
by_month

# %% [markdown]
# ## Rows rejected only because another row was
#
# A session, assessment or goal of a quarantined episode, or an item of a quarantined
# administration, is rejected as `unknown_reference`. Fix the parent row and these come
# back on their own: they are listed separately so the exporting system fixes causes,
# not symptoms.

# %%
bad_episodes = set(rejected.loc[rejected["table_name"] == "episodes", "episode_id"].dropna())
bad_assessments = set(
    rejected.loc[rejected["table_name"] == "assessments", "assessment_id"].dropna()
)
rejected["follows_from"] = None
is_reference = rejected["rule"] == "unknown_reference"
from_episode = (
    is_reference
    & rejected["episode_id"].isin(bad_episodes)
    & (rejected["table_name"] != "episodes")
)
from_assessment = (
    is_reference
    & (rejected["table_name"] == "assessment_items")
    & rejected["assessment_id"].isin(bad_assessments)
)
rejected.loc[from_episode, "follows_from"] = "quarantined episode " + rejected["episode_id"]
rejected.loc[from_assessment, "follows_from"] = (
    "quarantined administration " + rejected["assessment_id"]
)
rejected["follows_from"].notna().sum()

# %% [markdown]
# ## What to send back to the exporting system
#
# One line per file and rule with the rows to look at, then (when `OUTPUT_DIR` is
# set) a CSV with every root-cause row: file, row, id, rule, what it means and the
# detail. Text cells are escaped so that a spreadsheet never runs one as a formula.

# %%
root = rejected[rejected["follows_from"].isna()].merge(rules, on="rule", how="left")
summary = (
    root.groupby(["source_file", "rule", "what_it_means"])
    .agg(
        rows=("source_row", "size"),
        example_rows=(
            "source_row",
            lambda s: ", ".join(str(int(v)) for v in sorted(s)[: int(MAX_EXAMPLES)]),
        ),
        example_detail=("detail", "first"),
    )
    .reset_index()
    .sort_values(["source_file", "rows"], ascending=[True, False])
)
summary

# %%
send_back = root[
    ["table_name", "source_file", "source_row", "row_key", "rule", "what_it_means", "detail"]
].rename(columns={"row_key": "id"})
if OUTPUT_DIR:
    as_of = run["as_of"].iloc[0]
    path = Path(OUTPUT_DIR) / f"quarantine_to_fix_{as_of:%Y-%m-%d}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    csv_safe(send_back).to_csv(path, index=False)
    print(f"wrote {len(send_back)} rows to {path}")
send_back.head(int(MAX_EXAMPLES))

# %% [markdown]
# ## Totals that disagreed with the items
#
# Not rejected: when an administration has item responses, the total computed from
# them wins, and a supplied `total_score` further than `total_mismatch_tolerance` away
# is reported here. Many of these point at a scoring rule in the exporting system.

# %%
con.execute(
    "SELECT source_file, count(*) AS rows, "
    "round(avg(abs(supplied_total - computed_total)), 2) AS mean_abs_difference "
    "FROM quarantine.total_mismatches GROUP BY 1 ORDER BY 1"
).df()

# %%
con.close()
