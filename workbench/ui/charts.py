"""Plotly figures built from plain data (token times, history rows): pure functions, no Streamlit."""

from __future__ import annotations

import statistics
from datetime import datetime

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ..latency import to_ms

PALETTE = ("#3b5bdb", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#1098ad", "#f08c00", "#5c940d")
TTFT_COLOUR = "#e8590c"
GAP_COLOUR = "#3b5bdb"
_FONT = dict(size=12)


def token_latencies_ms(token_times: list[float]) -> list[float]:
    """Latency of each generated token in ms: the first is TTFT, each later one the gap since the previous.

    Args:
        token_times: seconds since request start, one per token (``GenerationResult.token_times``).
    """
    if not token_times:
        return []
    gaps = [b - a for a, b in zip(token_times, token_times[1:])]
    return [token_times[0] * 1000] + [g * 1000 for g in gaps]


def token_latency_figure(token_times: list[float], title: str = "Per-token latency") -> go.Figure:
    """Per-token latency of one reply: TTFT marked at token 0, then inter-token gaps with their median.

    Args:
        token_times: seconds since request start, one per token so far.
        title: the chart title.
    """
    latencies = token_latencies_ms(token_times)
    fig = go.Figure()
    if len(latencies) > 1:
        fig.add_trace(
            go.Scatter(
                x=list(range(1, len(latencies))),
                y=latencies[1:],
                mode="lines+markers",
                marker=dict(size=4, color=GAP_COLOUR),
                line=dict(width=1.5, color=GAP_COLOUR),
                name="inter-token gap",
                hovertemplate="token %{x}<br>%{y:.1f} ms<extra></extra>",
            )
        )
        median = statistics.median(latencies[1:])
        fig.add_hline(
            y=median,
            line=dict(dash="dot", width=1, color="#868e96"),
            annotation_text=f"median gap {median:.1f} ms",
            annotation_position="top right",
            annotation_font=dict(size=11, color="#495057"),
        )
    if latencies:
        fig.add_trace(
            go.Scatter(
                x=[0],
                y=[latencies[0]],
                mode="markers+text",
                marker=dict(size=11, symbol="diamond", color=TTFT_COLOUR),
                text=[f"TTFT {latencies[0]:.0f} ms"],
                textposition="middle right",
                textfont=dict(size=11, color=TTFT_COLOUR),
                name="TTFT",
                hovertemplate="TTFT<br>%{y:.1f} ms<extra></extra>",
            )
        )
    else:
        empty_note(fig, "Send a message to see each token's latency")
    return _small_line_layout(fig, title, "token index", "latency (ms)")


def history_figure(rows: list[dict], title: str = "Request history") -> go.Figure:
    """TTFT and decode tok/s of past requests, one colour per recipe label.

    Cache hits are drawn as their own series (hollow markers) so they never pass for model latency.

    Args:
        rows: history rows, oldest first (``HistoryStore.recent``): ``recipe_label``, ``started_at``,
            ``ttft_s``, ``decode_tok_s``, ``cache``.
        title: the chart title.
    """
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1)
    colours: dict[str, str] = {}
    for label in dict.fromkeys(r.get("recipe_label") or r["recipe_key"] for r in rows):
        colours[label] = PALETTE[len(colours) % len(PALETTE)]
    for (label, hit), series in _series(rows).items():
        x = [n for n, _ in series]
        when = [datetime.fromtimestamp(r["started_at"]).strftime("%H:%M:%S") for _, r in series]
        name = f"{label} (cache {hit})" if hit != "miss" else label
        marker = dict(color=colours[label], size=7, symbol="circle-open" if hit != "miss" else "circle")
        common = dict(mode="markers+lines", marker=marker, line=dict(width=1, color=colours[label]), name=name,
                      legendgroup=name, customdata=when)
        ttft = [to_ms(r.get("ttft_s")) for _, r in series]
        tok_s = [r.get("decode_tok_s") for _, r in series]
        fig.add_trace(go.Scatter(x=x, y=ttft, hovertemplate="#%{x} at %{customdata}<br>TTFT %{y:.1f} ms<extra>"
                                 + name + "</extra>", **common), row=1, col=1)
        fig.add_trace(go.Scatter(x=x, y=tok_s, showlegend=False, hovertemplate="#%{x} at %{customdata}<br>"
                                 "%{y:.1f} tok/s<extra>" + name + "</extra>", **common), row=2, col=1)
    if not rows:
        empty_note(fig, "No requests recorded yet")
    fig.update_yaxes(title_text="TTFT (ms)", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(title_text="decode tok/s", rangemode="tozero", row=2, col=1)
    fig.update_xaxes(title_text="request #", row=2, col=1)
    if len(rows) <= 20:
        fig.update_xaxes(dtick=1)  # whole request numbers only; plotly would otherwise tick at 0.5
    return layout(fig, title, 420, legend_y=-0.18)


BETTER_COLOUR = "#2b8a3e"
WORSE_COLOUR = "#e8590c"
SAME_COLOUR = "#868e96"


def ratio_figure(ratios: list[dict], title: str = "This recipe ÷ baseline", reference: str = "baseline") -> go.Figure:
    """Horizontal bars of recipe ÷ baseline per measure, coloured by whether that is better or worse.

    Args:
        ratios: ``changes.ratios`` output: ``name``, ``ratio``, ``better`` (True / False / None), ``text``.
        title: the chart title.
        reference: what the ratios are relative to, as the axis, legend and the line at 1 name it.
    """
    fig = go.Figure()
    colour = {True: BETTER_COLOUR, False: WORSE_COLOUR, None: SAME_COLOUR}
    for better, legend in ((True, f"better than {reference}"), (False, f"worse than {reference}"),
                           (None, "about the same")):
        shown = [r for r in ratios if r["better"] is better]
        if not shown:
            continue
        fig.add_trace(go.Bar(
            x=[r["ratio"] for r in shown],
            y=[r["name"] for r in shown],
            orientation="h",
            marker=dict(color=colour[better]),
            text=[r["text"] for r in shown],
            textposition="outside",
            cliponaxis=False,
            name=legend,
            hovertemplate="%{y}: %{x:.3f}× " + reference + "<extra></extra>",
        ))
    if not ratios:
        empty_note(fig, "Nothing measured yet")
    fig.add_vline(x=1, line=dict(dash="dot", width=1.5, color="#495057"), annotation_text=f"{reference} = 1",
                  annotation_position="top", annotation_font=dict(size=11, color="#495057"))
    top = max([r["ratio"] for r in ratios] + [1.0])
    return layout(fig, title, 80 + 48 * max(len(ratios), 2), top=50, right=30, legend_y=-0.25, barmode="overlay",
                  xaxis=dict(title=f"× {reference}", range=[0, top * 1.3], zeroline=True),
                  yaxis=dict(categoryorder="array", categoryarray=[r["name"] for r in reversed(ratios)],
                             automargin=True))


def distribution_figure(samples: dict[str, dict[str, list[float | None]]], measures: list[tuple[str, str]],
                        title: str = "Distribution per recipe") -> go.Figure:
    """Box plots with every point, one panel per measure, one box per recipe: how the figures spread.

    Args:
        samples: recipe name -> measure key -> values (None dropped), e.g. ``{"A": {"ttft_ms": [...]}}``.
        measures: (key, axis title) of each panel, left to right.
        title: the chart title.
    """
    fig = make_subplots(rows=1, cols=len(measures), subplot_titles=[name for _, name in measures],
                        horizontal_spacing=0.08)
    for i, name in enumerate(samples):
        colour = PALETTE[i % len(PALETTE)]
        for col, (key, axis) in enumerate(measures, start=1):
            values = [v for v in samples[name].get(key, []) if v is not None]
            fig.add_trace(go.Box(y=values, name=name, boxpoints="all", jitter=0.4, pointpos=0,
                                 marker=dict(color=colour, size=5), line=dict(color=colour), showlegend=col == 1,
                                 legendgroup=name, hovertemplate=f"{name}<br>%{{y:.1f}} {axis}<extra></extra>"),
                          row=1, col=col)
            fig.update_yaxes(title_text=axis, rangemode="tozero", row=1, col=col)
    if not samples:
        empty_note(fig, "Nothing measured yet")
    return layout(fig, title, 360, top=60)


def loss_figure(steps: list[int], losses: list[float], title: str = "Distillation loss") -> go.Figure:
    """The distillation loss (KL divergence to the teacher) per step.

    Args:
        steps: step numbers, ascending.
        losses: the loss at each of those steps.
        title: the chart title.
    """
    fig = go.Figure()
    if steps:
        fig.add_trace(go.Scatter(x=steps, y=losses, mode="lines+markers" if len(steps) < 40 else "lines",
                                 marker=dict(size=4, color=GAP_COLOUR), line=dict(width=1.5, color=GAP_COLOUR),
                                 name="loss", hovertemplate="step %{x}<br>loss %{y:.4f}<extra></extra>"))
    else:
        empty_note(fig, "The loss appears once training starts")
    return _small_line_layout(fig, title, "step", "KL divergence to the teacher")


LOSS_PARTS = {"kl": "KL to the teacher", "layers": "mapped layers", "attention": "attention", "hidden": "final hidden"}


def student_curves_figure(parts: dict[str, list[float]], evals: list[dict], teacher_ppl: float | None = None,
                          title: str = "Healing the student") -> go.Figure:
    """The student's loss terms per step (top) and its held-out perplexity at each check (bottom), with the
    teacher's perplexity on the same text as a dashed line: how far healing has come, and whether it still moves.

    Args:
        parts: loss term -> its value at steps 1, 2, ... (``"kl"``, ``"layers"``, ``"attention"``).
        evals: held-out checks ``{"step", "heldout_ppl"}``, step 0 being the unhealed student.
        teacher_ppl: the teacher's held-out perplexity.
    """
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.12,
                        subplot_titles=("loss terms (weighted sum is trained)", "held-out perplexity"))
    for i, (part, values) in enumerate(parts.items()):
        steps = list(range(1, len(values) + 1))
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", line=dict(width=1.5, color=PALETTE[i % len(PALETTE)]),
                                 name=LOSS_PARTS.get(part, part),
                                 hovertemplate="step %{x}<br>%{y:.4f}<extra>" + LOSS_PARTS.get(part, part) + "</extra>"),
                      row=1, col=1)
    if evals:
        fig.add_trace(go.Scatter(x=[e["step"] for e in evals], y=[e["heldout_ppl"] for e in evals], mode="lines+markers",
                                 marker=dict(size=6, color="#2b8a3e"), line=dict(width=2, color="#2b8a3e"),
                                 name="student, held-out",
                                 hovertemplate="step %{x}<br>perplexity %{y:.2f}<extra></extra>"), row=2, col=1)
        if teacher_ppl:
            fig.add_trace(go.Scatter(x=[0, max(e["step"] for e in evals) or 1], y=[teacher_ppl, teacher_ppl],
                                     mode="lines", line=dict(width=1.5, dash="dash", color="#868e96"),
                                     name="teacher, held-out",
                                     hovertemplate="teacher %{y:.2f}<extra></extra>"), row=2, col=1)
    if not parts and not evals:
        empty_note(fig, "The curves appear once training starts")
    fig.update_xaxes(title_text="step", row=2, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=1)
    return layout(fig, title, 460, top=60, legend_y=-0.18)


