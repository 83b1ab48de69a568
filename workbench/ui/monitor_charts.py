"""Plotly figures of the Monitor page, built from history rows and the tables of ``workbench.metrics``:
pure functions, no Streamlit. Cache hits are always their own series, never model latency."""

from __future__ import annotations

from datetime import datetime

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..observe.dashboard import is_cache_hit, recipe_name
from ..latency import to_ms
from .charts import PALETTE, empty_note, layout

_LATENCY = (("ttft_s", "TTFT (ms)"), ("tpot_s", "TPOT (ms)"), ("e2e_s", "E2E (ms)"))


def recipe_colours(rows: list[dict]) -> dict[str, str]:
    """One palette colour per recipe label, in order of first appearance."""
    colours: dict[str, str] = {}
    for row in rows:
        colours.setdefault(recipe_name(row), PALETTE[len(colours) % len(PALETTE)])
    return colours


def _when(epoch_s: float) -> datetime:
    return datetime.fromtimestamp(epoch_s)


def latency_over_time_figure(rows: list[dict], title: str = "Latency over time") -> go.Figure:
    """TTFT, TPOT and E2E of each request against the time it started, one colour per recipe.

    Model requests are filled markers; cache hits are hollow markers in their own legend entry (E2E only: a hit
    has no decode to speak of).

    Args:
        rows: history rows, oldest first.
        title: the chart title.
    """
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06)
    colours = recipe_colours(rows)
    for label, colour in colours.items():
        mine = [r for r in rows if recipe_name(r) == label]
        misses = [r for r in mine if not is_cache_hit(r)]
        hits = [r for r in mine if is_cache_hit(r)]
        for i, (field, axis) in enumerate(_LATENCY, start=1):
            if misses:
                fig.add_trace(go.Scatter(
                    x=[_when(r["started_at"]) for r in misses], y=[to_ms(r.get(field)) for r in misses],
                    mode="markers+lines", marker=dict(size=6, color=colour), line=dict(width=1, color=colour),
                    name=label, legendgroup=label, showlegend=i == 1,
                    hovertemplate="%{x|%H:%M:%S}<br>" + axis.split(" ")[0] + " %{y:.1f} ms<extra>" + label + "</extra>",
                ), row=i, col=1)
        if hits:
            name = f"{label} (cache hit)"
            fig.add_trace(go.Scatter(
                x=[_when(r["started_at"]) for r in hits], y=[to_ms(r.get("e2e_s")) for r in hits], mode="markers",
                marker=dict(size=8, color=colour, symbol="circle-open"), name=name, legendgroup=name,
                hovertemplate="%{x|%H:%M:%S}<br>cache hit E2E %{y:.2f} ms<extra>" + label + "</extra>",
            ), row=3, col=1)
    if not rows:
        empty_note(fig, "No requests in this window")
    for i, (_, axis) in enumerate(_LATENCY, start=1):
        fig.update_yaxes(title_text=axis, rangemode="tozero", row=i, col=1)
    return layout(fig, title, 620)


def throughput_figure(series: list[dict], rows: list[dict], title: str = "Model throughput") -> go.Figure:
    """Generated tokens per second per recipe over time (``metrics.throughput_series``), cache hits excluded.

    Args:
        series: ``throughput_series`` output.
        rows: the history rows it came from (for the recipe colours).
        title: the chart title.
    """
    fig = go.Figure()
    colours = recipe_colours(rows)
    for label in dict.fromkeys(s["recipe"] for s in series):
        mine = [s for s in series if s["recipe"] == label]
        fig.add_trace(go.Scatter(
            x=[_when(s["t"]) for s in mine], y=[s["tokens_per_s"] for s in mine], mode="markers+lines",
            marker=dict(size=6, color=colours.get(label)), line=dict(width=1.5, color=colours.get(label)), name=label,
            customdata=[s["requests_per_s"] * s["bucket_s"] for s in mine],
            hovertemplate="%{x|%H:%M:%S}<br>%{y:.1f} tok/s (%{customdata} requests)<extra>" + label + "</extra>",
        ))
    if series:
        title = f"{title} (tokens per second, {_span(series[0]['bucket_s'])} buckets by request end)"
    else:
        empty_note(fig, "No model requests in this window")
    fig.update_yaxes(title_text="tokens / s", rangemode="tozero")
    return layout(fig, title, 320)


