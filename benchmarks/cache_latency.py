"""End-to-end latency of response-cache hits, against the model's own answers, measured in one run.

For each question the model answers once (a miss, stored); then the same conversation is asked again (exact
hits) and reworded (semantic hits, all-MiniLM-L6-v2). A hit's end-to-end time runs from ``cache.submit`` to
the replayed answer in hand (every token iterated, ``result()`` returned, the history row written): what the
chat page waits for. The embedding model's one-time load is reported apart.

    python benchmarks/cache_latency.py [--model embedded] [--runs 20] [--max-new-tokens 128]

Runs in a temporary WORKBENCH_HOME unless --home is given, so it neither reads nor fills your cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

QUESTIONS = [  # (asked first, then reworded)
    ("What is the capital of France?", "What's the capital city of France?"),
    ("How many legs does a spider have?", "How many legs do spiders have?"),
    ("Why is the sky blue?", "Why does the sky look blue?"),
    ("Give me three tips for better sleep.", "Give me 3 tips for sleeping better."),
]
TARGETS_MS = {"exact": 20.0, "semantic": 50.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", help="model source (default: embedded)")
    parser.add_argument("--runs", type=int, default=20, help="timed hits per question and kind (default 20)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--home", default=None, help="WORKBENCH_HOME to use (default: a temporary one)")
    args = parser.parse_args()
    os.environ["WORKBENCH_HOME"] = args.home or tempfile.mkdtemp(prefix="cache-latency-")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from workbench import runtimes
    from workbench.latency import summarize
    from workbench.observe.history import HistoryStore
    from workbench.recipe import GenerationSettings, Recipe
    from workbench.response_cache.answers import CachedAnswers
    from workbench.response_cache.disk import ResponseCache
    from workbench.response_cache.embedder import embedder
    from workbench.response_cache.keys import CachePolicy
    from workbench.serving.engine import Engine

    model = runtimes.build(Recipe(model=args.model, device="cpu"))
    engine = Engine(model, HistoryStore())
    responses = ResponseCache()
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    exact, semantic = CachedAnswers(responses, CachePolicy()), CachedAnswers(responses, CachePolicy(semantic=True))
    start = time.perf_counter()
    embedder()
    load_s = time.perf_counter() - start
    print(f"{model.recipe.label()} · {model.stats.backend} · embedding model loaded in {load_s:.2f} s",
          file=sys.stderr)

    model_e2e, tokens, figures = [], [], {"exact": [], "semantic": []}
    lookups = {"exact": [], "semantic": []}
    try:
        for question, reworded in QUESTIONS:
            miss = semantic.ask(engine, question, settings)
            result = miss.result()
            assert result.cache == "miss", f"{question!r} was already cached"
            model_e2e.append(result.e2e_s)
            tokens.append(result.new_tokens)
            for kind, text, answers in (("exact", question, exact), ("semantic", reworded, semantic)):
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    handle = answers.ask(engine, text, settings)
                    replayed = "".join(event.text for event in handle)
                    hit = handle.result()
                    elapsed = time.perf_counter() - t0
                    if hit.cache != kind or replayed != result.text:
                        print(f"{kind}: {text!r} was not a {kind} hit ({hit.cache})", file=sys.stderr)
                        continue
                    figures[kind].append(elapsed * 1000)
                    lookups[kind].append(handle.hit.lookup_s * 1000)
    finally:
        engine.close()
        model.close()

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None:
        busy = " (busy: other work shares the CPU, so tails are longer)" if load > (os.cpu_count() or 1) else ""
        print(f"machine: {os.cpu_count()} CPUs, load average {load:.1f} at the end of the run{busy}")
    model = summarize([s * 1000 for s in model_e2e])
    print(f"model answers: {len(model_e2e)} questions, {min(tokens)}-{max(tokens)} tokens, "
          f"E2E p50 {model['p50']:.0f} ms (mean {model['mean']:.0f} ms)")
    for kind in ("exact", "semantic"):
        s, lookup = summarize(figures[kind]), summarize(lookups[kind])
        if not s["n"]:
            print(f"{kind} hits: none")
            continue
        verdict = "meets" if s["p90"] <= TARGETS_MS[kind] else "misses"
        print(f"{kind} hits: n={s['n']}, end-to-end p50 {s['p50']:.2f} ms, p90 {s['p90']:.2f} ms, "
              f"max {max(figures[kind]):.2f} ms (lookup p50 {lookup['p50']:.2f} ms); "
              f"p90 {verdict} the {TARGETS_MS[kind]:.0f} ms target; "
              f"{model['p50'] / s['p50']:.0f}x faster than the model's p50")
    return 0


if __name__ == "__main__":
    sys.exit(main())