BATCH_METRICS = (("ttft_ms", "p50", "TTFT p50", "#e8590c"), ("e2e_ms", "p50", "E2E p50", "#3b5bdb"),
                 ("e2e_ms", "p99", "E2E p99", "#ae3ec9"))
SCHEDULER_DASH = {"static": "solid", "continuous": "dash"}
SCHEDULER_SYMBOL = {"static": "circle", "continuous": "diamond"}


def batching_figure(entries: list[dict], title: str = "Latency per request against aggregate throughput") -> go.Figure:
    """The batching trade-off: one line per latency measure and scheduler, one point per batch size.

    Moving right is more tokens per second for everyone together; moving up is a longer wait for each person.

    Args:
        entries: ``bench.sweep`` entries (``throughput_tok_s``, ``ttft_ms``, ``e2e_ms``, ``batch_size``,
            ``scheduler``).
        title: the chart title.
    """
    fig = go.Figure()
    schedulers = list(dict.fromkeys(e.get("scheduler", "static") for e in entries))
    for scheduler in schedulers:
        rows = sorted((e for e in entries if e.get("scheduler", "static") == scheduler and e.get("throughput_tok_s")),
                      key=lambda e: e["batch_size"])
        for key, stat, name, colour in BATCH_METRICS:
            points = [(e["throughput_tok_s"], e[key][stat], e["batch_size"]) for e in rows if e[key][stat] is not None]
            if not points:
                continue
            label = name if len(schedulers) == 1 else f"{name} · {scheduler}"
            labelled = (key, stat) == ("e2e_ms", "p99")  # the top line carries the batch sizes; the rest hover
            fig.add_trace(go.Scatter(
                x=[p[0] for p in points], y=[p[1] for p in points], name=label,
                mode="lines+markers+text" if labelled else "lines+markers",
                text=[f"batch {p[2]}" for p in points], textposition="top center", textfont=dict(size=10),
                line=dict(color=colour, width=2, dash=SCHEDULER_DASH.get(scheduler, "dot")),
                marker=dict(size=9, color=colour, symbol=SCHEDULER_SYMBOL.get(scheduler, "square")),
                hovertemplate=f"{label}<br>%{{text}}<br>%{{x:.1f}} tok/s in all<br>%{{y:.0f}} ms<extra></extra>",
            ))
    if not fig.data:
        empty_note(fig, "Run a sweep to see the trade-off")
    return layout(fig, title, 440, top=50, legend_y=-0.18,
                  xaxis=dict(title="aggregate throughput (new tokens / s, all users together)", rangemode="tozero"),
                  yaxis=dict(title="latency of one request (ms)", rangemode="tozero"))


