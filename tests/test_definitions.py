"""The code location as Dagster and the UI see it."""

from __future__ import annotations

import dagster as dg

from pipelines.definitions import defs

PREFIXES = {"staging", "quarantine", "marts", "reports", "published"}


def _specs():
    graph = defs.resolve_asset_graph()
    return [
        graph.get(key) for key in graph.get_all_asset_keys() if graph.get(key).is_materializable
    ]


def test_every_asset_has_a_schema_prefix_a_group_and_a_description():
    problems = []
    for node in _specs():
        key = node.key
        if key.path[0] not in PREFIXES or len(key.path) != 2:
            problems.append(f"{key.to_user_string()}: key must be <schema>/<name>")
        if not (node.description or "").strip():
            problems.append(f"{key.to_user_string()}: no description")
        if node.group_name in (None, "default"):
            problems.append(f"{key.to_user_string()}: no group")
    assert problems == []


def test_refresh_all_selects_every_asset_and_runs_in_process():
    job = defs.resolve_job_def("refresh_all")
    assert job.executor_def is dg.in_process_executor
    materializable = {n.key for n in _specs()}
    selected = set(job.asset_layer.asset_graph.get_all_asset_keys()) & materializable
    assert selected == materializable


def test_ingest_assets_and_blocking_checks():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    for table in ("episodes", "sessions", "assessments", "assessment_items", "goals"):
        assert f"staging/{table}" in keys
    assert "quarantine/rejected_rows" in keys
    checks = {(c.asset_key.to_user_string(), c.name) for c in graph.asset_check_keys}
    assert ("staging/sessions", "max_rejected_share") in checks
