"""The figure library on small hand-made frames: the right traces, axis ranges,
thresholds at the registry's values, and nothing drawn for a suppressed cell."""

from __future__ import annotations

import json
import math

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import pytest

from assets import figures
from assets.suppression import Additive, CellSpec, suppress
from schemas.registry import load_registry

K = 10
REGISTRY = load_registry()


def ts(day: str) -> pd.Timestamp:
    return pd.Timestamp(day)


def by_name(fig, prefix: str):
    exact = [t for t in fig.data if t.name == prefix]
    matches = exact or [t for t in fig.data if (t.name or "").startswith(prefix)]
    assert matches, f"no trace named {prefix!r} in {[t.name for t in fig.data]}"
    return matches[0]


def publish(rows: list[dict], keys: tuple[str, ...], **spec) -> pd.DataFrame:
    return suppress(pd.DataFrame(rows), CellSpec(keys=keys, **spec), K)


# --------------------------------------------------------------------------
# client trajectory


SCORES = pd.DataFrame(
    {
        "administered_at": [ts("2026-03-02 10:05"), ts("2026-03-16 10:05"), ts("2026-03-30 10:05")],
        "total": [18.0, 14.0, 9.0],
    }
)
SESSIONS = pd.DataFrame(
    {
        "scheduled_at": [
            ts(d)
            for d in (
                "2026-03-02",
                "2026-03-09",
                "2026-03-16",
                "2026-03-23",
                "2026-03-30",
                "2026-04-06",
            )
        ],
        "status": [
            "attended",
            "no_show",
            "attended",
            "client_cancelled",
            "attended",
            "late_cancelled",
        ],
    }
)
SRS = pd.DataFrame(
    {"administered_at": [ts("2026-03-02 10:10"), ts("2026-03-16 10:10")], "total": [31.5, 38.0]}
)


def test_trajectory_draws_cutoff_band_sessions_and_srs_from_the_registry():
    phq = REGISTRY["PHQ-9"]
    fig = figures.client_trajectory(
        SCORES, phq, sessions=SESSIONS, alliance=SRS, alliance_instrument=REGISTRY["SRS"]
    )
    # clinical cutoff: PHQ-9 >= 10 in the registry, drawn across the whole x range
    cutoff = by_name(fig, "Clinical cutoff")
    assert list(cutoff.y) == [phq.cutoff, phq.cutoff] == [10, 10]
    assert cutoff.name == "Clinical cutoff (>= 10)"
    # reliable-change band around the baseline 18: 18 -/+ 6 = 12 .. 24
    band = by_name(fig, "Reliable change band")
    assert (min(band.y), max(band.y)) == (12, 24)
    assert band.fill == "toself"
    # the scores themselves
    scores = by_name(fig, "PHQ-9")
    assert list(scores.y) == [18.0, 14.0, 9.0]
    # attended (3) and missed (no-show + late cancellation: 2) sessions; an advance
    # cancellation is not a missed session
    assert len(by_name(fig, "Attended session").x) == 3
    assert len(by_name(fig, "Missed session").x) == 2
    # SRS on the second axis, 0..40, with its low-alliance line at 36
    srs = by_name(fig, "SRS")
    assert srs.yaxis == "y2" and list(srs.y) == [31.5, 38.0]
    assert list(fig.layout.yaxis2.range) == [0, 40]
    assert list(by_name(fig, "Low SRS").y) == [36, 36]
    # primary axis: the instrument's total range
    assert list(fig.layout.yaxis.range) == [0, 27]
    x0, x1 = fig.layout.xaxis.range
    assert pd.Timestamp(x0) < ts("2026-03-02") and pd.Timestamp(x1) > ts("2026-04-06")


def test_band_is_clipped_to_the_scale_and_higher_is_better_cutoffs_read_below():
    ors = REGISTRY["ORS"]  # 0..40, higher better, caseness < 25, reliable change 5
    scores = pd.DataFrame(
        {"administered_at": [ts("2026-01-05"), ts("2026-02-05")], "total": [38.0, 36.0]}
    )
    fig = figures.client_trajectory(scores, ors)
    band = by_name(fig, "Reliable change band")
    assert (min(band.y), max(band.y)) == (33, 40)  # 38 + 5 clipped at the maximum 40
    assert by_name(fig, "Clinical cutoff").name == "Clinical cutoff (< 25)"
    assert list(fig.layout.yaxis.range) == [0, 40]