def _series(rows: list[dict]) -> dict[tuple[str, str], list[tuple[int, dict]]]:
    """Rows numbered 1.. in time order, grouped by (recipe label, cache outcome)."""
    out: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for n, row in enumerate(rows, start=1):
        label = row.get("recipe_label") or row["recipe_key"]
        out.setdefault((label, row.get("cache") or "miss"), []).append((n, row))
    return out


def layout(fig: go.Figure, title: str, height: int, *, top: int = 40, right: int = 10, legend_y: float = -0.12,
           **extra) -> go.Figure:
    """What every chart's layout shares: its title, height, margins, a horizontal legend below it, the font.

    Args:
        fig: the figure.
        title: the chart title.
        height: pixels.
        top, right: margins in pixels (room for a title, for bar labels).
        legend_y: where the legend sits below the plot (a fraction of its height, negative).
        **extra: further layout settings (axes, barmode, ...).
    """
    fig.update_layout(title=dict(text=title, font=dict(size=14)), height=height, font=_FONT,
                      margin=dict(l=10, r=right, t=top, b=10),
                      legend=dict(orientation="h", yanchor="top", y=legend_y, x=0), **extra)
    return fig


def _small_line_layout(fig: go.Figure, title: str, x_title: str, y_title: str) -> go.Figure:
    """The layout of a small one-series chart (no legend, y from zero)."""
    return layout(fig, title, 300, xaxis_title=x_title, yaxis_title=y_title, yaxis=dict(rangemode="tozero"),
                  showlegend=False)


