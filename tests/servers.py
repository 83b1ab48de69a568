"""OpenAI-compatible servers on loopback for tests of the app as a client: ``workbench serve``'s app on a model
(it reports llama.cpp-style timings, so the network split is complete), and a small app whose stream is cut
mid-answer. Import the fixtures into a test module (``from servers import tiny_server``)."""

from __future__ import annotations

import asyncio
import json
from contextlib import contextmanager

import pytest
from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import StreamingResponse
from processes import free_port

from workbench.serving.engine import Engine
from workbench.serving.http import HttpServer, create_app, model_id

CUT_MODEL = "cut-after-three"
CUT_WORDS = ("one ", "two ", "three ")


@contextmanager
def running(app):
    """An ASGI app on a uvicorn server of its own thread, on a free loopback port (``.url`` is its /v1)."""
    server = HttpServer(app, "127.0.0.1", free_port(), graceful_s=1.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def serving(model, api_key: str | None = None):
    """``workbench serve``'s app on a loaded model; yields (server, the name it serves the model under)."""
    engine = Engine(model)
    try:
        with running(create_app(engine, max_queue=16, api_key=api_key)) as server:
            yield server, model_id(engine.recipe)
    finally:
        engine.close()


def unreachable_url() -> str:
    """A loopback URL that nothing listens on (connections are refused at once)."""
    return f"http://127.0.0.1:{free_port()}/v1"


def cutting_app(key: str | None = None) -> FastAPI:
    """A server whose every answer streams three chunks, then drops the connection (a server that died)."""
    app = FastAPI()

    def authorize(authorization: str | None) -> None:
        if key and authorization != f"Bearer {key}":
            raise HTTPException(401, detail="invalid key")

    def chunk(text: str) -> str:
        return "data: " + json.dumps({"object": "chat.completion.chunk",
                                      "choices": [{"index": 0, "delta": {"content": text},
                                                   "finish_reason": None}]}) + "\n\n"

    @app.get("/v1/models")
    async def models(authorization: str | None = Header(None)):
        authorize(authorization)
        return {"object": "list", "data": [{"id": CUT_MODEL, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(body: dict, authorization: str | None = Header(None)):
        authorize(authorization)

        async def cut():
            for word in CUT_WORDS:
                yield chunk(word)
                await asyncio.sleep(0.02)
            raise RuntimeError("the stream drops here")

        return StreamingResponse(cut(), media_type="text/event-stream")

    return app


@pytest.fixture(scope="module")
def tiny_server(tiny_model):
    """``workbench serve``'s app on the tiny model: (server, served model name)."""
    with serving(tiny_model) as served:
        yield served


@pytest.fixture(scope="module")
def cut_server():
    with running(cutting_app()) as server:
        yield server
