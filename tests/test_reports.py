"""Report assets: periods, sections present or "not available", pages written offline.

The warehouse comes from ``tests.factories.make_warehouse`` filled by a seeded
synthetic clinic network (``synthetic_tables``) plus the real mart builders
(``build_marts``), so the reports are built from exactly the SQL the pipeline
runs. The browser test reuses both.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import random
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import plotly.io as pio
import pytest

from assets import figures, reports
from schemas.registry import load_registry
from schemas.settings import Settings
from tests.factories import make_warehouse

AS_OF = "2026-06-30"

# --------------------------------------------------------------------------
# synthetic warehouse (shared with tests/test_reports_browser.py)

CLINICS = {"C1": ("T11", "T12", "T13"), "C2": ("T21", "T22"), "C3": ("T31",)}
CLIENTS = {"C1": 220, "C2": 140, "C3": 6}
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
GENDERS = ("female", "male", "not_stated")


def synthetic_tables(
    seed: int = 7, as_of: str = AS_OF, clients: dict[str, int] | None = None
) -> dict[str, list[dict]]:
    """A small clinic network: two clinics with enough clients, one tiny clinic (C3).

    Weekly sessions from a start date in the 18 months before as-of; PHQ-9 and
    GAD-7 improve on average (some deteriorate), SRS at each attended session,
    risk item responses now and then; past sessions are held or missed at
    random, later ones booked.
    """
    rng = random.Random(seed)
    clients = clients or CLIENTS
    cut = dt.date.fromisoformat(as_of)
    episodes, sessions, assessments, risk = [], [], [], []
    n = 0
    for clinic, clinicians in CLINICS.items():
        for _ in range(clients.get(clinic, 0)):
            n += 1
            eid, cid = f"E{n:04d}", f"P{n:04d}"
            start = cut - dt.timedelta(days=rng.randint(20, 540))
            planned = rng.randint(4, 16)
            drop_after = rng.randint(1, planned) if rng.random() < 0.22 else None
            phq, gad = rng.uniform(8, 24), rng.uniform(6, 19)
            slope = rng.uniform(-1.4, 0.35)
            held, last_day = 0, start
            for s in range(planned):
                day = start + dt.timedelta(days=7 * s)
                at = dt.datetime.combine(day, dt.time(10, 0))
                sid = f"{eid}-S{s + 1:02d}"
                if day > cut:
                    status = "booked"
                elif drop_after is not None and s >= drop_after:
                    break
                else:
                    status = rng.choices(
                        ["attended", "no_show", "late_cancelled", "client_cancelled"],
                        [0.8, 0.09, 0.05, 0.06],
                    )[0]
                sessions.append(
                    {
                        "session_id": sid,
                        "episode_id": eid,
                        "client_id": cid,
                        "clinician_id": clinicians[n % len(clinicians)],
                        "scheduled_at": at,
                        "status": status,
                        "session_type": "assessment" if s == 0 else "treatment",
                    }
                )
                if status != "attended":
                    continue
                held += 1
                last_day = day
                noise = rng.uniform(-2, 2)
                phq_s = min(27, max(0, round(phq + slope * held + noise)))
                gad_s = min(21, max(0, round(gad + 0.8 * slope * held + noise)))
                srs_s = min(40, max(0, round(rng.uniform(27, 40), 1)))
                for code, total in (("PHQ-9", phq_s), ("GAD-7", gad_s), ("SRS", srs_s)):
                    aid = f"{sid}-{code}"
                    assessments.append(
                        {
                            "assessment_id": aid,
                            "episode_id": eid,
                            "client_id": cid,
                            "session_id": sid,
                            "instrument": code,
                            "administered_at": at + dt.timedelta(minutes=5),
                            "total": float(total),
                        }
                    )
                    if code == "PHQ-9":
                        risk.append(
                            {
                                "assessment_id": aid,
                                "episode_id": eid,
                                "client_id": cid,
                                "instrument": code,
                                "administered_at": at + dt.timedelta(minutes=5),
                                "item": 9,
                                "score": float(rng.random() < 0.04),
                            }
                        )
            ended = drop_after is not None or start + dt.timedelta(days=7 * planned) < cut
            end_reason = None
            if ended and drop_after is not None:
                end_reason = "dropout"
            elif ended:
                end_reason = rng.choices(["completed", "mutual_agreement", "other"], [8, 1, 1])[0]
            if ended and rng.random() < 0.08:  # some just stop coming: disengaged, no end date
                ended, end_reason = False, None
            episodes.append(
                {
                    "episode_id": eid,
                    "client_id": cid,
                    "clinic_id": clinic,
                    "clinician_id": clinicians[n % len(clinicians)],
                    "start_date": start,
                    "end_date": max(last_day, start) if ended else None,
                    "end_reason": end_reason,
                    "age_band": rng.choice(AGE_BANDS),
                    "gender": rng.choice(GENDERS),
                }
            )
    return {
        "episodes": episodes,
        "sessions": sessions,
        "assessments": assessments,
        "risk_responses": risk,
    }


def build_marts(con: duckdb.DuckDBPyConnection, settings: Settings | None = None) -> None:
    """Every mart the reports read, with the pipeline's own builders, in dependency order."""
    from assets.alliance import (
        build_alliance_monthly,
        build_episode_alliance,
        build_session_alliance,
    )
    from assets.clinicians import build_clinician_marts
    from assets.core_marts import (
        build_alerts,
        build_episode_attendance,
        build_episode_outcomes,
        build_scores,
    )
    from assets.engagement import build_dose_response, build_retention_curve
    from assets.etr import build_etr
    from assets.service_kpis import build_clinic_kpis, build_clinic_kpis_episodes

    settings = settings or Settings()
    build_scores(con)
    build_episode_attendance(con, settings)
    build_episode_outcomes(con)
    build_etr(con, settings)
    build_alerts(con)
    build_clinic_kpis_episodes(con)
    build_clinic_kpis(con)
    build_clinician_marts(con)
    build_retention_curve(con)
    build_dose_response(con)
    build_session_alliance(con, settings)
    build_episode_alliance(con, settings)
    build_alliance_monthly(con)


