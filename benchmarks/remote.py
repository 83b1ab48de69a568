"""A server measured from here: the client's TTFT against the server's own, and a known delay on the path.

Starts ``workbench serve`` on loopback with the recipe flags given after ``--`` (default: the embedded model under
llama.cpp q4_0, the response cache off) and a delay line in front of it (``tests/proxies.py``: every response's
headers and chunks held ``--delay-ms`` after they arrive). Then, in ``--rounds`` rounds, one greedy answer of
``--max-new-tokens`` tokens straight from the server and one through the delay line, alternating which goes
first so that drift falls on both. Every answer is measured by the workbench's remote runtime, as
``workbench generate --model URL`` measures it: client TTFT, and the network split (``first_chunk_ms``, the
server's own ``server_queue_ms`` and ``server_prefill_ms`` from its ``timings``, ``network_ms`` = first chunk − both).

Prints every answer, the medians of each path, and what the delay line added to each part: it should land on
``network_ms`` (and ``first_chunk_ms``), not on the server's prefill. With ``--llama-server`` it measures
llama-cpp-python's own server on the embedded GGUF the same way (it reports no timings: only the first chunk).

Run: ``python benchmarks/remote.py [--rounds 5] [--delay-ms 200] [--max-new-tokens 16] [--llama-server]
[-- RECIPE FLAGS]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from proxies import delay_proxy  # noqa: E402  (the tests' delay line)

from workbench import catalog, machine  # noqa: E402
from workbench.recipe import GenerationSettings, Recipe  # noqa: E402
from workbench.runtimes import remote  # noqa: E402
from workbench.serving.engine import Engine  # noqa: E402
from workbench.serving.http import HttpServer  # noqa: E402

PROMPT = "Explain in a few sentences why the first token of an answer takes longer than the ones after it."
DEFAULT_RECIPE = ["--runtime", "llama.cpp", "--dtype", "q4_0"]
FIELDS = ("ttft_ms", "headers_ms", "first_chunk_ms", "server_queue_ms", "server_prefill_ms", "network_ms")
START_S = 600  # a first build converts and quantizes the model: minutes on 2 cores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--delay-ms", type=float, default=200.0)
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--llama-server", action="store_true",
                        help="also measure llama-cpp-python's server on the embedded GGUF")
    parser.add_argument("recipe", nargs="*", help="recipe flags for workbench serve, after --")
    args = parser.parse_args()
    print(f"CPU: {machine.cpu_model()}; {args.rounds} rounds; delay line {args.delay_ms:g} ms; "
          f"{args.max_new_tokens} new tokens")
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens, temperature=0.0)
    recipe = args.recipe or DEFAULT_RECIPE
    with served([sys.executable, "-m", "workbench", "serve", "--port", "0", "--no-cache", *recipe],
                "workbench serve " + " ".join(recipe)) as url:
        compare(url, settings, args)
    if args.llama_server:
        gguf = catalog.embedded_gguf()
        port = _free_port()
        with served([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                     "--port", str(port), "--n_threads", "2", "--n_ctx", "2048", "--interrupt_requests", "False"],
                    "llama_cpp.server (embedded GGUF)", f"http://127.0.0.1:{port}/v1") as url:
            compare(url, settings, args)


def compare(url: str, settings: GenerationSettings, args) -> None:
    """Direct and delayed answers, interleaved in rounds; prints each, the medians and the differences."""
    proxy = HttpServer(delay_proxy(url.removesuffix("/v1"), args.delay_ms / 1000), "127.0.0.1", 0, graceful_s=1.0)
    proxy.start()
    name = remote.check(Recipe(model=url)).remote_model
    paths = {"direct": url, "delayed": proxy.url}
    models = {path: remote.build(Recipe(model=target, remote_model=name)) for path, target in paths.items()}
    engines = {path: Engine(model) for path, model in models.items()}
    runs: dict[str, list[dict]] = {path: [] for path in paths}
    try:
        for engine in engines.values():  # warm-up: the connection, the server's first prefill
            engine.generate(PROMPT, settings)
        for r in range(args.rounds):
            for path in (paths if r % 2 == 0 else reversed(list(paths))):
                result = engines[path].generate(PROMPT, settings)
                if result.error:
                    raise SystemExit(f"{path}: {result.error}")
                row = {"ttft_ms": result.ttft_s * 1000, **result.network}
                runs[path].append(row)
                print(f"  round {r + 1} {path:>7}: " + "  ".join(f"{f} {_ms(row.get(f))}" for f in FIELDS)
                      + ("  (per chunk)" if result.per_chunk else ""))
    finally:
        for path, engine in engines.items():
            engine.close()
            models[path].close()
        proxy.stop()
    medians = {path: {f: _median(row.get(f) for row in rows) for f in FIELDS} for path, rows in runs.items()}
    for path, figures in medians.items():
        print(f"median {path:>7}: " + "  ".join(f"{f} {_ms(figures[f])}" for f in FIELDS))
    added = {f: _minus(medians["delayed"][f], medians["direct"][f]) for f in FIELDS}
    print(f"delayed - direct (the delay line adds {args.delay_ms:g} ms): "
          + "  ".join(f"{f} {_ms(added[f])}" for f in FIELDS))


@contextmanager
def served(command: list[str], what: str, url: str | None = None):
    """A server process; yields its base URL once it answers /v1/models (``workbench serve`` prints its URL)."""
    print(f"starting {what}")
    log = open(Path("/tmp") / f"remote-bench-{int(time.time())}.log", "w+")
    proc = subprocess.Popen(command, stdout=subprocess.PIPE if url is None else subprocess.DEVNULL, stderr=log,
                            text=True)
    try:
        if url is None:
            url = _printed_url(proc, log)
        deadline = time.monotonic() + START_S
        while not _answers(f"{url}/models"):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                raise SystemExit(f"{what} did not start: {log.read()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _printed_url(proc: subprocess.Popen, log) -> str:
    line = proc.stdout.readline()  # workbench serve prints its URL once the model is ready
    if not line.startswith("http"):
        log.seek(0)
        raise SystemExit(f"workbench serve did not start: {log.read()[-2000:]}")
    return line.strip()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:7.1f}"


if __name__ == "__main__":
    main()
