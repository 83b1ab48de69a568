"""The Monitor page's parts: the app's Prometheus exporter (one per server process), the filters, and the
dashboard that refreshes itself from the request history."""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from ..latency import summarize
from ..observe import dashboard as queries
from ..observe import listeners, prometheus
from ..observe.dashboard import MemorySampler
from ..observe.history import HistoryStore
from ..observe.prometheus import PrometheusExporter
from . import draw, monitor_charts, state

WINDOWS = {"Last 15 minutes": 900, "Last hour": 3600, "Last 24 hours": 86400, "Last 7 days": 7 * 86400,
           "All time": None}
REFRESH_S = (2, 5, 15, 60)
MAX_ROWS = 20_000  # newest requests read per refresh; older ones are left to Prometheus and the exports
ORIGINS = {"chat": "Chat page", "cli": "workbench generate", "bench": "benchmarks", "serve": "workbench serve"}


@dataclass
class ExporterHandle:
    """The app's exporter and where it serves: ``url`` when serving, ``problem`` when it could not."""

    exporter: PrometheusExporter
    url: str | None = None
    problem: str | None = None


@st.cache_resource(show_spinner=False)
def metrics_exporter() -> ExporterHandle:
    """The Prometheus exporter of this server process: every request recorded from now on is counted; served on
    ``WORKBENCH_METRICS_HOST``:``WORKBENCH_METRICS_PORT`` (default 127.0.0.1:9464). A port in use is a message,
    never an error: the app works without it."""
    exporter = PrometheusExporter()
    listeners.add_listener(exporter.record)
    try:
        host, port = prometheus.exporter_address_from_env()
    except ValueError as exc:
        return ExporterHandle(exporter, problem=f"Prometheus metrics are not served: {exc}.")
    if port is None:
        return ExporterHandle(exporter)
    try:
        server = exporter.serve(port, host)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return ExporterHandle(exporter, problem=(
            f"Prometheus metrics are not served: cannot listen on {host}:{port} ({reason}); another program (or "
            f"another copy of the app) probably uses that port. Start the app with {prometheus.METRICS_PORT_ENV} set to "
            f"a free port, or 'off'. Everything else works; `workbench metrics-server --port N` can serve the "
            "same figures from the history."))
    return ExporterHandle(exporter, url=f"http://{host}:{server.server_address[1]}/metrics")


@st.cache_resource(show_spinner=False)
def memory_sampler() -> MemorySampler:
    """This process's resident memory, read every 5 s on a background thread from the first visit on."""
    sampler = MemorySampler(min_gap_s=1.0)

    def loop() -> None:
        while True:
            sampler.sample()
            time.sleep(5)

    threading.Thread(target=loop, name="memory-sampler", daemon=True).start()
    return sampler


def exporter_status() -> None:
    """One line on where Prometheus can scrape this app, or why it cannot."""
    handle = metrics_exporter()
    if handle.problem:
        st.warning(handle.problem, icon=":material/warning:")
    elif handle.url:
        st.caption(f"Prometheus scrapes this app at {handle.url} (requests since the app started); "
                   "`workbench metrics-server` serves the whole history, from every process.")
    else:
        st.caption(f"The Prometheus exporter is off ({prometheus.METRICS_PORT_ENV}=off).")


def history_rows(since: float | None = None, *, warn: bool = False) -> list[dict] | None:
    """The newest recorded requests (oldest first), or None with an error shown when the history is unreadable.

    What went wrong with the history (``HistoryStore.problem``: a damaged file moved aside, rows not written) is
    a warning: shown when ``warn`` (the dashboard) or when no row came back (the page stops there).
    """
    try:
        history = HistoryStore()
        rows = history.recent(limit=MAX_ROWS, since=since)
    except (OSError, sqlite3.Error) as exc:
        st.error(f"The request history cannot be read: {exc}", icon=":material/error:")
        return None
    if history.problem and (warn or not rows):
        st.warning(history.problem, icon=":material/warning:")
    return rows


def empty_history() -> None:
    st.info("No requests recorded yet. Ask something on the Chat page, or run `workbench generate --prompt "
            "\"...\"` or `workbench bench` in a shell: every request is recorded in "
            f"`{HistoryStore().path}` and shows up here, with its latency, throughput and cache outcome.",
            icon=":material/monitoring:")
    st.page_link("pages/chat.py", label="Go to the chat", icon=":material/chat:")


@dataclass(frozen=True)
class Filters:
    recipe_keys: tuple[str, ...]  # empty: every recipe
    origins: tuple[str, ...]  # empty: every origin
    window: str
    live: bool
    refresh_s: int


