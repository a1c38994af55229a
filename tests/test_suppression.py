"""Small-cell suppression (CONTRACT.md section 4, METRICS.md "Small cells").

Hand-worked frames pin each rule (k = 10 unless said otherwise); the last
tests feed a warehouse with a tiny clinic through the real report sections and
play the attacker: no published number, and nothing recoverable by
subtraction from a published total, rests on fewer than k clients.
"""

from __future__ import annotations

import csv
from collections import defaultdict

import pandas as pd
import pytest

from assets import reports
from assets.service_kpis import SERVICE_KEY
from assets.suppression import (
    COMPLEMENTARY,
    FEWER_THAN_K,
    REASON,
    SMALL_COUNT,
    STEP,
    SUPPRESSED,
    Additive,
    CellSpec,
    Cumulative,
    csv_safe,
    escape_formula,
    published,
    require_suppressed,
    round_count,
    suppress,
    write_csv,
)
from schemas.settings import Settings
from tests.test_reports import synthetic_warehouse

K = 10


def frame(rows: list[tuple], columns: str) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns.split())


def flags(out: pd.DataFrame, key: str = "cell") -> dict:
    return dict(zip(out[key], out[SUPPRESSED], strict=True))


# --------------------------------------------------------------------------
# primary rules


def test_a_cell_on_fewer_than_k_clients_is_blank_not_zero():
    cells = frame(
        [("a", 9, 3, 0.33), ("b", 10, 4, 0.4), ("c", None, 5, 0.5)], "cell n_clients num value"
    )
    out = suppress(cells, CellSpec(keys=("cell",)), K)
    # a: 9 < 10; c: clients unknown -> suppressed; b: exactly k -> published
    assert flags(out) == {"a": True, "b": False, "c": True}
    a = out[out["cell"] == "a"].iloc[0]
    assert a["value"] is None and a["num"] is None and a["n_clients"] is None
    assert a[REASON] == FEWER_THAN_K
    b = out[out["cell"] == "b"].iloc[0]
    assert (b["n_clients"], b["num"], b["value"]) == (10, 4, 0.4)
    assert out.attrs["min_cell_size"] == K


def test_small_counts_between_1_and_k_minus_1_are_suppressed():
    cells = frame(
        [("zero", 40, 0), ("one", 40, 1), ("nine", 40, 9), ("ten", 40, 10), ("none", 40, None)],
        "cell n_clients events",
    )
    out = suppress(cells, CellSpec(keys=("cell",), small_counts=("events",)), K)
    assert flags(out) == {"zero": False, "one": True, "nine": True, "ten": False, "none": False}
    assert set(out.loc[out[SUPPRESSED], REASON]) == {SMALL_COUNT}


def test_private_columns_decide_but_are_not_published():
    cells = frame([("a", 40, 3)], "cell n_clients events")
    out = suppress(
        cells, CellSpec(keys=("cell",), small_counts=("events",), private=("events",)), K
    )
    assert "events" not in out.columns and bool(out[SUPPRESSED].iloc[0])


# --------------------------------------------------------------------------
# complementary suppression


SERVICE = CellSpec(keys=("cell",), additive=(Additive(by=(), over="cell", total="total"),))


def test_a_lone_suppressed_part_takes_the_next_smallest_with_it():
    # total 35 = A 3 + B 12 + C 20. A is primary; publishing B and C would give
    # A = 35 - 12 - 20. B (12, the smallest published) goes too: what subtraction
    # now gives back is A + B, 15 clients >= 10.
    cells = frame([("A", 3), ("B", 12), ("C", 20), ("total", 35)], "cell n_clients")
    out = suppress(cells, SERVICE, K)
    assert flags(out) == {"A": True, "B": True, "C": False, "total": False}
    assert dict(zip(out["cell"], out[REASON], strict=True))["B"] == COMPLEMENTARY


def test_two_small_suppressed_parts_are_not_enough_together():
    # A 3 and B 4 are both primary; their sum (total - C - D) would rest on at most
    # 7 clients, so C (30) is suppressed as well; D stays.
    cells = frame([("A", 3), ("B", 4), ("C", 30), ("D", 40), ("total", 77)], "cell n_clients")
    out = suppress(cells, SERVICE, K)
    assert flags(out) == {"A": True, "B": True, "C": True, "D": False, "total": False}


def test_when_no_part_is_left_the_total_goes():
    # only two parts, both small: the total (12) would equal their sum
    cells = frame([("A", 5), ("B", 7), ("total", 12)], "cell n_clients")
    out = suppress(cells, SERVICE, K)
    assert all(flags(out).values())


def test_a_single_clinic_service_is_suppressed_with_its_clinic():
    cells = frame([("A", 6), ("total", 6)], "cell n_clients")
    assert all(flags(suppress(cells, SERVICE, K)).values())


