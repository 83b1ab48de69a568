"""``workbench serve``: the recipe as an OpenAI-compatible server, through the same engine, response cache and
history as ``generate``, until Ctrl-C.

``add_parser(commands)`` adds the subcommand (recipe flags, server flags, response-cache flags); ``run(args)``
binds the port (a taken one fails before anything loads), answers 503 while the model builds, prints the URL
to give an OpenAI client (``http://HOST:PORT/v1``) and serves. The first Ctrl-C (or SIGTERM) refuses new
requests, gives those running a few seconds and stops the rest; a second quits at once.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import threading

from ..recipe import GenerationSettings
from ..serving.options import DEFAULT_BATCH_WINDOW_S, SCHEDULERS
from . import output
from .parser import PROG, Failed, UsageError, _cache_flags, _recipe_flags, default, float_in, int_at_least, int_in

NAME = "serve"
# Written here, not in serving.http: importing the web stack (and the engine) just to build the parser would
# slow every workbench command.
DEFAULT_HOST = "127.0.0.1"  # only this machine can connect unless the user says otherwise
DEFAULT_PORT = 8000
DEFAULT_MAX_QUEUE = 32  # requests that may wait for the model; one more is answered 429
GRACE_S = 5.0  # what requests still running at Ctrl-C get to finish
POLL_S = 0.2  # how often the main thread looks for Ctrl-C and a server that died
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,199}")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOCAL_RUNTIMES = ("transformers", "llama.cpp")  # the runtimes that load the model in this process


def add_parser(commands) -> argparse.ArgumentParser:
    """Add ``serve`` to the ``workbench`` subcommands (``commands`` is argparse's subparsers object)."""
    # "resolve": the shared recipe flags may bring an --api-key-env of their own (a remote model's); here the
    # flag names the server's key.
    parser = commands.add_parser(
        NAME, parents=[_recipe_flags()], allow_abbrev=False, conflict_handler="resolve",
        help="serve the recipe as an OpenAI-compatible server (/v1/models, /v1/chat/completions, /health, "
             "/metrics) through the workbench's engine, response cache and history",
    )
    group = parser.add_argument_group("server")
    group.add_argument("--host", default=DEFAULT_HOST,
                       help=f"address to listen on (default {DEFAULT_HOST}: only this machine can connect)")
    group.add_argument("--port", type=int_in(0, 65535), default=DEFAULT_PORT,
                       help=f"port to listen on (default {DEFAULT_PORT}; 0 = any free port)")
    group.add_argument("--api-key-env", default=None, metavar="VAR",
                       help="name of the environment variable that holds the API key clients must send as "
                            "'Authorization: Bearer KEY' (default: no key); the key itself is never a flag")
    group.add_argument("--served-model-name", default=None, metavar="NAME",
                       help="the model's name in /v1/models and in answers, as vLLM's flag of that name (default: "
                            "the recipe's key; requests may name the key either way)")
    group.add_argument("--max-queue", type=int_at_least(0), default=DEFAULT_MAX_QUEUE, metavar="N",
                       help=f"requests that may wait for the model; one more is answered 429 (default "
                            f"{DEFAULT_MAX_QUEUE})")
    group.add_argument("--scheduler", choices=SCHEDULERS, default=SCHEDULERS[0],
                       help=f"{SCHEDULERS[0]} (a batch runs to its end; default) or {SCHEDULERS[1]} (requests join a "
                            "running batch at every step, where the runtime offers it)")
    group.add_argument("--batch-window-ms", type=float_in(0, 10_000), default=DEFAULT_BATCH_WINDOW_S * 1000,
                       metavar="MS", help=f"how long the worker waits to fill a batch (default "
                                          f"{DEFAULT_BATCH_WINDOW_S * 1000:g})")
    max_new_tokens = default(GenerationSettings, "max_new_tokens")
    group.add_argument("--max-new-tokens", type=int_at_least(1), default=max_new_tokens, metavar="N",
                       help=f"tokens of an answer whose request sets neither max_tokens nor max_completion_tokens "
                            f"(default {max_new_tokens})")
    cache = parser.add_argument_group("response cache")
    cache.add_argument("--no-cache", action="store_true", help="answer every request from the model; store nothing")
    _cache_flags(parser)
    return parser


def api_key_from_env(name: str | None) -> str | None:
    """The API key held by the environment variable ``name`` (None: no key); UsageError naming the flag when the
    name is not a variable name or the variable is unset or empty. The key is never printed."""
    if name is None:
        return None
    if not ENV_NAME.fullmatch(name):
        raise UsageError(f"--api-key-env: {name[:60]!r} is not an environment variable name; give the variable's "
                         "name (e.g. WORKBENCH_API_KEY), not the key")
    key = os.environ.get(name, "").strip()
    if not key:
        raise UsageError(f"--api-key-env: the environment variable {name} is not set (or empty); set it to the key "
                         f"before starting, e.g. export {name}=...")
    return key


def run(args: argparse.Namespace) -> int:
    """``workbench serve``: serve the recipe until Ctrl-C; 0 when stopped, 2 on a bad flag or a taken port."""
    if args.model.startswith(("http://", "https://")):
        raise UsageError("--model: workbench serve serves a recipe built here; give a local source (embedded, a hub "
                         "id, a model directory or a .gguf file), not a server's URL")
    if args.runtime not in LOCAL_RUNTIMES:
        raise UsageError(f"--runtime: workbench serve runs the model here; allowed: {', '.join(LOCAL_RUNTIMES)}")
    api_key = api_key_from_env(args.api_key_env)
    name = args.served_model_name
    if name is not None and not SERVED_NAME.fullmatch(name):
        raise UsageError(f"--served-model-name: {name[:60]!r} is not a model name; use 1 to 200 letters, digits and "
                         "'.', '_', '-', ':', '/' (no spaces)")
    defaults = GenerationSettings(max_new_tokens=args.max_new_tokens)  # RecipeError names --max-new-tokens
    from .commands import check_buildable, history, recipe_from_args, said_problem

    recipe = check_buildable(recipe_from_args(args))
    from .. import runtimes  # the model libraries load only once the command line is good
    from ..observe import listeners
    from ..observe.prometheus import PrometheusExporter
    from ..serving import http
    from ..serving.engine import Engine

    exporter = PrometheusExporter()
    app = http.create_app(None, api_key=api_key, max_queue=args.max_queue,
                          default_max_tokens=defaults.max_new_tokens, metrics=exporter.text)
    service = app.state.service
    server = _listen(app, args.host, args.port)
    if args.host not in LOOPBACK:
        output.warn(f"listening on {args.host}: other machines can reach this server"
                    + ("" if api_key else "; set --api-key-env to require a key"))
    listeners.add_listener(exporter.record)
    model = engine = None
    try:
        server.start()
        output.say(f"building {recipe.label()}; {server.url} answers 503 until it is ready")
        model = runtimes.build(recipe, trust_remote_code=args.trust_remote_code, on_stage=output.print_build_stage)
        problem = model.scheduler_problem(args.scheduler)
        if problem:
            raise Failed(f"--scheduler: {problem}", status=2)
        store = history()
        engine = Engine(model, store, scheduler=args.scheduler, batch_window_s=args.batch_window_ms / 1000)
        service.attach(engine, _answers(args), name)
        output.say(f"serving {engine.recipe.label()} as model {service.model_id} ({model.stats.backend}); "
                   f"queue of {args.max_queue}{', API key required' if api_key else ''}; Ctrl-C stops")
        print(server.url, flush=True)
        stopped = _serve_until_interrupted(server, service)
        said_problem(store)
    finally:
        service.close(grace_s=0)  # after a second Ctrl-C or a failure: stop whatever still runs
        server.stop()
        listeners.remove_listener(exporter.record)
        if engine is not None:
            engine.close()
        if model is not None:
            model.close()
    output.say(f"server stopped{f' ({stopped} running requests stopped)' if stopped else ''}")
    return 0


def _listen(app, host: str, port: int):
    """The app's server, its socket bound (not serving yet); a taken port or an unknown host is a flag's error."""
    from ..serving.http import HttpServer

    try:
        return HttpServer(app, host, port, graceful_s=GRACE_S)
    except OSError as exc:
        flag = "--host" if isinstance(exc, socket.gaierror) else "--port"
        raise Failed(f"{flag}: cannot listen on {host}:{port} ({exc.strerror or exc}); "
                     + ("give an address of this machine" if flag == "--host" else
                        "is another server running? choose another --port (0 = any free one)"), status=2) from None


def _answers(args: argparse.Namespace):
    """``answer`` of the app: through the response cache unless --no-cache (as ``generate`` answers)."""
    from ..response_cache.answers import CachedAnswers
    from ..response_cache.disk import ResponseCache
    from ..response_cache.keys import DEFAULT_THRESHOLD, CachePolicy

    if args.no_cache:
        return None
    policy = CachePolicy(enabled=True, semantic=args.semantic, cache_sampled=args.cache_sampled,
                         ttl_s=args.cache_ttl,
                         threshold=args.similarity if args.similarity is not None else DEFAULT_THRESHOLD)
    responses = ResponseCache()
    if responses.problem:
        output.warn(responses.problem)
    if not responses.available:
        return None
    return CachedAnswers(responses, policy).ask


def _serve_until_interrupted(server, service) -> int:
    """Serve until Ctrl-C or SIGTERM; then refuse new requests and stop those still running after GRACE_S.
    Returns how many were stopped. A second Ctrl-C quits at once (KeyboardInterrupt)."""
    message = (f"stopping: new requests get 503, running ones get {GRACE_S:g} s to finish "
               "(Ctrl-C again to quit at once)")
    with output.StopOnInterrupt(message) as interrupt, _TermAsInterrupt(interrupt):
        wake = threading.Event()
        while not interrupt() and server.running:
            wake.wait(POLL_S)
        if not server.running:
            raise Failed("the HTTP server stopped unexpectedly")
        return service.close(GRACE_S)


class _TermAsInterrupt:
    """SIGTERM (a service manager, ``kill``) stops the server as the first Ctrl-C does."""

    def __init__(self, interrupt: output.StopOnInterrupt):
        self.interrupt = interrupt
        self.previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._on_term)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)

    def _on_term(self, signum, frame) -> None:
        if not self.interrupt.requested:
            self.interrupt.requested = True
            os.write(2, f"\n{PROG}: {self.interrupt.message}\n".encode())