def synthetic_warehouse(
    path: Path | str = ":memory:", seed: int = 7, clients: dict[str, int] | None = None
) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    make_warehouse(con, as_of=AS_OF, **synthetic_tables(seed, clients=clients))
    build_marts(con)
    return con


@pytest.fixture(scope="module")
def warehouse() -> duckdb.DuckDBPyConnection:
    con = synthetic_warehouse()
    yield con
    con.close()


@pytest.fixture(scope="module")
def built(
    warehouse, tmp_path_factory
) -> tuple[Settings, reports.ReportResult, reports.ReportResult]:
    out = tmp_path_factory.mktemp("reports")
    settings = Settings(reports_dir=out)
    qi = reports.build_qi_report(warehouse, settings)
    caseload = reports.build_caseload_reports(warehouse, settings)
    return settings, qi, caseload


# --------------------------------------------------------------------------
# reporting period


@pytest.mark.parametrize(
    "as_of,month,expected,window_start,previous",
    [
        # as-of on the last day of June: June is complete
        ("2026-06-30", None, "2026-06-01", "2025-07-01", "2026-05-01"),
        # one day earlier: June is not complete yet, May is reported
        ("2026-06-29", None, "2026-05-01", "2025-06-01", "2026-04-01"),
        # January wraps to the previous year
        ("2026-01-15", None, "2025-12-01", "2025-01-01", "2025-11-01"),
        # an explicit month wins
        ("2026-06-30", "2026-03", "2026-03-01", "2025-04-01", "2026-02-01"),
    ],
)
def test_reporting_period(as_of, month, expected, window_start, previous):
    period = reports.reporting_period(dt.date.fromisoformat(as_of), month)
    assert period.month == dt.date.fromisoformat(expected)
    assert period.window_start == dt.date.fromisoformat(window_start)  # 12 months incl. month
    assert period.previous == dt.date.fromisoformat(previous)


def test_reporting_period_rejects_a_bad_month():
    with pytest.raises(ValueError, match="YYYY-MM"):
        reports.reporting_period(dt.date(2026, 6, 30), "June")


# --------------------------------------------------------------------------
# tiles: value, change against the previous month, n


def tile_sections(rows: list[dict]) -> dict[str, reports.Section]:
    frame = pd.DataFrame(rows)
    for column, default in (("instrument", ""), ("breakdown", "month"), ("quantity", None)):
        frame[column] = default
    frame["band"] = [p.strftime("%Y-%m") for p in frame["period"]]
    published = reports.suppress(reports.with_kpi_counts(frame), reports.KPI_SPEC, k=10)
    return {"kpis": reports.Section("kpis", published), "alliance": reports.Section("alliance")}