def test_no_total_in_the_frame_no_equation():
    cells = frame([("A", 3), ("B", 12), ("C", 20)], "cell n_clients")
    assert flags(suppress(cells, SERVICE, K)) == {"A": True, "B": False, "C": False}


def test_suppressed_events_must_not_add_up_to_a_small_count():
    # parts: A (50 clients, 3 events: suppressed, small count), B (40 clients, 0 events),
    # C (45 clients, 20 events), total (135 clients, 23 events). Suppressing B alone would
    # let A + B = 23 - 20 = 3 events be recovered; so C goes too (A + B + C = 23).
    spec = CellSpec(
        keys=("cell",),
        small_counts=("events",),
        additive=(Additive(by=(), over="cell", total="total"),),
    )
    cells = frame(
        [("A", 50, 3), ("B", 40, 0), ("C", 45, 20), ("total", 135, 23)], "cell n_clients events"
    )
    out = suppress(cells, spec, K)
    assert flags(out) == {"A": True, "B": True, "C": True, "total": False}


def test_two_way_table_protects_rows_and_columns():
    # clinics x months with clinic totals (month 'all') and service rows (clinic 'S'):
    #            m1   m2   all
    #   X         4   30    34      X/m1 is primary (4 clients)
    #   Y        20   25    45
    #   S        24   55    79
    # Column m1: X/m1 = S/m1 - Y/m1, so Y/m1 goes. Row X: X/m1 = X/all - X/m2, so X/m2
    # goes. Row Y: Y/m1 = Y/all - Y/m2, so Y/m2 goes. Column m2 then has X/m2 and Y/m2
    # hidden, summing to 55 clients' worth: protected. Four unknowns, three independent
    # equations: no cell can be solved for.
    rows = []
    for clinic, m1, m2 in (("X", 4, 30), ("Y", 20, 25), ("S", 24, 55)):
        rows += [(clinic, "m1", m1), (clinic, "m2", m2), (clinic, "all", m1 + m2)]
    cells = frame(rows, "clinic month n_clients")
    spec = CellSpec(
        keys=("clinic", "month"),
        additive=(
            Additive(by=("month",), over="clinic", total="S"),
            Additive(by=("clinic",), over="month", total="all"),
        ),
    )
    out = suppress(cells, spec, K)
    hidden = {
        (c, m) for c, m, f in zip(out["clinic"], out["month"], out[SUPPRESSED], strict=True) if f
    }
    assert hidden == {("X", "m1"), ("Y", "m1"), ("X", "m2"), ("Y", "m2")}
    assert_protected(cells, out, spec)


def test_replicas_are_suppressed_together():
    # the same window total shown in two breakdowns: if one copy goes, so does the other
    cells = frame([("a", 5, "q"), ("b", 50, "q"), ("c", 50, None)], "cell n_clients quantity")
    out = suppress(cells, CellSpec(keys=("cell", "quantity"), same_as="quantity"), K)
    assert flags(out) == {"a": True, "b": True, "c": False}


# --------------------------------------------------------------------------
# cumulative series


def test_a_cumulative_curve_only_shows_steps_of_0_or_at_least_k():
    # cumulative improved by session: 0, 12, 15, 15, 30, 31 (population 60 clients).
    # 15 - 12 = 3 would publish 3 clients: suppressed; the next 15 is 3 above the last
    # shown (12): suppressed too; 30 - 12 = 18: shown; 31 - 30 = 1: suppressed.
    cells = frame(
        [(s, 60, n) for s, n in zip(range(1, 7), (0, 12, 15, 15, 30, 31), strict=True)],
        "session n_clients numerator",
    )
    spec = CellSpec(
        keys=("session",), cumulative=(Cumulative(by=(), order="session", counts=("numerator",)),)
    )
    out = suppress(cells, spec, K)
    assert flags(out, "session") == {1: False, 2: False, 3: True, 4: True, 5: False, 6: True}
    assert set(out.loc[out[SUPPRESSED], REASON]) == {STEP}


# --------------------------------------------------------------------------
# rounding, guards, CSV


def test_rounding_to_5_rounds_published_counts_half_up_and_keeps_rates():
    cells = frame([("a", 12, 13, 0.4333), ("b", 22, 12.5, 0.5682)], "cell n_clients num value")
    out = suppress(cells, CellSpec(keys=("cell",), rounded=("n_clients", "num")), K, 5)
    assert list(out["n_clients"]) == [10, 20]
    assert list(out["num"]) == [15, 15]  # 13 -> 15, 12.5 -> 15 (half up)
    assert list(out["value"]) == [0.4333, 0.5682]
    assert round_count(None, 5) is None and round_count(2, 5) == 0