def test_trajectory_takes_a_staging_instruments_row_and_the_expected_band():
    row = REGISTRY.frame().set_index("code").loc["GAD-7"].to_dict() | {"code": "GAD-7"}
    expected = pd.DataFrame(
        {
            "administered_at": [ts("2026-03-16 10:05"), ts("2026-03-30 10:05")],
            "expected_score": [12.0, 10.0],
            "tolerance_lower": [6.0, 4.0],
            "tolerance_upper": [17.0, 15.0],
        }
    )
    fig = figures.client_trajectory(SCORES, row, expected=expected)
    assert list(by_name(fig, "Clinical cutoff").y) == [8, 8]  # GAD-7 caseness >= 8
    lower = by_name(fig, "Expected range")
    assert lower.fill == "tonexty" and list(lower.y) == [6.0, 4.0]
    assert list(by_name(fig, "Expected (median").y) == [12.0, 10.0]
    assert list(fig.layout.yaxis.range) == [0, 21]
    assert not any((t.name or "").startswith("SRS") for t in fig.data)


def test_trajectory_without_any_score_is_a_message():
    fig = figures.client_trajectory(SCORES.iloc[0:0], REGISTRY["PHQ-9"])
    assert fig.layout.annotations[0].text == "No scores yet"


def test_trajectory_spec_is_plain_json_and_the_same_figure_from_numpy_columns():
    """The caseload pages pass numpy slices, notebooks pass frames: one figure either way."""
    expected = pd.DataFrame(
        {
            "administered_at": [ts("2026-03-16 10:05")],
            "expected_score": [12.0],
            "tolerance_lower": [6.0],
            "tolerance_upper": [17.0],
        }
    )
    frames = dict(sessions=SESSIONS, alliance=SRS, expected=expected)
    arrays = {
        name: {c: frame[c].to_numpy() for c in frame.columns} for name, frame in frames.items()
    }
    common = dict(alliance_instrument=REGISTRY["SRS"], height=360, legend_below=True)
    from_frames = figures.trajectory_spec(SCORES, REGISTRY["PHQ-9"], **frames, **common)
    from_arrays = figures.trajectory_spec(
        {c: SCORES[c].to_numpy() for c in SCORES.columns},
        REGISTRY["PHQ-9"],
        **arrays,
        **common,
    )
    assert json.dumps(from_frames) == json.dumps(from_arrays)  # plain JSON types only
    assert from_frames["layout"]["template"] is figures.template_json()
    graph = figures.client_trajectory(SCORES, REGISTRY["PHQ-9"], **frames, **common).to_dict()
    assert [t["name"] for t in graph["data"]] == [t["name"] for t in from_frames["data"]]
    assert by_name(go.Figure(graph), "PHQ-9").y == (18.0, 14.0, 9.0)
    assert figures.trajectory_spec(SCORES.iloc[0:0], REGISTRY["PHQ-9"]) is None


def test_the_report_template_is_plotlys_own_and_a_copy():
    """``_apply_template`` skips plotly's re-validation of a registered template: the same
    figure as ``update_layout(template=...)``, and changing it leaves the registry alone."""
    validated = go.Figure().update_layout(template=figures.TEMPLATE)
    fast = go.Figure()
    figures._apply_template(fast)
    assert fast.to_dict() == validated.to_dict()
    assert fast.layout.template.to_plotly_json() == figures.template_json()
    fast.layout.template.layout.font.size = 99
    assert pio.templates[figures.TEMPLATE].layout.font.size != 99
    assert figures.template_json()["layout"].get("font", {}).get("size") != 99


# --------------------------------------------------------------------------
# report charts: published frames only


MONTHS = [ts("2026-04-01"), ts("2026-05-01"), ts("2026-06-01")]


def trend_frame() -> pd.DataFrame:
    rows = []
    for kpi, values, clients in (
        ("attendance_rate", (0.9, 0.85, 0.8), (30, 4, 25)),  # May rests on 4 clients
        ("dna_rate", (0.05, 0.1, 0.12), (30, 30, 25)),
    ):
        for month, value, n in zip(MONTHS, values, clients, strict=True):
            rows.append({"period": month, "kpi": kpi, "value": value, "n_clients": n})
    return publish(rows, ("period", "kpi"))