def test_tiles_show_the_change_in_percentage_points_and_its_direction():
    june, may = pd.Timestamp("2026-06-01"), pd.Timestamp("2026-05-01")
    period = reports.reporting_period(dt.date(2026, 6, 30))
    rows = [
        # attendance 30/40 = 75% in June, 28/40 = 70% in May: +5.0 pp, better (36/40
        # would be suppressed: 4 missed appointments follow from the rate and n)
        {
            "clinic_id": "C1",
            "kpi": "attendance_rate",
            "period": june,
            "numerator": 30,
            "denominator": 40,
            "value": 0.75,
            "n_clients": 20,
            "n_episodes": 20,
        },
        {
            "clinic_id": "C1",
            "kpi": "attendance_rate",
            "period": may,
            "numerator": 28,
            "denominator": 40,
            "value": 0.70,
            "n_clients": 20,
            "n_episodes": 20,
        },
        # DNA 12/100 in June, 10/100 in May: +2.0 pp, worse
        {
            "clinic_id": "C1",
            "kpi": "dna_rate",
            "period": june,
            "numerator": 12,
            "denominator": 100,
            "value": 0.12,
            "n_clients": 30,
            "n_episodes": 30,
        },
        {
            "clinic_id": "C1",
            "kpi": "dna_rate",
            "period": may,
            "numerator": 10,
            "denominator": 100,
            "value": 0.10,
            "n_clients": 30,
            "n_episodes": 30,
        },
        # dropout: June fine, May rests on 6 clients -> suppressed, no change shown
        {
            "clinic_id": "C1",
            "kpi": "dropout_rate",
            "period": june,
            "numerator": 10,
            "denominator": 40,
            "value": 0.25,
            "n_clients": 40,
            "n_episodes": 40,
        },
        {
            "clinic_id": "C1",
            "kpi": "dropout_rate",
            "period": may,
            "numerator": 0,
            "denominator": 6,
            "value": 0.0,
            "n_clients": 6,
            "n_episodes": 6,
        },
    ]
    sections = tile_sections(rows)
    tile = {t.kpi: t for t in reports.TILES}
    attendance = reports._tile_html(tile["attendance_rate"], sections, "C1", period)
    assert "75.0%" in attendance and "+5.0 pp vs May 2026" in attendance
    assert 'class="change better"' in attendance and "n = 40" in attendance
    dna = reports._tile_html(tile["dna_rate"], sections, "C1", period)
    assert "12.0%" in dna and "+2.0 pp" in dna and 'class="change worse"' in dna
    dropout = reports._tile_html(tile["dropout_rate"], sections, "C1", period)
    assert "25.0%" in dropout and "May 2026 suppressed" in dropout
    recovery = reports._tile_html(tile["recovery_rate"], sections, "C1", period)
    assert "no data this month" in recovery
    srs = reports._tile_html(tile["mean_srs"], sections, "C1", period)
    assert "not available" in srs


# --------------------------------------------------------------------------
# the built reports


def test_equity_window_totals_add_up_from_the_monthly_kpis(warehouse):
    """The window totals that tie months and bands together (one equation for the
    suppression) are the sums of marts.clinic_kpis' monthly cells."""
    period = reports.reporting_period(dt.date(2026, 6, 30))
    cells = reports.raw_qi_sections(warehouse, period)["kpis"].frame
    months = cells[(cells["breakdown"] == "month") & (cells["band"] != reports.ALL)]
    totals = cells[(cells["breakdown"] == "month") & (cells["band"] == reports.ALL)]
    assert len(totals) >= 4 * 4  # 4 KPIs x (3 clinics + service)
    for row in totals.itertuples():
        same = months[
            (months["clinic_id"] == row.clinic_id)
            & (months["kpi"] == row.kpi)
            & (months["instrument"] == row.instrument)
        ]
        assert same["numerator"].sum() == row.numerator, row
        assert same["denominator"].sum() == row.denominator, row
    # and every age band row adds up to the same total
    ages = cells[(cells["breakdown"] == "age_band") & (cells["band"] != reports.ALL)]
    for row in totals.itertuples():
        same = ages[(ages["clinic_id"] == row.clinic_id) & (ages["kpi"] == row.kpi)]
        assert same["denominator"].sum() == row.denominator


def test_equity_client_counts_are_distinct_clients_when_clients_have_several_episodes():
    """n_clients of the equity cells, against a plain distinct count in pandas.

    The query counts clients with one episode by rows and only the others with
    count(DISTINCT): here every third client gets a second and third episode
    (in either clinic), so both parts are exercised."""
    con = synthetic_warehouse()
    try:
        for table in ("staging.episodes", "marts.clinic_kpis_episodes"):
            con.execute(f"""
                UPDATE {table} SET client_id = m.merged
                FROM (SELECT episode_id,
                             'M' || (row_number() OVER (ORDER BY episode_id) // 3) AS merged
                      FROM staging.episodes) AS m
                WHERE {table}.episode_id = m.episode_id
                  AND hash(m.episode_id) % 3 = 0
            """)
        repeat = con.execute(
            "SELECT count(*) FROM (SELECT client_id FROM staging.episodes "
            "GROUP BY 1 HAVING count(*) > 1)"
        ).fetchall()[0][0]
        assert repeat > 10
        period = reports.reporting_period(dt.date(2026, 6, 30))
        cells = reports.raw_qi_sections(con, period)["kpis"].frame
        eps = con.execute(
            "SELECT k.*, coalesce(nullif(trim(e.age_band), ''), 'not recorded') AS age_band, "
            "coalesce(nullif(trim(e.gender), ''), 'not recorded') AS gender "
            "FROM marts.clinic_kpis_episodes k JOIN staging.episodes e USING (episode_id) "
            "WHERE k.ended_month BETWEEN ? AND ?",
            [period.window_start, period.month],
        ).df()
    finally:
        con.close()
    finished = eps["finished"].fillna(False) & eps["pair_paired"].fillna(False)
    units = {
        "dropout_rate": eps[eps["ended_on"].notna()],
        "recovery_rate": eps[finished & eps["caseness_start"].fillna(False)],
        "reliable_improvement_rate": eps[finished],
        "reliable_deterioration_rate": eps[finished],
    }
    checked = 0
    for kpi, frame in units.items():
        for breakdown in ("age_band", "gender"):
            mine = cells[(cells["kpi"] == kpi) & (cells["breakdown"] == breakdown)]
            for row in mine.itertuples():
                sub = frame
                if row.clinic_id != reports.SERVICE_KEY:
                    sub = sub[sub["clinic_id"] == row.clinic_id]
                if row.band != reports.ALL:
                    sub = sub[sub[breakdown] == row.band]
                assert row.n_clients == sub["client_id"].nunique(), row
                assert row.n_episodes == len(sub), row
                checked += 1
    assert checked > 50