def test_figures_refuse_unsuppressed_frames():
    raw = frame([("a", 12)], "cell n_clients")
    with pytest.raises(ValueError, match="suppress"):
        require_suppressed(raw)
    out = suppress(raw, CellSpec(keys=("cell",)), K)
    assert require_suppressed(out) is out
    assert len(published(out)) == 1


@pytest.mark.parametrize(
    "text,expected",
    [
        ('=HYPERLINK("x")', '\'=HYPERLINK("x")'),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("C1", "C1"),
        ("", ""),
    ],
)
def test_formula_injection_guard(text, expected):
    assert escape_formula(text) == expected


def test_published_csv_escapes_text_and_leaves_numbers(tmp_path):
    out = suppress(
        frame([("=cmd|' /C calc'!A0", 12, -0.5), ("C2", 3, 0.25)], "clinic_id n_clients value"),
        CellSpec(keys=("clinic_id",)),
        K,
    )
    path = write_csv(out, tmp_path / "cells.csv")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["clinic_id"] == "'=cmd|' /C calc'!A0"
    assert rows[0]["value"] == "-0.5"  # a number is not text: unchanged
    assert rows[1]["value"] == "" and rows[1][SUPPRESSED] == "True"
    assert list(csv_safe(pd.DataFrame({"-x": ["+y"]})).columns) == ["'-x"]
    with pytest.raises(ValueError):
        write_csv(pd.DataFrame({"a": [1]}), tmp_path / "raw.csv")


# --------------------------------------------------------------------------
# the attacker: nothing published, nothing recoverable, rests on fewer than k


def assert_protected(raw: pd.DataFrame, out: pd.DataFrame, spec: CellSpec, k: int = K) -> None:
    """Independent check of a published frame against its raw cells.

    1. every published cell rests on >= k clients and its small counts are 0 or >= k;
    2. for every equation whose total is published: the suppressed parts are none, or
       their sum (total minus the published parts) includes a part on >= k clients and
       its small counts add up to 0 or >= k;
    3. a suppressed total is never the only unknown of its equation.
    """
    raw = raw.reset_index(drop=True)
    hidden = out[SUPPRESSED].to_numpy()
    n = pd.to_numeric(raw[spec.clients], errors="coerce").fillna(0)
    for i in range(len(raw)):
        if hidden[i]:
            continue
        assert n[i] >= k, f"published cell rests on {n[i]} clients: {raw.iloc[i].to_dict()}"
        for c in spec.small_counts:
            v = pd.to_numeric(pd.Series([raw[c].iloc[i]]), errors="coerce").iloc[0]
            assert pd.isna(v) or v == 0 or v >= k, f"published {c} = {v}: {raw.iloc[i].to_dict()}"
    for series in spec.cumulative:
        for _, rows in raw.assign(_hidden=hidden).groupby(list(series.by), dropna=False):
            shown = rows[~rows["_hidden"]].sort_values(series.order)
            for c in series.counts:
                steps = pd.to_numeric(shown[c], errors="coerce").diff().abs().dropna()
                assert ((steps == 0) | (steps >= k)).all(), f"{c} steps {list(steps)}"
    for eq in spec.additive:
        groups: dict[tuple, dict[str, list[int]]] = defaultdict(lambda: {"total": [], "parts": []})
        for i, row in raw.iterrows():
            key = tuple(None if pd.isna(row[b]) else row[b] for b in eq.by)
            groups[key]["total" if row[eq.over] == eq.total else "parts"].append(i)
        for key, g in groups.items():
            if not g["total"] or not g["parts"]:
                continue
            total = g["total"][0]
            gone = [i for i in g["parts"] if hidden[i]]
            if hidden[total]:
                assert gone, f"{key}: the total is the only unknown: sum of the parts gives it"
                continue
            if not gone:
                continue
            assert max(n[i] for i in gone) >= k, (
                f"{key}: total minus published parts recovers cells on {[n[i] for i in gone]} "
                "clients"
            )
            for c in spec.small_counts:
                s = pd.to_numeric(raw.loc[gone, c], errors="coerce").fillna(0).sum()
                assert s == 0 or s >= k, f"{key}: {c} recoverable by subtraction = {s}"
            if len(gone) == 1:
                pytest.fail(f"{key}: a single suppressed part is the total minus the rest")


TINY = {"C1": 40, "C2": 25, "C3": 4}


@pytest.fixture(scope="module")
def tiny_network():
    """Two small clinics and a tiny one (C3: 4 clients), as of 2026-06-30."""
    con = synthetic_warehouse(seed=11, clients=TINY)
    yield con
    con.close()


