"""The code location: every asset, check, job, schedule and sensor of the pipeline."""

from __future__ import annotations

import dagster as dg

import assets as assets_package
from pipelines.resources import OutcomesResource
from pipelines.schedules import build_schedules
from pipelines.sensors import build_sensors
from pipelines.snapshot import build_snapshot_asset, warehouse_keys

all_assets = dg.load_assets_from_package_module(assets_package)
all_checks = dg.load_asset_checks_from_package_module(assets_package)
# Published last: a read-only copy of the warehouse for notebooks (pipelines/snapshot.py).
all_assets = [*all_assets, build_snapshot_asset(warehouse_keys(all_assets))]

refresh_all = dg.define_asset_job(
    name="refresh_all",
    selection=dg.AssetSelection.all(),
    description="Ingest the exports, rebuild every mart and write the reports.",
    executor_def=dg.in_process_executor,
)

defs = dg.Definitions(
    assets=all_assets,
    asset_checks=all_checks,
    jobs=[refresh_all],
    schedules=build_schedules(),
    sensors=build_sensors(),
    resources={"outcomes": OutcomesResource()},
    executor=dg.in_process_executor,
)