def empty_note(fig: go.Figure, text: str) -> None:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                       font=dict(size=13, color="#868e96"))


RATE_METRICS = (("p50", "TTFT p50", "#e8590c", "solid"), ("p99", "TTFT p99", "#c92a2a", "dash"))


def rate_label(rate: float | None) -> str:
    """'0.5/s', '2/s', 'all at once' (inf) or 'closed loop' (None): a request rate as the Benchmark page names it."""
    if rate is None:
        return "closed loop"
    return "all at once" if rate == float("inf") else f"{rate:g}/s"


def rate_figure(entries: list[dict], title: str = "Time to first token against the request rate") -> go.Figure:
    """TTFT p50 and p99 of each request rate (the entries' ``load``): one pair of lines per batch size and
    scheduler, the rates in the order they ran (the x axis is categorical: inf has no place on a number line).

    Args:
        entries: ``bench.sweep`` entries of the Poisson mode (``load.request_rate``, ``load.ttft_ms``).
        title: the chart title.
    """
    fig = go.Figure()
    series: dict[tuple[int, str], list[dict]] = {}
    for e in entries:
        if e.get("load", {}).get("request_rate") is not None:
            series.setdefault((e["batch_size"], e.get("scheduler", "static")), []).append(e)
    for (batch_size, scheduler), rows in series.items():
        which = "" if len(series) == 1 else f" · batch {batch_size} · {scheduler}"
        x = [rate_label(e["load"]["request_rate"]) for e in rows]
        for stat, name, colour, dash in RATE_METRICS:
            y = [e["load"]["ttft_ms"][stat] for e in rows]
            fig.add_trace(go.Scatter(
                x=x, y=y, name=name + which, mode="lines+markers", line=dict(color=colour, width=2, dash=dash),
                marker=dict(size=9, color=colour),
                hovertemplate=f"{name}{which}<br>%{{x}}<br>%{{y:.0f}} ms<extra></extra>"))
    if not fig.data:
        empty_note(fig, "Run the benchmark at several request rates to see TTFT grow with the load")
    return layout(fig, title, 380, top=50, legend_y=-0.2,
                  xaxis=dict(title="request rate asked (Poisson arrivals)", type="category"),
                  yaxis=dict(title="time to first token (ms)", rangemode="tozero"))