def test_pages_are_written_with_plotly_js_once_and_no_remote_resource(built):
    settings, qi, caseload = built
    folder = settings.reports_dir / "qi_report"
    assert {p.name for p in qi.pages} == {
        "service.html",
        "clinic_C1.html",
        "clinic_C2.html",
        "clinic_C3.html",
    }
    assert qi.main == folder / "service.html"
    full, basic = reports.plotly_js("full"), reports.plotly_js("basic")
    pages = [(p, full) for p in qi.pages] + [(p, basic) for p in caseload.pages]
    for path, bundle in pages:
        page = path.read_text(encoding="utf-8")
        assert page.count(bundle[:300]) == 1, path.name  # plotly.js embedded exactly once
        other = basic if bundle is full else full
        assert other[:300] not in page, path.name  # and only that bundle
        assert page.count("Plotly.newPlot") >= 1
        ours = page.replace(bundle, "")  # the page without the library's own text
        assert not re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", ours), path.name
        assert "<script src" not in ours and "<link" not in ours
        assert "cdn.plot.ly" not in ours
        assert "Content-Security-Policy" in page and "default-src 'none'" in page
    index = (settings.reports_dir / "index.html").read_text(encoding="utf-8")
    assert 'href="qi_report/service.html"' in index
    assert 'href="therapist_caseload/clinician_T11.html"' in index


def test_vendored_basic_bundle_is_the_plotly_js_of_the_pinned_plotly():
    """assets/vendor/plotly-basic.min.js: the version plotly.py bundles, and the file
    the vendor README names (its checksum). After a plotly upgrade this fails with
    the version to vendor."""
    version = re.compile(r"plotly\.js (?:\([^)]*\) )?v(\d+\.\d+\.\d+)")
    full = version.search(reports.plotly_js("full")[:500])
    basic = version.search(reports.plotly_js("basic")[:500])
    assert full and basic
    assert "(basic - minified)" in reports.plotly_js("basic")[:200]
    assert basic.group(1) == full.group(1), f"vendor plotly.js-basic-dist-min@{full.group(1)}"
    readme = (reports.BASIC_BUNDLE.parent / "README.md").read_text(encoding="utf-8")
    digest = hashlib.sha256(reports.BASIC_BUNDLE.read_bytes()).hexdigest()
    assert f"`{digest}`" in readme and f"v{basic.group(1)}" in readme


def test_caseload_charts_use_only_trace_types_of_the_basic_bundle():
    """Every chart of a caseload card is a ``trajectory_spec``: with sessions, alliance
    and the expected range, every trace it can draw is one the basic bundle has."""
    times = pd.to_datetime(["2026-01-05", "2026-01-19", "2026-02-02"])
    spec = figures.trajectory_spec(
        {"administered_at": times, "total": [18.0, 12.0, 7.0]},
        "PHQ-9",
        sessions={
            "scheduled_at": times,
            "status": ["attended", "no_show", "attended"],
        },
        alliance={"administered_at": times[:2], "total": [30.0, 36.0]},
        alliance_instrument="SRS",
        expected={
            "administered_at": times,
            "expected_score": [18.0, 14.0, 11.0],
            "tolerance_lower": [15.0, 10.0, 7.0],
            "tolerance_upper": [21.0, 18.0, 15.0],
        },
    )
    types = {trace.get("type") for trace in spec["data"]}
    assert len(spec["data"]) >= 5 and types <= reports.BASIC_TRACE_TYPES