def test_trend_lines_break_at_a_suppressed_month_and_say_so():
    fig = figures.trend_lines(
        trend_frame(),
        series="kpi",
        labels={"attendance_rate": "Attendance", "dna_rate": "DNA"},
        target=0.9,
    )
    attendance = by_name(fig, "Attendance")
    assert list(attendance.y) == [0.9, None, 0.8]
    assert attendance.connectgaps is False
    assert list(by_name(fig, "DNA").y) == [0.05, 0.1, 0.12]
    assert list(by_name(fig, "Aim").y) == [0.9, 0.9]
    assert list(fig.layout.yaxis.range) == [0, 1] and fig.layout.yaxis.tickformat == ".0%"
    note = fig.layout.annotations[-1].text
    assert "fewer than 10 clients" in note and "Attendance 2026-05" in note
    assert "0.85" not in fig.to_json()  # the suppressed value is not in the figure at all


def test_every_chart_refuses_an_unsuppressed_frame():
    raw = pd.DataFrame({"period": MONTHS, "kpi": "x", "value": 0.5, "n_clients": 20})
    for call in (
        lambda: figures.trend_lines(raw),
        lambda: figures.outcome_categories(raw, categories={}),
        lambda: figures.effect_size_forest(raw),
        lambda: figures.retention_curve(raw),
        lambda: figures.dose_response(raw),
        lambda: figures.clinician_funnel(raw, service_value=0.5, unit_se=1.0),
        lambda: figures.grouped_bars(raw, x="period", series="kpi"),
        lambda: figures.alliance_trend(raw),
    ):
        with pytest.raises(ValueError, match="suppress"):
            call()


def test_outcome_categories_share_of_the_published_total_with_a_grey_remainder():
    # PHQ-9: 40 episodes = 22 improved + 12 no change + 3 deteriorated + 3 not paired.
    # The two small categories are suppressed; together (40 - 22 - 12 = 6) they would
    # still rest on fewer than 10 clients, so 'no change' (12) goes too. The bar shows
    # 22/40 = 55% improved and 45% grey 'suppressed'.
    rows = [
        {"instrument": "PHQ-9", "outcome_class": c, "n_episodes": n, "n_clients": n}
        for c, n in (
            ("reliably_improved", 22),
            ("no_reliable_change", 12),
            ("reliably_deteriorated", 3),
            ("not_paired", 3),
            ("__all__", 40),
        )
    ]
    frame = publish(
        rows,
        ("instrument", "outcome_class"),
        additive=(Additive(by=("instrument",), over="outcome_class", total="__all__"),),
    )
    fig = figures.outcome_categories(
        frame,
        categories={
            "reliably_improved": "Improved",
            "no_reliable_change": "No change",
            "reliably_deteriorated": "Deteriorated",
            "not_paired": "Not paired",
        },
    )
    assert list(by_name(fig, "Improved").x) == [0.55]
    assert list(by_name(fig, "No change").x) == []
    assert list(by_name(fig, "Deteriorated").x) == []
    assert math.isclose(by_name(fig, "suppressed").x[0], 0.45)
    assert list(fig.layout.xaxis.range) == [0, 1]


def test_effect_size_forest_has_ci_whiskers_and_the_benchmark():
    rows = [
        {
            "label": "PHQ-9",
            "value": 0.8,
            "ci_low": 0.6,
            "ci_high": 1.1,
            "benchmark": 0.93,
            "n_clients": 50,
        },
        {
            "label": "GAD-7",
            "value": 0.7,
            "ci_low": 0.5,
            "ci_high": 0.9,
            "benchmark": None,
            "n_clients": 50,
        },
        {
            "label": "CORE-10",
            "value": 1.5,
            "ci_low": 0.1,
            "ci_high": 2.9,
            "benchmark": None,
            "n_clients": 6,
        },
    ]
    frame = publish(rows, ("label", "benchmark"))
    fig = figures.effect_size_forest(frame)
    d = by_name(fig, "Effect size")
    assert list(d.y) == ["PHQ-9", "GAD-7"] and list(d.x) == [0.8, 0.7]
    assert [round(v, 6) for v in d.error_x.array] == [0.3, 0.2]
    assert [round(v, 6) for v in d.error_x.arrayminus] == [0.2, 0.2]
    bench = by_name(fig, "Published benchmark")
    assert list(bench.x) == [0.93] and list(bench.y) == ["PHQ-9"]
    assert "CORE-10" in fig.layout.annotations[-1].text