def filters(rows: list[dict]) -> Filters:
    """Recipe, origin and time-window filters, and the live-refresh switch."""
    recipes = queries.recipes_of(reversed(rows))  # newest first
    origins = [o for o in dict.fromkeys([*ORIGINS, *(r.get("origin") or "" for r in rows)]) if o]
    recipe_col, origin_col, window_col, live_col, every_col = st.columns([7, 4, 4, 2, 2], vertical_alignment="bottom")
    keys = recipe_col.multiselect("Recipes", list(recipes), key=state.MONITOR_RECIPES, placeholder="All recipes",
                                  format_func=lambda k: f"{recipes[k]} · {k[:8]}")
    chosen_origins = origin_col.multiselect("Origin", origins, key=state.MONITOR_ORIGINS, placeholder="All",
                                            format_func=lambda o: ORIGINS.get(o, o))
    window = window_col.selectbox("Time window", list(WINDOWS), index=2, key=state.MONITOR_WINDOW)
    live = live_col.toggle("Live", value=True, key=state.MONITOR_LIVE, help="Refresh the charts on their own")
    refresh_s = every_col.selectbox("Every", REFRESH_S, index=1, key=state.MONITOR_REFRESH,
                                    format_func=lambda s: f"{s} s", disabled=not live)
    return Filters(tuple(keys), tuple(chosen_origins), window, live, refresh_s)


def dashboard(f: Filters) -> None:
    """The charts, table and exports for the filters; re-read from the history every ``refresh_s`` while live."""
    st.fragment(run_every=f.refresh_s if f.live else None)(_dashboard)(f)


def _dashboard(f: Filters) -> None:
    window_s = WINDOWS[f.window]
    since = time.time() - window_s if window_s else None
    rows = history_rows(since, warn=True)
    if rows is None:
        return
    rows = queries.filter_rows(rows, f.recipe_keys or None, None, f.origins or None)
    samples = memory_sampler().sample()
    if not rows:
        st.info(f"No requests match these filters in the chosen window ({f.window.lower()}). Widen the time window "
                "or clear the recipe and origin filters.", icon=":material/filter_alt_off:")
    else:
        _headline(rows, samples)
        _charts(rows)
        _tables(rows)
        _exports(rows, f)
    draw.chart(st.empty(), monitor_charts.memory_figure(samples), "monitor-memory")
    st.caption(f"Updated {time.strftime('%H:%M:%S')}" + (f"; next in {f.refresh_s} s" if f.live else ""))


def _headline(rows: list[dict], samples: list[tuple[float, float]]) -> None:
    misses = [r for r in rows if not queries.is_cache_hit(r)]
    ttft = summarize(r.get("ttft_s") for r in misses)
    hit_rate = queries.cache_hit_rate(rows)
    cols = st.columns(5)
    cols[0].metric("Requests", f"{len(rows):,}")
    cols[1].metric("From the model", f"{len(misses):,}", help="Cache misses: the only requests in latency figures")
    cols[2].metric("Cache hit rate", "n/a" if hit_rate is None else f"{hit_rate:.0%}")
    cols[3].metric("TTFT p50", "n/a" if ttft["p50"] is None else f"{ttft['p50'] * 1000:.0f} ms",
                   help="Median time to first token of model requests")
    cols[4].metric("Process memory", f"{samples[-1][1]:,.0f} MB" if samples else "n/a",
                   help="Resident memory (RSS) of the app's server process")


def _charts(rows: list[dict]) -> None:
    draw.chart(st.empty(), monitor_charts.latency_over_time_figure(rows), "monitor-latency")
    left, right = st.columns(2)
    with left:
        draw.chart(st.empty(), monitor_charts.throughput_figure(queries.throughput_series(rows), rows),
                           "monitor-throughput")
    with right:
        draw.chart(st.empty(), monitor_charts.cache_figure(queries.cache_table(rows)), "monitor-cache")
    draw.chart(st.empty(), monitor_charts.histograms_figure(rows), "monitor-histograms")


def _tables(rows: list[dict]) -> None:
    st.subheader("Per recipe")
    st.caption("Milliseconds. Model rows count cache misses only; answers from the response cache are their own "
               "rows. ITL counts every gap between tokens, so its n is the number of gaps.")
    table = pd.DataFrame(queries.summary_table(rows))
    table["recipe_key"] = table["recipe_key"].str[:8]
    columns = {f"{k}_ms": st.column_config.NumberColumn(k, format="%.1f") for k in ("mean", *queries.QUANTILES)}
    st.dataframe(table, hide_index=True, width="stretch", key="monitor-summary", height=35 * (len(table) + 1) + 3,
                 column_config={"recipe_key": "key", "n": st.column_config.NumberColumn("n", format="%d"), **columns})


def _exports(rows: list[dict], f: Filters) -> None:
    """CSV and JSON of the rows shown, built only when a user clicks (the dashboard redraws every few seconds)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    csv_col, json_col, _ = st.columns([1, 1, 3])
    csv_col.download_button("Export CSV", lambda: queries.rows_csv(rows), f"workbench-requests-{stamp}.csv",
                            "text/csv", icon=":material/download:", key="monitor-csv", on_click="ignore")
    json_col.download_button("Export JSON", lambda: export_json(rows, f), f"workbench-requests-{stamp}.json",
                             "application/json", icon=":material/download:", key="monitor-json", on_click="ignore")


def export_json(rows: list[dict], f: Filters) -> str:
    """The rows as JSON, with when they were exported and the filters that chose them."""
    return queries.rows_json(rows, exported_at=time.time(), window=f.window, recipes=list(f.recipe_keys),
                             origins=list(f.origins))