def test_a_caseload_page_draws_every_chart_in_a_browser(built, tmp_path):
    """The caseload page with the basic bundle, rendered by headless Chromium: one
    plotly graph per chart, each with its SVG. Skipped without a Chromium."""
    chrome = reports.find_chrome()
    if chrome is None:
        pytest.skip("no Chromium")
    _, _, caseload = built
    path = max(caseload.pages, key=lambda p: p.stat().st_size)
    charts = path.read_text(encoding="utf-8").count("Plotly.newPlot(")
    assert charts >= 2
    result = subprocess.run(
        [
            chrome,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    dom = result.stdout
    assert dom.count('class="plot-container plotly"') == charts, result.stderr[-2000:]
    assert dom.count('class="main-svg"') >= charts
    assert 'class="trace scatter' in dom


def test_service_page_has_every_section_with_numbers(built):
    settings, qi, _ = built
    page = (settings.reports_dir / "qi_report" / "service.html").read_text(encoding="utf-8")
    for heading in (
        "Headline KPIs, June 2026",
        "Monthly trends",
        "Outcome categories per instrument",
        "Effect size against the benchmark",
        "Retention",
        "Dose-response",
        "Measurement completeness",
        "Clinician comparison (funnel plot)",
        "Equity",
        "Alerts",
        "Not-on-track alert on the clinic&#x27;s own history",
        "Methods",
    ):
        assert heading in page, heading
    assert "Not available" not in page
    # the methods box prints the registry's thresholds, the data cut date and the run id
    assert "<td>PHQ-9</td>" in page and "&ge; 10" in page and "&ge; 6 points" in page
    assert "2026-06-30" in page and "test-run" in page
    assert all(status.endswith("suppressed") for status in qi.sections.values())


def test_published_csv_holds_no_small_cell(built):
    settings, qi, _ = built
    frame = pd.read_csv(settings.reports_dir / "qi_report" / "kpis_published.csv")
    assert "events" not in frame.columns and "non_events" not in frame.columns
    shown = frame[~frame["suppressed"]]
    assert (shown["n_clients"] >= 10).all()
    rates = shown[shown["kpi"] != "median_days_between_measures"]
    for column in ("numerator",):
        values = rates[column]
        assert ((values == 0) | (values >= 10)).all()
    assert frame.loc[frame["suppressed"], ["value", "numerator", "n_clients"]].isna().all().all()


def test_caseload_pages_show_each_clinicians_open_episodes_only(built, warehouse):
    settings, _, caseload = built
    open_episodes = warehouse.execute(
        "SELECT clinician_id, episode_id, client_id FROM marts.episode_attendance "
        "WHERE status IN ('open', 'disengaged')"
    ).df()
    for clinician, eps in open_episodes.groupby("clinician_id"):
        page = settings.reports_dir / "therapist_caseload" / f"clinician_{clinician}.html"
        text = page.read_text(encoding="utf-8")
        assert text.count('class="episode"') == len(eps)
        for eid in eps["episode_id"]:
            assert f"Episode {eid}" in text
        others = open_episodes[open_episodes["clinician_id"] != clinician]
        assert not any(f"Episode {eid} " in text for eid in others["episode_id"])
        assert "gender" not in text.lower().replace("no gender", "")
    assert len(caseload.pages) == open_episodes["clinician_id"].nunique()


def _cards(text: str) -> dict[str, str]:
    parts = text.split('<div class="episode" id="ep-')[1:]
    return {part.split('"', 1)[0]: part for part in parts}


def _trajectory(card: str) -> dict:
    """The data and layout of the card's chart, as the page hands them to plotly.js."""
    decoder = json.JSONDecoder()
    start = card.index("[", card.index("Plotly.newPlot("))
    data, end = decoder.raw_decode(card, start)
    layout, _ = decoder.raw_decode(card, card.index("{", end))
    return {"data": data, "layout": layout}


def test_caseload_cards_show_each_episodes_own_rows(built, warehouse):
    """Every card against a per-episode reading of the marts (the pages read each frame
    once, sliced by episode: a slice off by one would show a neighbour's rows)."""
    settings, _, caseload = built
    cards = {}
    for path in caseload.pages:
        cards |= _cards(path.read_text(encoding="utf-8"))
    open_episodes = warehouse.execute(
        "SELECT episode_id FROM marts.episode_attendance WHERE status IN ('open', 'disengaged')"
    ).fetchall()
    assert len(cards) == len(open_episodes) > 20
    symptom = {
        code
        for (code,) in warehouse.execute(
            "SELECT code FROM staging.instruments WHERE construct = 'symptom'"
        ).fetchall()
    }
    many_alerts = 0
    for (eid,) in open_episodes:
        card = cards[eid]
        scores = warehouse.execute(
            "SELECT instrument, administered_at, total FROM marts.scores WHERE episode_id = ? "
            "ORDER BY instrument, administered_at",
            [eid],
        ).df()
        for code, rows in scores.groupby("instrument"):
            last = rows.iloc[-1]
            assert (
                f"<td>{code}</td><td class='num'>{last['total']:g}</td>"
                f"<td>{last['administered_at']:%Y-%m-%d}</td>"
            ) in card, (eid, code)
        alerts = warehouse.execute(
            "SELECT raised_at FROM marts.alerts WHERE episode_id = ? ORDER BY raised_at DESC",
            [eid],
        ).fetchall()
        if alerts:
            assert f"<h4>Open alerts ({len(alerts)})</h4>" in card
            shown = re.findall(r"<li class='alert'><strong>[^<]*</strong> ([0-9-]+):", card)
            assert shown == [f"{a:%Y-%m-%d}" for (a,) in alerts[:10]], eid
            many_alerts += len(alerts) > 10
            if len(alerts) > 10:
                assert f"<li>and {len(alerts) - 10} more</li>" in card
        else:
            assert "Open alerts" not in card
        counts = scores[scores["instrument"].isin(symptom)].groupby("instrument").size()
        if counts.empty:
            assert "No symptom scores to draw yet." in card
            continue
        main = sorted(counts.index, key=lambda c: (-counts[c], c))[0]
        figure = _trajectory(card)
        line = next(t for t in figure["data"] if t["name"] == main)
        main_scores = scores[scores["instrument"] == main]
        assert line["y"] == main_scores["total"].tolist(), eid
        assert [pd.Timestamp(x) for x in line["x"]] == main_scores["administered_at"].tolist()
        srs = scores[scores["instrument"] == "SRS"]["total"].tolist()
        alliance = [t["y"] for t in figure["data"] if t["name"] == "SRS (right axis)"]
        assert alliance == ([srs] if srs else []), eid
        assert figure["layout"]["template"] == figures.template_json()
    assert many_alerts  # the synthetic clinic has episodes with more than 10 open alerts


def test_a_plain_figure_is_written_exactly_as_plotly_writes_it(monkeypatch):
    """The caseload writes each chart from plotly's own HTML around a figure, made once,
    and the template's JSON, serialized once: the text must be what pio.to_html writes
    (with its built-in JSON engine), missing values and script-unsafe text included."""
    monkeypatch.setattr(pio.json.config, "default_engine", "json")
    scores = pd.DataFrame(
        {
            "administered_at": pd.to_datetime(["2026-01-05", "2026-02-05", "2026-03-05"]),
            "total": [18.0, float("nan"), 11.0],
        }
    )
    odd = {"code": "X</script><b>", "cutoff": 10, "rc_threshold": 5.2, "total_max": 27}
    for instrument in (load_registry()["PHQ-9"], odd):
        spec = figures.trajectory_spec(scores, instrument, height=360, legend_below=True)
        plotly_html = pio.to_html(
            spec,
            include_plotlyjs=False,
            full_html=False,
            div_id="fig-x-1",
            config=reports.PLOTLY_CONFIG,
            validate=False,
        )
        page = reports.Page("x")
        assert page.figure(spec, "trajectory") == plotly_html
        assert "</script>" not in plotly_html.split("<script", 1)[1].rsplit("</script>", 1)[0]


def test_sections_say_not_available_until_their_mart_exists(tmp_path):
    """Only the core marts: every other section says which mart it waits for."""
    from assets.core_marts import (
        build_alerts,
        build_episode_attendance,
        build_episode_outcomes,
        build_scores,
    )

    con = duckdb.connect()
    make_warehouse(con, as_of=AS_OF, **synthetic_tables(3, clients={"C1": 30}))
    build_scores(con)
    build_episode_attendance(con, Settings())
    build_episode_outcomes(con)
    build_alerts(con, extra_sources=())
    result = reports.build_qi_report(con, Settings(reports_dir=tmp_path))
    page = result.main.read_text(encoding="utf-8")
    for mart in (
        "marts.clinic_kpis",
        "marts.alliance_monthly",
        "marts.retention_curve",
        "marts.dose_response",
        "marts.clinician_adjusted_outcomes",
        "marts.etr_backtest",
    ):
        assert f"Not available: {mart}" in page or f", {mart}" in page, mart
    assert result.sections["alerts"].endswith("suppressed")  # marts.alerts exists
    assert result.sections["kpis"].startswith("not available")
    caseload = reports.build_caseload_reports(con, Settings(reports_dir=tmp_path))
    assert caseload.pages  # trajectories need only scores and attendance
    assert "Not available yet: expected" in caseload.pages[0].read_text(encoding="utf-8")


def test_a_failed_write_leaves_the_previous_reports(tmp_path):
    target = tmp_path / "qi_report"
    reports.write_folder(target, {"service.html": "old"})

    def boom(folder):
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        reports.write_folder(target, {"service.html": "new"}, boom)
    assert (target / "service.html").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["qi_report"]


class Log:
    def __init__(self):
        self.lines: list[str] = []

    def info(self, text):
        self.lines.append(text)

    warning = info


def test_static_export_is_optional_and_says_how_to_enable_it(monkeypatch, tmp_path):
    import sys

    fig = reports.figures.empty_figure("x")
    log = Log()
    monkeypatch.setitem(sys.modules, "kaleido", None)  # import kaleido -> ImportError
    assert reports.export_static({"f": fig}, tmp_path, log) == []
    assert (
        "kaleido is not installed" in log.lines[-1] and "apt-get install chromium" in log.lines[-1]
    )

    monkeypatch.setitem(sys.modules, "kaleido", type(sys)("kaleido"))
    monkeypatch.setattr(reports, "find_chrome", lambda: None)
    assert reports.export_static({"f": fig}, tmp_path, log) == []
    assert "no Chrome/Chromium found" in log.lines[-1]


def test_report_assets_materialize_with_path_and_size(tmp_path):
    import dagster as dg

    from pipelines.resources import OutcomesResource

    path = tmp_path / "warehouse.duckdb"
    synthetic_warehouse(path, clients={"C1": 40, "C2": 20}).close()
    resource = OutcomesResource(warehouse=str(path), reports_dir=str(tmp_path / "out"))
    result = dg.materialize([reports.report_assets], resources={"outcomes": resource})
    assert result.success
    by_key = {
        m.asset_key.to_user_string(): m.metadata
        for m in result.get_asset_materialization_events()
        for m in [m.materialization]
    }
    qi = by_key["reports/qi_report"]
    assert qi["path"].value == str(tmp_path / "out" / "qi_report" / "service.html")
    assert (
        qi["size_bytes"].value == (tmp_path / "out" / "qi_report" / "service.html").stat().st_size
    )
    assert qi["size_bytes"].value > 4_000_000  # plotly.js is inside
    assert qi["period"].value == "2026-06"
    if reports.find_chrome():  # CI installs Chromium: the PNG/PDF export ran beside the pages
        static = sorted((tmp_path / "out" / "qi_report" / "static").iterdir())
        assert qi["static_files"].value == len(static) > 0
        assert {p.suffix for p in static} == {".png", ".pdf"}
        assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")] == []
    caseload = by_key["reports/clinician_caseload"]
    assert caseload["pages"].value >= 1 and caseload["total_bytes"].value > 0


FAKE_WORKER = """
import json, os, sys, threading
options = json.loads(sys.argv[1])
raw = sys.stdin.buffer.read()
if raw.strip():
    items = json.loads(raw)["items"]
    for item in items:
        with open(item["path"], "wb") as fh:
            title = item["fig"]["layout"]["title"]["text"]
            fh.write(json.dumps({"opts": item["opts"], "title": title}).encode())
    print(json.dumps({"written": [i["path"] for i in items]}))
"""


@pytest.fixture
def fake_worker(monkeypatch, tmp_path):
    """The static-export worker's protocol without Chromium (assets/static_export.py)."""
    script = tmp_path / "fake_worker.py"
    script.write_text(FAKE_WORKER)
    monkeypatch.setattr(reports, "STATIC_EXPORT_COMMAND", [sys.executable, str(script)])
    monkeypatch.setattr(reports, "find_chrome", lambda: "/usr/bin/chromium-stand-in")
    monkeypatch.delenv("OUTCOMES_STATIC_EXPORT", raising=False)


def test_static_export_runs_in_its_own_process_and_lands_in_the_published_folder(
    fake_worker, tmp_path
):
    target = tmp_path / "out" / "qi_report"
    target.parent.mkdir()
    (target.parent / ".qi_report.static-99999").mkdir()  # left by a run killed mid-export
    log = Log()
    figs = {
        "Trend one": reports.figures.empty_figure("x", title="one"),
        "Two": reports.figures.empty_figure("x", title="two"),
    }
    with reports.StaticFiles(target, log) as static:
        static.render(figs)
        reports.write_folder(target, {"service.html": "page"})
        placed = static.place(target / "static")
    names = ["01_Trend_one.png", "01_Trend_one.pdf", "02_Two.png", "02_Two.pdf"]
    assert placed == [target / "static" / n for n in names]
    written = [json.loads(p.read_text()) for p in placed]
    assert [w["title"] for w in written] == ["one", "one", "two", "two"]
    assert [w["opts"]["format"] for w in written] == ["png", "pdf", "png", "pdf"]
    assert written[0]["opts"]["width"] == pio.defaults.default_width
    assert log.lines == [f"Static export: 4 files in {target / 'static'}"]  # where they are
    assert sorted(p.name for p in target.parent.iterdir()) == ["qi_report"]


def test_a_failed_report_stops_the_static_export_and_leaves_no_files(fake_worker, tmp_path):
    target = tmp_path / "qi_report"
    reports.write_folder(target, {"service.html": "old"})
    log = Log()
    with (
        pytest.raises(RuntimeError, match="disk full"),
        reports.StaticFiles(target, log),  # started, never given figures
    ):
        raise RuntimeError("disk full")
    assert log.lines == []  # nothing rendered, nothing to say
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "fake_worker.py") == ["qi_report"]
    assert sorted(p.name for p in target.iterdir()) == ["service.html"]


def test_a_broken_static_export_is_a_warning_not_a_failed_report(
    monkeypatch, fake_worker, tmp_path
):
    monkeypatch.setattr(
        reports,
        "STATIC_EXPORT_COMMAND",
        [sys.executable, "-c", "import sys; print('no display'); sys.exit(3)"],
    )
    log = Log()
    assert (
        reports.export_static({"f": reports.figures.empty_figure("x")}, tmp_path / "s", log) == []
    )
    assert log.lines and log.lines[-1].startswith("Static export failed (no display;")
    assert "apt-get install chromium" in log.lines[-1]


def _report_site(tmp_path):
    from pipelines.resources import OutcomesResource

    path = tmp_path / "warehouse.duckdb"
    synthetic_warehouse(path, clients={"C1": 40, "C2": 20}).close()
    return OutcomesResource(warehouse=str(path), reports_dir=str(tmp_path / "out"))


def _materialized(result) -> list[str]:
    return sorted(
        e.materialization.asset_key.to_user_string()
        for e in result.get_asset_materialization_events()
    )


@pytest.mark.parametrize("key", [reports.QI_KEY, reports.CASELOAD_KEY])
def test_each_report_materializes_on_its_own(monkeypatch, tmp_path, key):
    import dagster as dg

    monkeypatch.setenv("OUTCOMES_STATIC_EXPORT", "off")
    result = dg.materialize(
        [reports.report_assets], selection=[key], resources={"outcomes": _report_site(tmp_path)}
    )
    assert result.success and _materialized(result) == [key.to_user_string()]
    folders = sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir())
    assert folders == [reports.QI_DIR if key == reports.QI_KEY else reports.CASELOAD_DIR]


