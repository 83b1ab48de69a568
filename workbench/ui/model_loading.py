"""Models the pages need: their shared slots, built in the background with a progress bar, and the model card."""

from __future__ import annotations

import streamlit as st

from ..formats import human_bytes, human_count
from ..recipe import REMOTE, Recipe
from ..serving.engine import Engine
from . import recipe_form, shared, state

POLL_S = 0.2  # how often a waiting script wakes to redraw progress (and to let Stop interrupt it)


def require_engine() -> Engine:
    """The engine of the sidebar's recipe; while it builds, show progress; on failure, an error and stop."""
    (slot,) = require_slots(require_recipe())
    model_card(slot)
    if slot.busy:
        st.info(f"{slot.busy} has this model to itself: chat messages sent now are refused until it ends (Stop is "
                "on its page).", icon=":material/hourglass_top:")
    return slot.engine


def require_recipe() -> Recipe:
    """The sidebar's recipe; without one, say why (no model chosen, or a combination that cannot run) and stop."""
    recipe = state.current_recipe()
    if recipe is None:
        problem = state.recipe_error()
        if problem:
            st.warning(f"The recipe in the sidebar cannot run here: {problem}", icon=":material/block:")
        else:
            st.info("Choose a model in the sidebar to start.")
        st.stop()
    return recipe


def require_local(recipe: Recipe, what: str) -> None:
    """Stop with a note where a page needs a model run here (its weights, its baseline), not a server's.

    Args:
        recipe: the sidebar's recipe.
        what: the start of the sentence, e.g. "Measuring what a recipe changed".
    """
    if recipe.runtime == REMOTE:
        st.info(f"{what} needs a model run here: the sidebar names a server ({recipe.label()}), which runs its own "
                "weights and kernels. Chat, Compare, Monitor and Benchmark measure a server; give a local model in "
                "the sidebar for this page.", icon=":material/dns:")
        st.stop()


def require_slots(*recipes: Recipe) -> list[shared.ModelSlot]:
    """The shared slots of these recipes, ready; their builds run together, each with a progress bar.

    On a failed build, show its error and stop; the same for a model unloaded meanwhile to make room.
    """
    trust = state.remote_code_allowed()
    slots = [model_slot(recipe, trust) for recipe in dict.fromkeys(recipes)]
    _await_builds([slot for slot in slots if not slot.done])
    for slot in slots:
        if slot.error:
            st.error(slot.error)
            st.stop()
        if slot.engine is None:  # released between our lookup and now (another session switched recipes)
            st.warning("This model was just unloaded to make room for another recipe; reload the page to rebuild it.")
            st.stop()
    return slots


def model_slot(recipe: Recipe, trust_remote_code: bool) -> shared.ModelSlot:
    """The shared slot of a recipe whose model this server allows; else its reason as an error, and stop.

    The recipe form refuses such a model already; this checks again where every page gets its model, whatever
    drew the recipe, and grants remote code only where the server allows it.
    """
    access = state.access()
    refusal = recipe_form.access_refusal(recipe.model, recipe.variant, access)
    if refusal:
        st.error(refusal, icon=":material/block:")
        st.stop()
    return shared.model_slot(recipe, trust_remote_code and access.remote_code)


def _await_builds(slots: list[shared.ModelSlot]) -> None:
    # Blocks this run (the page needs the models) but redraws every POLL_S, which also lets a sidebar change
    # interrupt the wait; the builds themselves carry on in the background.
    if not slots:
        return
    bars = [st.progress(slot.fraction, text=_build_text(slot)) for slot in slots]
    while not all(slot.wait(POLL_S / len(slots)) for slot in slots):
        for bar, slot in zip(bars, slots):
            bar.progress(slot.fraction, text=_build_text(slot))
    for bar in bars:
        bar.empty()


def _build_text(slot: shared.ModelSlot) -> str:
    return f"Building {slot.recipe.label()}: {slot.stage} — {slot.elapsed_s:.1f} s"


def model_card(slot: shared.ModelSlot, notes: bool = True) -> None:
    """The loaded model in the sidebar: recipe label and key, parameters, weight bytes, build time, notes.

    Args:
        slot: a ready slot.
        notes: draw the build notes too (a page that shows them itself passes False).
    """
    model = slot.model
    if model is None:
        return
    recipe, stats = model.recipe, model.stats
    with st.sidebar:
        st.divider()
        st.subheader("Loaded model")
        st.markdown(
            f"**{recipe.label()}**  \nrecipe key `{recipe.key()}`  \n"
            f"{size_text(stats)}  \n"
            + nonzero_line(stats.params, stats.nonzero_params)
            + runtime_line(recipe.runtime, stats)
            + f"{'reached' if recipe.runtime == REMOTE else 'built'} in {stats.build_s:.1f} s · backend: {stats.backend}"
        )
        if notes and model.notes:
            st.info("\n".join(f"- {note}" for note in model.notes), icon=":material/info:")


def size_text(stats) -> str:
    """'134.5 M parameters · 538.1 MB of weights'; "—" for a size the model does not know (a server that does not
    say its model's: 0), never "0"."""
    params = human_count(stats.params) if stats.params else "—"
    weights = human_bytes(stats.weight_bytes) if stats.weight_bytes else "—"
    return f"{params} parameters · {weights} of weights"


def runtime_line(runtime: str, stats) -> str:
    """'runtime llama.cpp · 2 threads · 5.35 bits per weight' and a line break."""
    parts = [f"runtime {runtime}"]
    if stats.threads:
        parts.append(f"{stats.threads} thread{'s' if stats.threads != 1 else ''}")
    if stats.tensor_types is not None:
        parts.append(f"{stats.bits_per_weight:.2f} bits per weight")
    return " · ".join(parts) + "  \n"


def nonzero_line(params: int, nonzero: int) -> str:
    """'67.3 M non-zero parameters (50% zero)' and a line break, or '' when (almost) no weight is zero."""
    if nonzero >= params * 0.995:  # a dense model has a few exact zeros of its own
        return ""
    return f"{human_count(nonzero)} non-zero parameters ({1 - nonzero / params:.0%} zero)  \n"

