"""Chat with the recipe's model: replies stream with their per-token latency, metrics and history."""

import streamlit as st

from workbench.ui import charts, chat, draw, model_loading, navigation, state

navigation.require_app()
st.title("Chat")
engine = model_loading.require_engine()

settings_col, clear_col = st.columns([6, 1], vertical_alignment="center")
with settings_col:
    settings = chat.generation_settings()
clear_col.button("Clear chat", icon=":material/delete:", on_click=state.clear_messages, width="stretch")

chat_col, chart_col = st.columns([3, 2], gap="large")
with chart_col:
    live_chart = st.empty()
    history_chart = st.empty()

transcript = chat.chat_transcript_settled()
draw.chart(live_chart, charts.token_latency_figure(chat.last_token_times(transcript), "Per-token latency (last reply)"),
           "live-latency")
chat.draw_history(history_chart, "history")
with chat_col:
    if not transcript:
        where = ("as each chunk arrives from the server, with TTFT split into network, queue and the server's own "
                 "time" if engine.recipe.runtime == "remote" else "where the model emits each token")
        st.caption("Ask anything below. Each reply shows its time to first token (TTFT), time per output token "
                   f"(TPOT) and decode speed, measured {where}.")
    chat.chat_transcript(transcript)

prompt = st.chat_input("Message the model", disabled=settings is None)
if prompt and settings is not None:
    with chat_col:
        chat.chat_turn(engine, prompt, settings, live_chart)
    chat.draw_history(history_chart, "history-updated")