def histograms_figure(rows: list[dict], title: str = "Distribution of model latency") -> go.Figure:
    """Histograms of TTFT, TPOT and E2E per recipe, over model requests (cache misses) only.

    Args:
        rows: history rows.
        title: the chart title.
    """
    fig = make_subplots(rows=1, cols=3, subplot_titles=[axis for _, axis in _LATENCY], horizontal_spacing=0.06)
    colours = recipe_colours(rows)
    misses = [r for r in rows if not is_cache_hit(r)]
    for label, colour in colours.items():
        mine = [r for r in misses if recipe_name(r) == label]
        for i, (field, _) in enumerate(_LATENCY, start=1):
            values = [to_ms(r.get(field)) for r in mine if r.get(field) is not None]
            if values:
                fig.add_trace(go.Histogram(x=values, name=label, legendgroup=label, showlegend=i == 1, opacity=0.6,
                                           marker=dict(color=colour), nbinsx=30,
                                           hovertemplate="%{x} ms: %{y} requests<extra>" + label + "</extra>"),
                              row=1, col=i)
    if not misses:
        empty_note(fig, "No model requests in this window")
    fig.update_layout(barmode="overlay")
    fig.update_yaxes(title_text="requests", row=1, col=1)
    layout(fig, title, 340)
    fig.update_layout(margin=dict(t=70))  # room for the subplot titles under the chart title
    return fig


def cache_figure(cache_rows: list[dict], title: str = "Where answers came from (requests)") -> go.Figure:
    """Per recipe, requests answered by the model and by the response cache (exact, semantic), with the hit rate.

    Args:
        cache_rows: ``metrics.cache_table`` output.
        title: the chart title.
    """
    fig = go.Figure()
    recipes = [c["recipe"] for c in cache_rows]
    for field, name, colour in (("model", "model", "#868e96"), ("exact", "cache: exact", "#2b8a3e"),
                                ("semantic", "cache: semantic", "#1098ad")):
        fig.add_trace(go.Bar(y=recipes, x=[c[field] for c in cache_rows], orientation="h", name=name,
                             marker=dict(color=colour), hovertemplate="%{y}: %{x} requests<extra>" + name + "</extra>"))
    for c in cache_rows:
        fig.add_annotation(y=c["recipe"], x=c["requests"], text=f"hit rate {c['hit_rate']:.0%}", showarrow=False,
                           xanchor="left", xshift=6, font=dict(size=11, color="#495057"))
    if not cache_rows:
        empty_note(fig, "No requests in this window")
    fig.update_layout(barmode="stack", xaxis=dict(rangemode="tozero"), yaxis=dict(automargin=True))
    return layout(fig, title, 120 + 40 * max(len(cache_rows), 2))


def memory_figure(samples: list[tuple[float, float]], title: str = "Memory of the app's process") -> go.Figure:
    """Resident memory (RSS) over time.

    Args:
        samples: (epoch seconds, RSS in MB) pairs, oldest first (``metrics.MemorySampler``).
        title: the chart title.
    """
    fig = go.Figure()
    if samples:
        fig.add_trace(go.Scatter(x=[_when(t) for t, _ in samples], y=[mb for _, mb in samples], mode="lines",
                                 line=dict(width=1.5, color=PALETTE[0]), name="RSS", fill="tozeroy",
                                 hovertemplate="%{x|%H:%M:%S}<br>%{y:.0f} MB<extra></extra>"))
    else:
        empty_note(fig, "No memory readings yet")
    fig.update_yaxes(title_text="RSS (MB)", rangemode="tozero")
    fig.update_layout(showlegend=False)
    return layout(fig, title, 260)


def _span(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:g} d"
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"
