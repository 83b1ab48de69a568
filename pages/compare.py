"""Two recipes side by side: the same prompt to both, each answer streamed with its own figures, then B against A."""

import streamlit as st

from workbench.ui import compare_view, navigation

navigation.require_app()
st.title("Compare")
st.caption("Set two recipes, A and B, and send both the same prompt. Each answer streams with its own time to "
           "first token (TTFT), time per output token (TPOT) and decode speed, measured where the model emits each "
           "token; then the summary says how many times faster B is and how alike the two answers are.")
engines = compare_view.recipe_panes()
settings, mode = compare_view.run_settings()

one, many = st.tabs(["One prompt", "Prompt set"])
with one:
    keep = compare_view.conversation_controls()
    compare_view.show_turns(compare_view.turns())
    live = st.container()
    ready = all(engines.values()) and settings is not None
    prompt = st.chat_input("Send a prompt to A and B", disabled=not ready)
    if prompt and ready:
        with live:
            compare_view.compare_turn(engines, prompt, settings, mode, keep)
with many:
    compare_view.prompt_set(engines, settings, mode)