def test_a_failing_caseload_still_publishes_the_qi_report(monkeypatch, tmp_path):
    import dagster as dg

    def boom(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setenv("OUTCOMES_STATIC_EXPORT", "off")
    monkeypatch.setattr(reports, "build_caseload_reports", boom)
    result = dg.materialize(
        [reports.report_assets],
        resources={"outcomes": _report_site(tmp_path)},
        raise_on_error=False,
    )
    assert not result.success
    assert _materialized(result) == ["reports/qi_report"]
    assert (tmp_path / "out" / "qi_report" / "service.html").exists()
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert "No space left on device" in str(failure.event_specific_data.error)


@pytest.mark.skipif(not reports.find_chrome(), reason="needs Chromium (.ci/run installs it)")
def test_kaleido_without_page_reloads_writes_the_same_files(warehouse, tmp_path, monkeypatch):
    """assets/static_export.py keeps kaleido's page between figures (3x faster): every
    PNG and PDF of the service page must be what kaleido's own reloads give."""
    import asyncio
    import re

    from assets import static_export

    monkeypatch.setenv("BROWSER_PATH", reports.find_chrome())
    run = reports.run_info(warehouse)
    period = reports.reporting_period(run["as_of"], None)
    sections = reports.qi_sections(warehouse, Settings(), period)
    page = reports.qi_page(
        warehouse, Settings(), sections, period, run, reports.SERVICE_KEY, ["C1", "C2"]
    )
    figs = [f.to_dict() if hasattr(f, "to_dict") else f for f in page.figures.values()]
    assert len(figs) >= 10

    def files(folder: Path, reload: bool) -> dict[str, bytes]:
        folder.mkdir()
        items = [
            f'{{"fig": {pio.to_json(fig, validate=False)}, "path": "{folder}/{n:02d}.{ext}", '
            f'"opts": {{"format": "{ext}", "width": 700, "height": 500, "scale": 1}}}}'
            for n, fig in enumerate(figs)
            for ext in ("png", "pdf")
        ]
        payload = f'{{"items": [{",".join(items)}]}}'.encode()
        asyncio.run(static_export.render(lambda: payload, {}, reload_between_figures=reload))
        dates = re.compile(rb"/(CreationDate|ModDate) \(D:[^)]*\)")
        return {p.name: dates.sub(b"", p.read_bytes()) for p in sorted(folder.iterdir())}

    kept, reloaded = files(tmp_path / "kept", False), files(tmp_path / "reloaded", True)
    assert len(kept) == 2 * len(figs)
    assert [n for n in kept if kept[n] != reloaded[n]] == []
    assert static_export.kaleido_class() is not static_export.kaleido_class(True)  # in use