def test_no_published_number_rests_on_fewer_than_k_clients(tiny_network):
    period = reports.reporting_period(pd.Timestamp("2026-06-30").date())
    raw = reports.raw_qi_sections(tiny_network, period)
    published_sections = reports.qi_sections(tiny_network, Settings(), period)
    checked = 0
    for name, section in raw.items():
        assert section.frame is not None, f"{name}: {section.missing}"
        out = suppress(section.frame, reports.SPECS[name], K)
        # what the report publishes is exactly this (the section queries are ordered)
        pd.testing.assert_frame_equal(out, published_sections[name].frame)
        assert_protected(section.frame, out, reports.SPECS[name])
        checked += int((~out[SUPPRESSED]).sum())
    assert checked > 0  # something is published: the check is not vacuous

    # The tiny clinic shows nothing but 'suppressed', and wherever it is a part of a
    # published service total, another clinic is suppressed with it.
    for name, section in published_sections.items():
        frame = section.frame
        if "clinic_id" not in frame.columns:
            continue
        tiny = frame[frame["clinic_id"] == "C3"]
        assert tiny[SUPPRESSED].all(), f"{name}: C3 published {tiny[~tiny[SUPPRESSED]]}"
        spec = reports.SPECS[name]
        by_clinic = [a for a in spec.additive if a.over == "clinic_id"]
        for eq in by_clinic:
            for key, group in frame.groupby(list(eq.by), dropna=False):
                service = group[group["clinic_id"] == SERVICE_KEY]
                others = group[~group["clinic_id"].isin([SERVICE_KEY, "C3"])]
                if (
                    "C3" in set(group["clinic_id"])
                    and len(service)
                    and not service[SUPPRESSED].iloc[0]
                ):
                    assert others[SUPPRESSED].any(), f"{name} {key}: C3 = service - others"


def test_the_tiny_clinic_page_prints_no_number(tiny_network, tmp_path):
    settings = Settings(reports_dir=tmp_path)
    result = reports.build_qi_report(tiny_network, settings)
    page = (tmp_path / "qi_report" / "clinic_C3.html").read_text(encoding="utf-8")
    body = page[page.index("<main>") : page.index("</main>")]
    tiles = body[body.index('class="tiles"') : body.index("</section>")]
    assert "suppressed" in tiles
    assert "%" not in tiles.replace("pp", "")  # no rate printed in the C3 tiles
    assert result.suppressed > 0


# ---------------------------------------------------------------- rates over one denominator


def _kpi_pair(first: str, second: str, den: int, a: int, b: int, clients=(60, 60)):
    from assets.reports import with_kpi_counts

    rows = [
        {
            "clinic_id": "C1",
            "kpi": kpi,
            "instrument": "",
            "breakdown": "month",
            "band": "2026-02",
            "period": pd.Timestamp("2026-02-01"),
            "numerator": num,
            "denominator": den,
            "value": num / den,
            "n_clients": n,
            "n_episodes": n,
            "quantity": None,
        }
        for kpi, num, n in [(first, a, clients[0]), (second, b, clients[1])]
    ]
    return with_kpi_counts(pd.DataFrame(rows))


def test_attendance_and_dna_do_not_give_away_late_cancellations():
    from assets.reports import KPI_SPEC

    # 103 sessions, 88 attended, 13 DNA: both published would show 2 late cancellations
    out = suppress(_kpi_pair("attendance_rate", "dna_rate", 103, 88, 13), KPI_SPEC, k=10)
    assert out["suppressed"].tolist() == [True, True]
    assert "sibling_rest" not in out.columns and "siblings" not in out.columns
    # 100 = 80 + 10 + 10 late cancellations: nothing small, both published
    out = suppress(_kpi_pair("attendance_rate", "dna_rate", 100, 80, 10), KPI_SPEC, k=10)
    assert out["suppressed"].tolist() == [False, False]


def test_recovery_and_reliable_recovery_do_not_give_away_their_difference():
    from assets.reports import KPI_SPEC

    # 40 at caseness, 20 recovered, 17 reliably: 3 recovered but not reliably
    out = suppress(_kpi_pair("recovery_rate", "reliable_recovery_rate", 40, 20, 17), KPI_SPEC, 10)
    assert out["suppressed"].tolist() == [True, True]
    out = suppress(_kpi_pair("recovery_rate", "reliable_recovery_rate", 40, 20, 20), KPI_SPEC, 10)
    assert out["suppressed"].tolist() == [False, False]


def test_a_suppressed_rate_takes_its_sibling_over_the_same_denominator_with_it():
    from assets.reports import KPI_SPEC

    # DNA rests on 8 clients (fewer than k); attendance on the same 44 sessions
    # would publish the suppressed cell's denominator
    pair = _kpi_pair("attendance_rate", "dna_rate", 44, 24, 10, clients=(30, 8))
    out = suppress(pair, KPI_SPEC, k=10)
    assert out["suppression"].tolist() == ["complementary", "fewer_than_k"]
