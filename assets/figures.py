"""The figure library: every chart of the reports, usable from notebooks too.

    from assets.figures import client_trajectory, trend_lines

Each report chart is a function that takes a *published* frame (the output of
``assets.suppression.suppress``; anything else is refused) and returns a
``plotly.graph_objects.Figure``. Suppressed cells are never drawn as numbers:
lines break there and a note under the chart names what was suppressed.

``client_trajectory`` draws one client's scores (a per-client view with
pseudonymous ids, not an aggregate): the clinical cutoff from the registry,
the reliable-change band around the baseline, the expected-trajectory band
when the ETR mart has one, SRS on a second axis and attended / missed sessions.
``trajectory_spec`` is the same chart as a plain plotly.js dict, for pages that
draw one per open episode.
"""

from __future__ import annotations

import datetime as dt
import functools
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from assets.suppression import SUPPRESSED, require_suppressed

# Okabe-Ito: distinguishable with the common colour-vision deficiencies.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#000000",
)
GREY = "#9a9a9a"
BAND = "rgba(0, 114, 178, 0.12)"
EXPECTED_BAND = "rgba(0, 158, 115, 0.15)"
MISSED_STATUSES = ("no_show", "late_cancelled")
SUPPRESSED_TEXT = "suppressed"
TEMPLATE = "plotly_white"
FONT = dict(family="system-ui, -apple-system, 'Segoe UI', Roboto, Arial, sans-serif", size=12)


def _layout(title: str | None, height: int) -> dict[str, Any]:
    """The layout every chart starts from (without its template)."""
    return {
        "title": {"text": title, "x": 0, "xanchor": "left"} if title else {},
        "height": height,
        "margin": {"l": 60, "r": 30, "t": 80 if title else 50, "b": 60},
        "font": dict(FONT),
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
        "hovermode": "closest",
    }


def _apply_template(fig: go.Figure) -> None:
    """Give ``fig`` the report template the way plotly gives a new figure its default one.

    The registered template is valid already; ``update_layout(template=...)`` copies and
    validates it again, ~12 ms a figure, which was most of the QI report's time.
    """
    layout = fig.layout
    validate = layout._validate
    layout._validate = False
    try:
        layout.template = pio.templates[TEMPLATE]
    finally:
        layout._validate = validate


@functools.cache
def template_json() -> dict[str, Any]:
    """The report template as plotly.js reads it, computed once: shared, do not modify."""
    return pio.templates[TEMPLATE].to_plotly_json()


def _set_layout(fig: go.Figure, layout: Mapping[str, Any]) -> go.Figure:
    """Apply a ``_layout``-style dict (its template left aside) to a graph-object figure."""
    _apply_template(fig)
    # title=None, not {}: plotly then keeps an empty title object, as plotly.js reads it
    values = {k: v for k, v in layout.items() if k != "template"}
    fig.update_layout(**values | {"title": values.get("title") or None})
    return fig


def _base_layout(fig: go.Figure, title: str | None, height: int) -> go.Figure:
    return _set_layout(fig, _layout(title, height))


def _note(fig: go.Figure, text: str, width: int = 150, max_lines: int = 3) -> None:
    """Wrapped text under the plot area (suppressed cells, missing data)."""
    lines = textwrap.wrap(text, width) or [""]
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], lines[max_lines - 1][: width - 2] + " …"]
    fig.add_annotation(
        text="<br>".join(lines),
        xref="paper",
        yref="paper",
        x=0,
        y=0,
        yshift=-52,
        xanchor="left",
        yanchor="top",
        showarrow=False,
        font=dict(size=11, color="#555"),
        align="left",
    )
    margin = fig.layout.margin
    bottom = max(margin.b or 0, 70 + 15 * len(lines))
    fig.update_layout(margin=dict(l=margin.l, r=margin.r, t=margin.t, b=bottom))


def _suppressed_note(fig: go.Figure, items: Sequence[str], k: int | None) -> None:
    if not items:
        return
    basis = f"fewer than {k} clients" if k else "too few clients"
    _note(fig, f"Suppressed ({basis}, or to protect another cell): " + ", ".join(items))


def _k(frame: pd.DataFrame) -> int | None:
    return frame.attrs.get("min_cell_size")


def _num(value: Any) -> float | None:
    if value is None or value is pd.NA:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return None if out != out else out