def test_retention_and_dose_response_leave_suppressed_points_out():
    rows = [
        {
            "label": "Service",
            "time": t,
            "survival": s,
            "ci_lower": s - 0.1,
            "ci_upper": min(1, s + 0.1),
            "n_clients_at_risk": n,
        }
        for t, s, n in ((0, 1.0, 60), (1, 0.9, 50), (2, 0.8, 8))
    ]
    frame = suppress(
        pd.DataFrame(rows), CellSpec(keys=("label", "time"), clients="n_clients_at_risk"), K
    )
    fig = figures.retention_curve(frame)
    line = by_name(fig, "Service")
    assert list(line.x) == [0, 1] and list(line.y) == [1.0, 0.9]
    assert line.line.shape == "hv"
    assert list(fig.layout.yaxis.range) == [0, 1.02]

    dose = publish(
        [
            {"instrument": "PHQ-9", "session_number": s, "value": v, "n_clients": 40}
            for s, v in ((1, 0.0), (2, 0.25), (3, 0.5))
        ],
        ("instrument", "session_number"),
    )
    fig = figures.dose_response(dose)
    assert list(by_name(fig, "PHQ-9").y) == [0.0, 0.25, 0.5]
    assert list(fig.layout.yaxis.range) == [0, 1]


def test_funnel_plots_caseload_against_effect_with_limits_not_a_ranking():
    rows = [
        {
            "clinician_id": "T1",
            "n_episodes": 25,
            "saes": 0.9,
            "saes_ci_low": 0.5,
            "saes_ci_high": 1.3,
            "n_clients": 25,
        },
        {
            "clinician_id": "T2",
            "n_episodes": 12,
            "saes": 0.4,
            "saes_ci_low": -0.2,
            "saes_ci_high": 1.0,
            "n_clients": 12,
        },
        {
            "clinician_id": "T3",
            "n_episodes": 5,
            "saes": 2.0,
            "saes_ci_low": 0.0,
            "saes_ci_high": 4.0,
            "n_clients": 5,
        },
    ]
    frame = publish(rows, ("clinician_id",))
    fig = figures.clinician_funnel(frame, service_value=0.8, unit_se=1.2)
    points = by_name(fig, "Clinician")
    assert list(points.x) == [25, 12] and list(points.y) == [0.9, 0.4]  # T3 suppressed
    assert list(points.text) == ["T1", "T2"]
    upper = by_name(fig, "95% control limits")
    # at n = 2 (first grid point): 0.8 + 1.959964 * 1.2 / sqrt(2)
    assert math.isclose(upper.y[0], 0.8 + 1.959964 * 1.2 / math.sqrt(2))
    assert list(by_name(fig, "Service").y) == [0.8, 0.8]
    assert fig.layout.xaxis.title.text == "Episodes with paired scores"
    assert "1 clinician(s)" in fig.layout.annotations[-1].text


def test_grouped_bars_and_alliance_trend():
    rows = [
        {"band": b, "kpi": "dropout_rate", "value": v, "n_clients": n}
        for b, v, n in (("All", 0.2, 80), ("18-24", 0.3, 7), ("25-34", 0.25, 30))
    ]
    fig = figures.grouped_bars(
        publish(rows, ("band", "kpi")), x="band", series="kpi", labels={"dropout_rate": "Dropout"}
    )
    bars = by_name(fig, "Dropout")
    assert list(bars.x) == ["All", "25-34"] and list(bars.y) == [0.2, 0.25]
    assert list(fig.layout.yaxis.range) == [0, 1]

    alliance = publish(
        [
            {"period": m, "kpi": k, "value": v, "n_clients": 20}
            for m in MONTHS
            for k, v in (("mean_srs", 34.0), ("low_alliance_share", 0.3))
        ],
        ("period", "kpi"),
    )
    fig = figures.alliance_trend(alliance, cutoff=36)
    assert by_name(fig, "Low-alliance share").yaxis == "y2"
    assert list(by_name(fig, "Mean SRS").y) == [34.0, 34.0, 34.0]
    assert list(fig.layout.yaxis.range) == [0, 40] and list(fig.layout.yaxis2.range) == [0, 1]
    assert list(by_name(fig, "Low-alliance cutoff").y) == [36, 36]
