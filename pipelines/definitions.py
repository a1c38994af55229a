"""The code location: every asset, check, job, schedule and sensor of the pipeline."""

from __future__ import annotations

import dagster as dg

import assets as assets_package
from pipelines.resources import OutcomesResource

all_assets = dg.load_assets_from_package_module(assets_package)
all_checks = dg.load_asset_checks_from_package_module(assets_package)

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
    resources={"outcomes": OutcomesResource()},
    executor=dg.in_process_executor,
)
