"""A delay line for HTTP: a loopback forwarder that holds every response's headers and chunks a known time, so that
a test (or ``benchmarks/remote.py``) can check that the network split puts an added delay on the network, not on
the server."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request as HttpRequest
from starlette.responses import StreamingResponse as RawStream
from starlette.routing import Route

TIMEOUT_S = 60.0  # far more than any forwarded answer here takes


def delay_proxy(upstream: str, delay_s: float) -> Starlette:
    """A forwarder that holds the response's headers, then each chunk, ``delay_s`` after it arrived from
    ``upstream`` (a delay line: a known one-way delay on the way back, not a throttle)."""
    client = httpx.AsyncClient(base_url=upstream, timeout=TIMEOUT_S)

    async def forward(request: HttpRequest):
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        sent = client.build_request(request.method, request.url.path, content=await request.body(), headers=headers)
        response = await client.send(sent, stream=True)
        loop = asyncio.get_running_loop()
        arrived: asyncio.Queue = asyncio.Queue()

        async def read():  # stamps each chunk as it arrives, while the headers are held
            async for chunk in response.aiter_raw():
                await arrived.put((loop.time(), chunk))
            await arrived.put(None)

        reader = asyncio.create_task(read())
        await asyncio.sleep(delay_s)

        async def relay():
            try:
                while (item := await arrived.get()) is not None:
                    at, chunk = item
                    await asyncio.sleep(max(0.0, at + delay_s - loop.time()))
                    yield chunk
            finally:
                reader.cancel()
                await response.aclose()

        kept = {k: v for k, v in response.headers.items()
                if k.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding")}
        return RawStream(relay(), status_code=response.status_code, headers=kept)

    return Starlette(routes=[Route("/{path:path}", forward, methods=["GET", "POST"])])
