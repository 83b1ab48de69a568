"""The semantic cache's decision on the project's question pairs: hit rate on paraphrases, false hits on near misses.

Every pair of ``assets/question_pairs.jsonl`` (and of the held-out ``assets/question_pairs_heldout*.jsonl``) is
decided as the cache decides a semantic lookup: all-MiniLM-L6-v2 cosine similarity at least the threshold, and no
difference found by the guard (``workbench.response_cache.guard``), both ways round. Prints, for the default
threshold and a few others, the hit rate, the false hits, the near misses by kind, why paraphrases missed, and
how long the guard takes per check.

Run: ``python benchmarks/semantic_guard.py [--thresholds 0.7 0.75 0.8 0.85 0.9]``.
"""

from __future__ import annotations

import argparse
import time

from workbench.response_cache import pairs
from workbench.response_cache.guard import same_meaning_guard
from workbench.response_cache.keys import DEFAULT_THRESHOLD
from workbench.response_cache.wordnet import wordnet


def table(path, thresholds) -> None:
    """One line per threshold, the default marked with *."""
    print(f"\n{path.name}")
    print(f"{'threshold':>10} {'paraphrases hit':>16} {'false hits':>11}")
    for threshold in thresholds:
        m = pairs.measure(threshold, path)
        mark = "*" if threshold == DEFAULT_THRESHOLD else " "
        print(f"{threshold:>9.2f}{mark} {m['hits']:>5}/{m['n_paraphrases']:<3} {m['hit_rate']:>5.0%} "
              f"{m['false_hits']:>5}/{m['n_near_misses']:<3}")
    m = pairs.measure(DEFAULT_THRESHOLD, path)
    print(f"at the default {DEFAULT_THRESHOLD:g}: near misses by kind (false hits / pairs):",
          ", ".join(f"{k} {v['false_hits']}/{v['pairs']}" for k, v in sorted(m["misses_by_kind"].items())))
    print("  paraphrases missed:", ", ".join(f"{k} {v}" for k, v in m["paraphrase_misses"].items()) or "none")
    for pair in m["false_hit_pairs"]:
        print("  FALSE HIT:", pair)


def guard_speed(path) -> None:
    """WordNet's load time, and the guard's time per check once loaded."""
    start = time.perf_counter()
    wordnet()
    load = time.perf_counter() - start
    questions = [(p.a, p.b) for p in pairs.load_pairs(path)]
    start = time.perf_counter()
    for a, b in questions:
        same_meaning_guard(a, b)
    per_check = (time.perf_counter() - start) / len(questions)
    print(f"\nguard: WordNet loaded in {load * 1000:.0f} ms; {per_check * 1000:.2f} ms per check "
          f"(first sight of the words; cached senses after)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    args = parser.parse_args()
    thresholds = sorted(set(args.thresholds) | {DEFAULT_THRESHOLD})
    guard_speed(pairs.PAIRS)
    for path in (pairs.PAIRS, *pairs.HELDOUT):
        if path.is_file():
            table(path, thresholds)


if __name__ == "__main__":
    main()
