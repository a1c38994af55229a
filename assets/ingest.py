"""Ingest stage: one asset per export table, written together with the quarantine.

The five staging tables and ``quarantine.rejected_rows`` are produced by one
step so that they are replaced in one transaction (edge rule 18). Each staging
table has a blocking check on its quarantined share (CONTRACT.md section 3):
when it fails, staging and quarantine are kept (the check reads them) but no
mart or report is rebuilt from them (edge rule 16).
"""

import dagster as dg

from assets.ingest_engine import Ingest, IngestError, IngestResult, TableReport
from assets.sql_runner import preview_markdown
from pipelines.resources import WAREHOUSE_POOL, OutcomesResource
from schemas.privacy import PrivacyError
from schemas.rules import catalogue
from schemas.staging import STAGING_TABLES

GROUP = "staging"
QUARANTINE_KEY = dg.AssetKey(["quarantine", "rejected_rows"])
CHECK_NAME = "max_rejected_share"

_DESCRIPTIONS = {
    "episodes": "Valid treatment episodes (referral to discharge), typed.",
    "sessions": "Valid scheduled appointments with their attendance status, typed; timestamps "
    "in clinic local time.",
    "assessments": "Valid questionnaire administrations, scored with the instrument registry "
    "(total, items_answered, prorated); instrument codes canonical.",
    "assessment_items": "Valid item responses (as ticked, and reverse-keyed) of staged "
    "administrations.",
    "goals": "Valid goals set in episodes (rated through GBO).",
}


def staging_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["staging", table])


def _preview(con, relation: str, limit: int = 5) -> dg.MetadataValue:
    return dg.MetadataValue.md(preview_markdown(con, relation, limit))


def _table_metadata(report: TableReport, result: IngestResult) -> dict[str, object]:
    return {
        "rows_read": report.rows_read,
        "rows_staged": report.rows_staged,
        "rows_quarantined": report.rows_quarantined,
        "dagster/row_count": report.rows_staged,
        "quarantined_by_rule": dg.MetadataValue.json(report.by_rule),
        "source_files": dg.MetadataValue.json(report.files),
        "ignored_columns": dg.MetadataValue.json(report.ignored_columns),
        "export_present": report.present,
        "as_of": str(result.as_of),
    }


@dg.multi_asset(
    pool=WAREHOUSE_POOL,
    specs=[
        *(
            dg.AssetSpec(
                staging_key(t),
                description=_DESCRIPTIONS[t],
                group_name=GROUP,
                kinds={"duckdb", "pandera"},
            )
            for t in STAGING_TABLES
        ),
        dg.AssetSpec(
            QUARANTINE_KEY,
            group_name=GROUP,
            kinds={"duckdb"},
            description="Every export row that broke a rule, with its file, row, raw "
            "record, rule code and detail (rules in "
            "schemas/quarantine_rules.csv).",
        ),
    ],
    check_specs=[
        dg.AssetCheckSpec(
            CHECK_NAME,
            asset=staging_key(t),
            blocking=True,
            description="At most max_rejected_share (default 5%) of the table's "
            "rows were quarantined.",
        )
        for t in STAGING_TABLES
    ],
    can_subset=False,
)
def ingest_exports(context: dg.AssetExecutionContext, outcomes: OutcomesResource):
    """Read, validate and stage every export table; quarantine what breaks a rule."""
    settings = outcomes.settings
    try:
        with outcomes.connect() as con:
            result = Ingest(settings, con, run_id=context.run_id, logger=context.log).run()
            previews = {t: _preview(con, f"staging.{t}") for t in STAGING_TABLES}
            quarantine_preview = _preview(
                con,
                "(SELECT table_name, source_file, source_row, rule, detail "
                "FROM quarantine.rejected_rows)",
                10,
            )
    except PrivacyError as exc:
        raise dg.Failure(
            description=f"Privacy guard stopped the ingest: {exc}", allow_retries=False
        ) from None
    except IngestError as exc:
        raise dg.Failure(description=f"Ingest failed: {exc}", allow_retries=False) from None

    for warning in result.warnings:
        context.log.warning(warning)
    for table in STAGING_TABLES:
        report = result.tables[table]
        yield dg.MaterializeResult(
            asset_key=staging_key(table),
            metadata={**_table_metadata(report, result), "preview": previews[table]},
        )
    yield dg.MaterializeResult(
        asset_key=QUARANTINE_KEY,
        metadata={
            "dagster/row_count": sum(r.rows_quarantined for r in result.tables.values()),
            "by_table_and_rule": dg.MetadataValue.json(
                {t: r.by_rule for t, r in result.tables.items() if r.by_rule}
            ),
            "rules_catalogue": dg.MetadataValue.json(
                {c: r.description for c, r in catalogue().items()}
            ),
            "preview": quarantine_preview,
            "warnings": dg.MetadataValue.json(result.warnings),
        },
    )
    limit = settings.max_rejected_share
    for table in STAGING_TABLES:
        report = result.tables[table]
        passed = report.rejected_share <= limit
        description = (
            f"{table}: {report.rows_quarantined} of {report.rows_read} rows quarantined "
            f"({report.rejected_share:.1%}, limit {limit:.0%})"
        )
        if not passed:
            description += (
                f"; mostly {report.dominant_rule} ({report.by_rule[report.dominant_rule]} rows). "
                f"Marts and reports were not rebuilt; fix the export or raise max_rejected_share."
            )
        yield dg.AssetCheckResult(
            asset_key=staging_key(table),
            check_name=CHECK_NAME,
            passed=passed,
            severity=dg.AssetCheckSeverity.ERROR,
            description=description,
            metadata={
                "rows_read": report.rows_read,
                "rows_quarantined": report.rows_quarantined,
                "rejected_share": float(report.rejected_share),
                "max_rejected_share": float(limit),
                "dominant_rule": report.dominant_rule or "",
            },
        )
