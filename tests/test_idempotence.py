"""Two runs on the same exports give the same warehouse and the same published files.

The second run starts from the first run's warehouse, reports and Dagster home,
as a nightly rerun would. Every table is compared row for row (ordered dumps,
run ids excepted); the published CSVs and report pages must be byte-identical
once the run id they print is taken out.
"""

from __future__ import annotations

import pytest

from tests.reliability import (
    Site,
    clean_a,
    copy_site_state,
    file_tree,
    open_warehouse,
    ordered_dump,
    record,
    run_id_of,
    run_to_end,
    warehouse_tables,
)


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    first = clean_a()
    site = Site(tmp_path_factory.mktemp("idempotence") / "site", first.site.exports)
    copy_site_state(first.site, site)
    second = run_to_end(site, "second")
    assert second.returncode == 0, second.stderr[-4000:]
    return first, site, run_id_of(second)


def test_every_table_is_identical_row_for_row(two_runs):
    first, site, _ = two_runs
    with open_warehouse(first.site.warehouse) as a, open_warehouse(site.warehouse) as b:
        tables = warehouse_tables(a)
        assert warehouse_tables(b) == tables
        differ = []
        rows = 0
        for table in tables:
            before, after = ordered_dump(a, table), ordered_dump(b, table)
            if table == "quarantine.ingest_history":  # a history: the rerun adds the same rows
                assert after == sorted(before * 2)
                continue
            rows += len(after)
            if before != after:
                differ.append(table)
    assert differ == [], f"a rerun on the same exports changed {differ}"
    marts = [t for t in tables if t.startswith("marts.")]
    assert len(marts) >= 4
    record("idempotence", {"tables_compared": len(tables), "rows_compared": rows})


def test_published_files_are_identical_but_for_the_run_id(two_runs):
    first, site, second_id = two_runs
    before = file_tree(first.site.reports, strip=[first.run_id])
    after = file_tree(site.reports, strip=[second_id or ""])
    assert sorted(after) == sorted(before)
    differ = sorted(p for p in before if before[p] != after[p])
    record(
        "idempotence", {"published_files_compared": len(before), "published_files_differ": differ}
    )
    assert differ == [], f"a rerun on the same exports changed the published files {differ}"