def _label(value: Any) -> str:
    if isinstance(value, pd.Timestamp):
        return value.strftime("%Y-%m")
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m")
    return str(value)


def empty_figure(message: str, title: str | None = None, height: int = 220) -> go.Figure:
    """A chart-sized message ('not enough data', 'suppressed') drawn as a figure."""
    fig = go.Figure()
    fig.add_annotation(
        text=message, xref="paper", yref="paper", x=0.5, y=0.5, showarrow=False, font=dict(size=14)
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _base_layout(fig, title, height)


# --------------------------------------------------------------------------
# client trajectory (per-client view)


def _instrument_info(instrument: Any) -> dict[str, Any]:
    """Registry thresholds from an ``Instrument`` or a ``staging.instruments`` row."""
    if isinstance(instrument, Mapping):
        get = instrument.get
    else:

        def get(name: str) -> Any:
            return getattr(instrument, name, None)

    info = {
        name: get(name)
        for name in (
            "code",
            "cutoff",
            "rc_threshold",
            "rc_strict",
            "higher_is_worse",
            "total_min",
            "total_max",
        )
    }
    info["cutoff"] = _num(info["cutoff"])
    info["rc_threshold"] = _num(info["rc_threshold"])
    info["total_min"] = _num(info["total_min"]) or 0.0
    info["total_max"] = _num(info["total_max"])
    info["higher_is_worse"] = bool(info["higher_is_worse"])
    return info


Columns = Mapping[str, Any]  # a DataFrame, or column name -> array or list


def times_text(values: Any) -> list[str]:
    """Times as the ISO text plotly writes for a datetime column (microseconds, no zone).

    A list of text is taken as it is: ``trajectory_spec`` compares such text as text, so it
    must all be in this one form (as ``np.datetime_as_string(..., unit="us")`` writes it).
    """
    if isinstance(values, list) and (not values or isinstance(values[0], str)):
        return values
    return np.datetime_as_string(np.asarray(values, dtype="datetime64[us]"), unit="us").tolist()


def _floats(values: Any) -> list[float]:
    return values if isinstance(values, list) else np.asarray(values, dtype=float).tolist()


def _shift(text: str, days: int) -> str:
    moved = dt.datetime.fromisoformat(text) + dt.timedelta(days=days)
    return moved.isoformat(timespec="microseconds")


def _max(values: Sequence[float]) -> float:
    """The largest non-missing value, NaN when there is none (as pandas' max)."""
    return max((v for v in values if v == v), default=float("nan"))


def _present(frame: Columns | None, column: str) -> bool:
    return frame is not None and column in frame and len(frame[column]) > 0


def client_trajectory(
    scores: pd.DataFrame,
    instrument: Any,
    *,
    sessions: pd.DataFrame | None = None,
    alliance: pd.DataFrame | None = None,
    alliance_instrument: Any = None,
    expected: pd.DataFrame | None = None,
    title: str | None = None,
    height: int = 360,
    show_legend: bool = True,
    legend_below: bool = False,
) -> go.Figure:
    """One episode's scores on one symptom instrument over time.

    scores: ``administered_at``, ``total`` (one episode and instrument).
    instrument: a registry ``Instrument`` or a ``staging.instruments`` row
        (cutoff, rc_threshold, higher_is_worse, total_min, total_max).
    sessions: ``scheduled_at``, ``status``: attended and missed (no-show, late
        cancellation) sessions as markers along the bottom.
    alliance: ``administered_at``, ``total`` of the SRS, on the right axis,
        with ``alliance_instrument`` for its range and low-alliance cutoff.
    expected: ``administered_at``, ``expected_score``, ``tolerance_lower``,
        ``tolerance_upper`` from ``marts.expected_trajectory``.
    """

    def by_time(frame: pd.DataFrame | None) -> pd.DataFrame | None:
        return None if frame is None else frame.sort_values("administered_at")

    spec = trajectory_spec(
        scores.sort_values("administered_at"),
        instrument,
        sessions=sessions,
        alliance=by_time(alliance),
        alliance_instrument=alliance_instrument,
        expected=by_time(expected),
        title=title,
        height=height,
        show_legend=show_legend,
        legend_below=legend_below,
    )
    if spec is None:
        return empty_figure("No scores yet", title, height)
    return _set_layout(go.Figure(data=spec["data"]), spec["layout"])


def trajectory_spec(
    scores: Columns,
    instrument: Any,
    *,
    sessions: Columns | None = None,
    alliance: Columns | None = None,
    alliance_instrument: Any = None,
    expected: Columns | None = None,
    title: str | None = None,
    height: int = 360,
    show_legend: bool = True,
    legend_below: bool = False,
) -> dict[str, Any] | None:
    """``client_trajectory`` as a plain plotly.js figure (``{"data", "layout"}``), or None
    when there is no time to draw at all.

    The caseload pages draw one chart per open episode (tens of thousands nationally):
    building and validating graph objects took ~50 ms a chart, this takes well under one.
    Same arguments as ``client_trajectory``, but ``scores``, ``alliance`` and ``expected``
    must already be sorted by ``administered_at``, and any mapping of column name to array
    or list will do; lists of times may be given as ``times_text`` (the caseload converts
    whole columns at once). The layout's template is ``template_json()``, shared: do not
    modify it.
    """
    info = _instrument_info(instrument)
    code = info["code"] or "score"
    totals = _floats(scores["total"])
    frames = {"sessions": sessions, "alliance": alliance, "expected": expected}
    column = {"sessions": "scheduled_at", "alliance": "administered_at"}
    iso = {"scores": times_text(scores["administered_at"])} | {
        name: times_text(frame[column.get(name, "administered_at")])
        for name, frame in frames.items()
        if _present(frame, column.get(name, "administered_at"))
    }
    stamps = [t for values in iso.values() for t in values if t != "NaT"]
    if not stamps:
        return None
    x0, x1 = _shift(min(stamps), -3), _shift(max(stamps), 3)
    y_min = info["total_min"]
    y_max = info["total_max"] if info["total_max"] is not None else _max(totals)
    data: list[dict[str, Any]] = []

    rc = info["rc_threshold"]
    if rc is not None and totals:
        baseline = float(totals[0])
        lo, hi = max(y_min, baseline - rc), min(y_max, baseline + rc)
        data.append(
            {
                "type": "scatter",
                "x": [x0, x1, x1, x0, x0],
                "y": [lo, lo, hi, hi, lo],
                "fill": "toself",
                "fillcolor": BAND,
                "line": {"width": 0},
                "mode": "lines",
                "name": f"Reliable change band (baseline {baseline:g} ± {rc:.3g})",
                "hoverinfo": "skip",
            }
        )

    if "expected" in iso:
        e_at = iso["expected"]
        bands = ("tolerance_upper", "tolerance_lower", "expected_score")
        values = {c: _floats(expected[c]) for c in bands}
        data += [
            {
                "type": "scatter",
                "x": e_at,
                "y": values["tolerance_upper"],
                "mode": "lines",
                "line": {"width": 0},
                "showlegend": False,
                "hoverinfo": "skip",
                "name": "Expected range upper",
            },
            {
                "type": "scatter",
                "x": e_at,
                "y": values["tolerance_lower"],
                "mode": "lines",
                "line": {"width": 0},
                "fill": "tonexty",
                "fillcolor": EXPECTED_BAND,
                "name": "Expected range",
                "hoverinfo": "skip",
            },
            {
                "type": "scatter",
                "x": e_at,
                "y": values["expected_score"],
                "mode": "lines",
                "line": {"color": PALETTE[2], "dash": "dash", "width": 1.5},
                "name": "Expected (median of similar clients)",
            },
        ]

    if info["cutoff"] is not None:
        op = ">=" if info["higher_is_worse"] else "<"
        data.append(
            {
                "type": "scatter",
                "x": [x0, x1],
                "y": [info["cutoff"], info["cutoff"]],
                "mode": "lines",
                "line": {"color": PALETTE[3], "dash": "dot", "width": 1.5},
                "name": f"Clinical cutoff ({op} {info['cutoff']:g})",
                "hoverinfo": "name",
            }
        )

    data.append(
        {
            "type": "scatter",
            "x": iso["scores"],
            "y": totals,
            "mode": "lines+markers",
            "line": {"color": PALETTE[0], "width": 2},
            "marker": {"size": 7},
            "name": code,
            "hovertemplate": "%{x|%Y-%m-%d}: %{y:.4g}<extra>" + code + "</extra>",
        }
    )

    if "sessions" in iso:
        status = sessions["status"]
        for keep, name, symbol, color in (
            (("attended",), "Attended session", "circle", PALETTE[2]),
            (MISSED_STATUSES, "Missed session", "x", PALETTE[3]),
        ):
            x = [t for t, s in zip(iso["sessions"], status, strict=True) if s in keep]
            if not x:
                continue
            data.append(
                {
                    "type": "scatter",
                    "x": x,
                    "y": [y_min] * len(x),
                    "mode": "markers",
                    "marker": {"symbol": symbol, "size": 8, "color": color},
                    "cliponaxis": False,
                    "name": name,
                    "hovertemplate": "%{x|%Y-%m-%d}<extra>" + name + "</extra>",
                }
            )

    layout = {"template": template_json(), **_layout(title, height)}
    layout["xaxis"] = {"range": [x0, x1]}
    layout["yaxis"] = _value_axis(y_min, y_max, code)
    if "alliance" in iso:
        a_info = _instrument_info(alliance_instrument or {"code": "SRS"})
        a_code = a_info["code"] or "SRS"
        a_totals = _floats(alliance["total"])
        a_min = a_info["total_min"]
        a_max = a_info["total_max"] if a_info["total_max"] is not None else _max(a_totals)
        data.append(
            {
                "type": "scatter",
                "x": iso["alliance"],
                "y": a_totals,
                "yaxis": "y2",
                "mode": "lines+markers",
                "line": {"color": PALETTE[4], "width": 1.5},
                "marker": {"size": 6, "symbol": "diamond"},
                "name": f"{a_code} (right axis)",
                "hovertemplate": "%{x|%Y-%m-%d}: %{y:.4g}<extra>" + a_code + "</extra>",
            }
        )
        if a_info["cutoff"] is not None:
            data.append(
                {
                    "type": "scatter",
                    "x": [x0, x1],
                    "y": [a_info["cutoff"], a_info["cutoff"]],
                    "yaxis": "y2",
                    "mode": "lines",
                    "line": {"color": PALETTE[4], "dash": "dot", "width": 1},
                    "name": f"Low {a_code} (< {a_info['cutoff']:g})",
                    "hoverinfo": "name",
                }
            )
        layout["yaxis2"] = {
            "overlaying": "y",
            "side": "right",
            **_value_axis(a_min, a_max, a_code),
            "showgrid": False,
        }
    layout["showlegend"] = show_legend
    layout["hovermode"] = "x unified"
    if legend_below:
        layout["legend"].update(
            {"orientation": "h", "yanchor": "top", "y": -0.18, "x": 0, "font": {"size": 10}}
        )
        layout["margin"].update({"t": 30 if not title else 60, "b": 110})
    return {"data": data, "layout": layout}


def _value_axis(low: float, high: float, code: str) -> dict[str, Any]:
    """A score axis over an instrument's whole range, with round ticks, titled by its code."""
    return {
        "range": [low, high],
        "tickmode": "linear",
        "tick0": low,
        "dtick": _nice_step(high - low),
        "title": {"text": code},
        "zeroline": False,
    }


def _nice_step(span: float) -> float:
    """A round tick step giving 4-8 ticks over ``span`` (10 for 0..40, 5 for 0..27)."""
    for step in (0.5, 1, 2, 2.5, 5, 10, 20, 25, 50, 100):
        if span / step <= 8:
            return step
    return span / 5


# --------------------------------------------------------------------------
# report charts (published frames only)


def trend_lines(
    frame: pd.DataFrame,
    *,
    x: str = "period",
    y: str = "value",
    series: str = "kpi",
    labels: Mapping[Any, str] | None = None,
    title: str | None = None,
    percent: bool = True,
    y_range: Sequence[float] | None = None,
    target: float | None = None,
    target_label: str | None = None,
    y_title: str | None = None,
    height: int = 320,
) -> go.Figure:
    """Monthly lines, one per series; suppressed months are gaps, listed below."""
    require_suppressed(frame)
    frame = frame.sort_values(x)
    fig = go.Figure()
    missing: list[str] = []
    order = list(labels) if labels else list(dict.fromkeys(frame[series]))
    for n, key in enumerate(order):
        rows = frame[frame[series] == key]
        if rows.empty:
            continue
        name = labels.get(key, str(key)) if labels else str(key)
        ys = [None if s else _num(v) for v, s in zip(rows[y], rows[SUPPRESSED], strict=True)]
        missing += [
            f"{name} {_label(p)}" for p, s in zip(rows[x], rows[SUPPRESSED], strict=True) if s
        ]
        fig.add_trace(
            go.Scatter(
                x=list(rows[x]),
                y=ys,
                mode="lines+markers",
                connectgaps=False,
                name=name,
                line=dict(color=PALETTE[n % len(PALETTE)], width=2),
                hovertemplate="%{x|%b %Y}: %{y"
                + (":.1%" if percent else ":.3g")
                + "}<extra>"
                + name
                + "</extra>",
            )
        )
    if target is not None and len(frame):
        fig.add_trace(
            go.Scatter(
                x=[frame[x].min(), frame[x].max()],
                y=[target, target],
                mode="lines",
                line=dict(color=GREY, dash="dash", width=1.5),
                name=target_label or f"Aim {target:.0%}",
                hoverinfo="name",
            )
        )
    _base_layout(fig, title, height)
    if percent:
        fig.update_yaxes(range=list(y_range or (0, 1)), tickformat=".0%", title_text=y_title)
    else:
        fig.update_yaxes(range=list(y_range) if y_range else None, title_text=y_title)
    fig.update_xaxes(tickformat="%b %Y", dtick="M1" if frame[x].nunique() <= 14 else None)
    _suppressed_note(fig, missing, _k(frame))
    return fig


def outcome_categories(
    frame: pd.DataFrame,
    *,
    categories: Mapping[str, str],
    total: str = "__all__",
    count: str = "n_episodes",
    group: str = "instrument",
    category: str = "outcome_class",
    title: str | None = None,
    height: int | None = None,
) -> go.Figure:
    """Stacked bars per instrument: share of episodes in each outcome category.

    Shares are of the instrument's published total; what suppression hides is
    one grey 'suppressed' segment (the remainder, which subtraction gives
    anyway and which rests on at least k clients).
    """
    require_suppressed(frame)
    groups = list(dict.fromkeys(frame[group]))
    fig = go.Figure()
    totals: dict[Any, float | None] = {}
    for g in groups:
        rows = frame[(frame[group] == g) & (frame[category] == total)]
        totals[g] = None if rows.empty or rows[SUPPRESSED].iloc[0] else _num(rows[count].iloc[0])
    shown = [g for g in groups if totals[g]]
    remainder = {g: 1.0 for g in shown}
    missing = [f"{g} (all categories)" for g in groups if not totals[g]]
    for n, (key, label) in enumerate(categories.items()):
        xs, ys, texts = [], [], []
        for g in shown:
            row = frame[(frame[group] == g) & (frame[category] == key)]
            if row.empty:
                continue
            if row[SUPPRESSED].iloc[0]:
                missing.append(f"{g} {label}")
                continue
            share = (_num(row[count].iloc[0]) or 0) / totals[g]
            remainder[g] -= share
            xs.append(share)
            ys.append(g)
            texts.append(f"{_num(row[count].iloc[0]):.0f}")
        fig.add_trace(
            go.Bar(
                x=xs,
                y=ys,
                orientation="h",
                name=label,
                marker_color=PALETTE[n % len(PALETTE)],
                customdata=texts,
                hovertemplate="%{y}: %{x:.1%} (%{customdata} episodes)<extra>" + label + "</extra>",
            )
        )
    rest = [(g, r) for g, r in remainder.items() if r > 1e-9]
    if rest:
        fig.add_trace(
            go.Bar(
                x=[r for _, r in rest],
                y=[g for g, _ in rest],
                orientation="h",
                name=SUPPRESSED_TEXT,
                marker_color=GREY,
                hovertemplate="%{y}: suppressed categories<extra></extra>",
            )
        )
    _base_layout(fig, title, height or 140 + 45 * max(1, len(shown)))
    fig.update_layout(barmode="stack")
    fig.update_xaxes(range=[0, 1], tickformat=".0%")
    fig.update_yaxes(autorange="reversed", categoryorder="array", categoryarray=shown)
    _suppressed_note(fig, missing, _k(frame))
    return fig


def effect_size_forest(
    frame: pd.DataFrame,
    *,
    label: str = "label",
    title: str | None = None,
    benchmark_label: str = "Published benchmark",
    height: int | None = None,
) -> go.Figure:
    """Pre-post effect size d with its 95% CI per row, and the benchmark where given."""
    require_suppressed(frame)
    shown = frame[~frame[SUPPRESSED].astype(bool)]
    missing = [str(v) for v in frame.loc[frame[SUPPRESSED].astype(bool), label]]
    fig = go.Figure()
    if not shown.empty:
        d = [_num(v) for v in shown["value"]]
        fig.add_trace(
            go.Scatter(
                x=d,
                y=list(shown[label]),
                mode="markers",
                marker=dict(size=10, color=PALETTE[0]),
                error_x=_whiskers(d, list(shown["ci_low"]), list(shown["ci_high"])),
                name="Effect size d (95% CI)",
                hovertemplate="%{y}: d = %{x:.2f}<extra></extra>",
            )
        )
        bench = shown[[label, "benchmark"]].dropna() if "benchmark" in shown else shown.iloc[0:0]
        bench = bench[[_num(v) is not None for v in bench["benchmark"]]] if len(bench) else bench
        if len(bench):
            fig.add_trace(
                go.Scatter(
                    x=[_num(v) for v in bench["benchmark"]],
                    y=list(bench[label]),
                    mode="markers",
                    marker=dict(
                        symbol="diamond-open", size=13, color=PALETTE[3], line=dict(width=2)
                    ),
                    name=benchmark_label,
                    hovertemplate="%{y}: benchmark d = %{x:.2f}<extra></extra>",
                )
            )
    fig.add_vline(x=0, line=dict(color=GREY, width=1))
    _base_layout(fig, title, height or 160 + 40 * max(1, len(frame)))
    fig.update_xaxes(title_text="Pre-post effect size d (improvement / SD of baseline)")
    fig.update_yaxes(autorange="reversed")
    _suppressed_note(fig, missing, _k(frame))
    return fig


def _split_series(
    frame: pd.DataFrame, series: str, x: str, unit: str
) -> tuple[list[tuple[int, Any, pd.DataFrame]], list[str]]:
    """Per series (in frame order): its index, name and published rows sorted by ``x``;
    plus one note per series with suppressed points."""
    out, notes = [], []
    for n, (name, rows) in enumerate(frame.groupby(series, sort=False)):
        rows = rows.sort_values(x)
        hidden = rows[SUPPRESSED].astype(bool)
        if hidden.any():
            notes.append(f"{name} at {int(hidden.sum())} {unit}")
        out.append((n, name, rows[~hidden]))
    return out, notes


def _whiskers(values: Sequence, low: Sequence, high: Sequence) -> dict[str, Any]:
    """Plotly error-bar arrays (distance above and below) from CI bounds."""

    def gap(a: Any, b: Any) -> float:
        a, b = _num(a), _num(b)
        return 0.0 if a is None or b is None else a - b

    return dict(
        type="data",
        symmetric=False,
        array=[gap(h, v) for h, v in zip(high, values, strict=True)],
        arrayminus=[gap(v, lo) for v, lo in zip(values, low, strict=True)],
    )


def retention_curve(
    frame: pd.DataFrame,
    *,
    series: str = "label",
    x: str = "time",
    x_title: str = "Attended sessions",
    title: str | None = None,
    height: int = 340,
) -> go.Figure:
    """Kaplan-Meier share still attending, with its 95% band; suppressed points omitted."""
    require_suppressed(frame)
    fig = go.Figure()
    groups, notes = _split_series(frame, series, x, "time points")
    for n, name, shown in groups:
        color = PALETTE[n % len(PALETTE)]
        if shown.empty:
            continue
        for bound, fill in (("ci_upper", None), ("ci_lower", "tonexty")):
            fig.add_trace(
                go.Scatter(
                    x=list(shown[x]),
                    y=[_num(v) for v in shown[bound]],
                    mode="lines",
                    fill=fill,
                    fillcolor="rgba(150,150,150,0.18)",
                    line=dict(width=0, shape="hv"),
                    hoverinfo="skip",
                    showlegend=False,
                    name=f"{name} 95% CI",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=list(shown[x]),
                y=[_num(v) for v in shown["survival"]],
                mode="lines+markers",
                line=dict(shape="hv", color=color, width=2),
                marker=dict(size=5),
                name=str(name),
                hovertemplate="%{x}: %{y:.1%} still attending<extra>" + str(name) + "</extra>",
            )
        )
    _base_layout(fig, title, height)
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%", title_text="Still attending")
    fig.update_xaxes(title_text=x_title, rangemode="tozero")
    _suppressed_note(fig, notes, _k(frame))
    return fig


def dose_response(
    frame: pd.DataFrame,
    *,
    series: str = "instrument",
    x: str = "session_number",
    title: str | None = None,
    height: int = 340,
) -> go.Figure:
    """Cumulative share reliably improved by attended session number."""
    require_suppressed(frame)
    fig = go.Figure()
    groups, notes = _split_series(frame, series, x, "session numbers")
    for n, name, shown in groups:
        if shown.empty:
            continue
        fig.add_trace(
            go.Scatter(
                x=list(shown[x]),
                y=[_num(v) for v in shown["value"]],
                mode="lines+markers",
                line=dict(shape="hv", color=PALETTE[n % len(PALETTE)], width=2),
                name=str(name),
                hovertemplate="session %{x}: %{y:.1%} reliably improved<extra>"
                + str(name)
                + "</extra>",
            )
        )
    _base_layout(fig, title, height)
    fig.update_yaxes(range=[0, 1], tickformat=".0%", title_text="Reliably improved by then")
    fig.update_xaxes(title_text="Attended sessions", rangemode="tozero")
    _suppressed_note(fig, notes, _k(frame))
    return fig


def clinician_funnel(
    frame: pd.DataFrame,
    *,
    service_value: float | None,
    unit_se: float | None,
    levels: Mapping[str, float] | None = None,
    title: str | None = None,
    height: int = 380,
) -> go.Figure:
    """Funnel plot: each clinician's severity-adjusted effect size against caseload.

    Points are plotted at (episodes, SAES) with their 95% CI; the funnel lines
    are the service value +/- z x unit_se / sqrt(n). No ranking: the x axis is
    the number of episodes, and only points outside the funnel stand out.
    """
    require_suppressed(frame)
    levels = dict(levels or {"95%": 1.959964, "99.8%": 3.090232})
    shown = frame[~frame[SUPPRESSED].astype(bool)]
    hidden = int(frame[SUPPRESSED].astype(bool).sum())
    fig = go.Figure()
    ns = [_num(v) for v in shown["n_episodes"]] if len(shown) else []
    n_max = max([n for n in ns if n] + [20])
    if service_value is not None and unit_se:
        grid = [2 + i * (n_max * 1.1 - 2) / 80 for i in range(81)]
        for (name, z), dash in zip(levels.items(), ("dash", "dot"), strict=False):
            for sign in (1, -1):
                fig.add_trace(
                    go.Scatter(
                        x=grid,
                        y=[service_value + sign * z * unit_se / n**0.5 for n in grid],
                        mode="lines",
                        line=dict(color=GREY, dash=dash, width=1),
                        name=f"{name} control limits",
                        showlegend=sign == 1,
                        legendgroup=name,
                        hoverinfo="skip",
                    )
                )
        fig.add_trace(
            go.Scatter(
                x=[0, n_max * 1.1],
                y=[service_value, service_value],
                mode="lines",
                line=dict(color=PALETTE[3], width=1.5),
                name=f"Service ({service_value:.2f})",
                hoverinfo="name",
            )
        )
    if len(shown):
        d = [_num(v) for v in shown["saes"]]
        fig.add_trace(
            go.Scatter(
                x=ns,
                y=d,
                mode="markers",
                marker=dict(size=9, color=PALETTE[0]),
                error_y=_whiskers(d, list(shown["saes_ci_low"]), list(shown["saes_ci_high"]))
                | {"color": "rgba(0,114,178,0.4)"},
                text=list(shown["clinician_id"]),
                name="Clinician (95% CI)",
                hovertemplate="%{text}: SAES %{y:.2f}, %{x} episodes<extra></extra>",
            )
        )
    _base_layout(fig, title, height)
    fig.update_xaxes(title_text="Episodes with paired scores", rangemode="tozero")
    fig.update_yaxes(title_text="Severity-adjusted effect size")
    if hidden:
        _suppressed_note(fig, [f"{hidden} clinician(s)"], _k(frame))
    return fig


def grouped_bars(
    frame: pd.DataFrame,
    *,
    x: str,
    series: str,
    labels: Mapping[Any, str] | None = None,
    y: str = "value",
    percent: bool = True,
    title: str | None = None,
    x_order: Sequence[Any] | None = None,
    y_title: str | None = None,
    horizontal: bool = False,
    height: int = 340,
) -> go.Figure:
    """Bars per category and series (equity breakdowns, alert counts, backtest rates)."""
    require_suppressed(frame)
    fig = go.Figure()
    order = list(labels) if labels else list(dict.fromkeys(frame[series]))
    cats = list(x_order) if x_order is not None else list(dict.fromkeys(frame[x]))
    missing = []
    for n, key in enumerate(order):
        rows = frame[frame[series] == key]
        if rows.empty:
            continue
        name = labels.get(key, str(key)) if labels else str(key)
        xs, ys = [], []
        for cat in cats:
            row = rows[rows[x] == cat]
            if row.empty:
                continue
            if row[SUPPRESSED].iloc[0]:
                missing.append(f"{name}: {cat}")
                continue
            xs.append(str(cat))
            ys.append(_num(row[y].iloc[0]))
        fmt = ":.1%" if percent else ":.4g"
        fig.add_trace(
            go.Bar(
                x=ys if horizontal else xs,
                y=xs if horizontal else ys,
                orientation="h" if horizontal else "v",
                name=name,
                marker_color=PALETTE[n % len(PALETTE)],
                hovertemplate=("%{y}: %{x" if horizontal else "%{x}: %{y")
                + fmt
                + "}<extra>"
                + name
                + "</extra>",
            )
        )
    _base_layout(fig, title, height)
    fig.update_layout(barmode="group")
    value_axis = fig.update_xaxes if horizontal else fig.update_yaxes
    cat_axis = fig.update_yaxes if horizontal else fig.update_xaxes
    if percent:
        value_axis(range=[0, 1], tickformat=".0%", title_text=y_title)
    else:
        value_axis(rangemode="tozero", title_text=y_title)
    cat_axis(type="category", categoryorder="array", categoryarray=[str(c) for c in cats])
    _suppressed_note(fig, missing, _k(frame))
    return fig


def alliance_trend(
    frame: pd.DataFrame,
    *,
    x: str = "period",
    kind: str = "kpi",
    mean_key: str = "mean_srs",
    share_key: str = "low_alliance_share",
    mean_range: Sequence[float] = (0, 40),
    cutoff: float | None = None,
    title: str | None = None,
    height: int = 320,
) -> go.Figure:
    """Mean SRS per month (line, left axis) and the share of low-alliance ratings
    (bars, right axis), from the long published frame (one row per month and kind)."""
    require_suppressed(frame)
    frame = frame.sort_values(x)
    fig = go.Figure()
    missing: list[str] = []
    for key, label in ((share_key, "Low-alliance share"), (mean_key, "Mean SRS")):
        rows = frame[frame[kind] == key]
        flags = rows[SUPPRESSED].astype(bool)
        ys = [None if f else _num(v) for v, f in zip(rows["value"], flags, strict=True)]
        missing += [f"{label} {_label(p)}" for p in rows.loc[flags, x]]
        if key == share_key:
            fig.add_trace(
                go.Bar(
                    x=list(rows[x]),
                    y=ys,
                    yaxis="y2",
                    name=f"{label} (right axis)",
                    marker_color="rgba(204,121,167,0.45)",
                    hovertemplate="%{x|%b %Y}: %{y:.1%} low<extra></extra>",
                )
            )
        else:
            fig.add_trace(
                go.Scatter(
                    x=list(rows[x]),
                    y=ys,
                    mode="lines+markers",
                    connectgaps=False,
                    name=label,
                    line=dict(color=PALETTE[0], width=2),
                    hovertemplate="%{x|%b %Y}: mean %{y:.1f}<extra></extra>",
                )
            )
    if cutoff is not None and len(frame):
        fig.add_trace(
            go.Scatter(
                x=[frame[x].min(), frame[x].max()],
                y=[cutoff, cutoff],
                mode="lines",
                line=dict(color=GREY, dash="dot"),
                name=f"Low-alliance cutoff ({cutoff:g})",
                hoverinfo="name",
            )
        )
    _base_layout(fig, title, height)
    fig.update_layout(
        yaxis=dict(range=list(mean_range), title_text="Mean SRS"),
        yaxis2=dict(
            overlaying="y",
            side="right",
            range=[0, 1],
            tickformat=".0%",
            showgrid=False,
            title_text="Low-alliance share",
        ),
    )
    fig.update_xaxes(tickformat="%b %Y")
    _suppressed_note(fig, missing, _k(frame))
    return fig
