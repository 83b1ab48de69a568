"""Distilled students at budgets in minutes: what healing buys in quality, and what the student buys in speed.

For students with each ``--ratios`` share of the teacher's decoder layers removed (default 20% and 30%), trained
with the default spec for each ``--budgets`` minutes of training (default 10, then 30: the longer budget resumes the
shorter one, so its student is the same one trained further), this measures the student's card
(``workbench.student_card``): QA accuracy, perplexity and greedy agreement with the teacher for the teacher, the
unhealed student and the healed one under transformers fp32; decode speed-up over the teacher under transformers
fp32 and llama.cpp Q4_0 (interleaved rounds). It adds QA under llama.cpp Q4_0 for teacher and student (the same
runtime and quantization on both sides), and what the held-out perplexity curve says about more training.
With ``--layer-choices`` it heals each starting point (``prune.drop_layers_``'s choices) the same way, to compare
them after healing as well as before.

Prints a markdown table and the issue's targets, with the CPU it ran on; it asserts nothing about speed or
quality. A student already trained to a budget is measured as it is (delete it to train it again), and a card
already measured at the student's steps with the same settings is reused (``--remeasure`` measures it again).

Run: ``python benchmarks/distill.py [--ratios 0.2,0.3] [--budgets 10,30] [--layer-choices similarity,angular]
[--qa-limit N] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time

QA_POINTS = 0.05  # "within 5 QA points of the teacher"
RECOVERY = 0.8  # "recovers >= 80% of the QA that pruning alone lost"


def names(text: str) -> list[str]:
    """'a, b,' -> ['a', 'b']: a comma-separated flag's parts."""
    return [part.strip() for part in text.split(",") if part.strip()]


def floats(text: str) -> list[float]:
    return [float(part) for part in names(text)]


def qa_on(recipe, items) -> float | None:
    """QA accuracy of a recipe, or None when it cannot be built here (llama.cpp not installed)."""
    from workbench import quality, runtimes

    try:
        model = runtimes.build(recipe)
    except Exception as exc:
        print(f"cannot build {recipe.label()}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    try:
        return quality.qa_accuracy(model, items)["accuracy"]
    finally:
        model.close()
        del model
        gc.collect()


def points(gap: float) -> str:
    """A QA gap (teacher minus student) in words: "25 points below", "3 points above"."""
    return f"{abs(gap) * 100:.0f} points {'below' if gap >= 0 else 'above'}"


def progress(who: str):
    last = {"t": 0.0}

    def show(i: int, n: int, metrics: dict) -> None:
        now = time.monotonic()
        if now - last["t"] < 10 and i != n:
            return
        last["t"] = now
        detail = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items() if k != "parts"}
        print(f"[{who}] {i}/{n} {detail}", file=sys.stderr, flush=True)

    return show


def curve_note(evals: list[dict]) -> str:
    """Whether the held-out perplexity still fell over the last third of the checks (more training would help)."""
    if len(evals) < 4:
        return "too few checks"
    third = max(1, len(evals) // 3)
    before, last = evals[-1 - third]["heldout_ppl"], evals[-1]["heldout_ppl"]
    change = (last - before) / before
    return f"held-out ppl {before:.2f} -> {last:.2f} over the last {third} checks ({change:+.1%})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratios", type=floats, default=[0.2, 0.3], help="shares of layers removed (default 0.2,0.3)")
    parser.add_argument("--budgets", type=floats, default=[10.0, 30.0], help="minutes of training (default 10,30)")
    parser.add_argument("--layer-choices", type=names,
                        default=["similarity"], help="starting points to heal, comma-separated (default similarity)")
    parser.add_argument("--qa-limit", type=int, default=None, help="QA on the first N dev questions (default: all)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds per runtime (default 3)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write every card to FILE")
    parser.add_argument("--remeasure", action="store_true",
                        help="measure every card again (default: a student's card measured at its steps is reused)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from workbench import machine, quality, student_card
    from workbench.optimize.distill import distill
    from workbench.recipe import EMBEDDED, Recipe, StudentSpec

    items = quality.load_qa()[: args.qa_limit] if args.qa_limit else None
    q4 = dict(model=EMBEDDED, runtime="llama.cpp", dtype="q4_0", device="cpu")
    teacher_q4 = qa_on(Recipe(**q4), items)
    rows, cards, known = [], [], {}
    starts = [(ratio, choice) for ratio in args.ratios for choice in args.layer_choices]
    for ratio, choice in starts:
        spec = StudentSpec(layers_ratio=ratio, layer_choice=choice)
        who = f"{ratio:.0%} removed" + (f" ({choice})" if len(args.layer_choices) > 1 else "")
        for minutes in sorted(args.budgets):
            result = distill(EMBEDDED, spec, minutes=minutes, on_step=progress(f"{who} {minutes:g} min"))
            card = student_card.read_card(EMBEDDED, result["name"])
            if args.remeasure or card is None or card["steps"] != result["steps"] or card["settings"]["qa_limit"] != \
                    args.qa_limit or card["settings"]["rounds"] != args.rounds:
                card = student_card.measure_card(EMBEDDED, result["name"], qa_limit=args.qa_limit, rounds=args.rounds,
                                                 known=known.get(who) or ({"teacher": known["teacher"]}
                                                                          if "teacher" in known else None),
                                                 on_step=progress("card"))
            known[who] = {w: card["quality"][w] for w in ("teacher", "unhealed")}
            known.setdefault("teacher", card["quality"]["teacher"])
            student_q4 = qa_on(Recipe(**q4, variant=result["name"]), items)
            cards.append(card)
            rows.append((who, minutes, result, card, student_q4))
    teacher = cards[0]["quality"]["teacher"] if cards else None
    print(f"{machine.cpu_model()}; embedded SmolLM2-135M-Instruct teacher; default spec but the ratio and layer "
          f"choice; QA on {teacher['qa_n'] if teacher else 0} dev questions; speed: {args.rounds} interleaved rounds\n")
    print("| student | trained | steps | QA fp32 | perplexity | agreement | QA q4_0 | speed-up fp32 | speed-up q4_0 |")
    print("|---|---|---|---|---|---|---|---|---|")
    if teacher:
        print(f"| teacher | – | – | {teacher['qa_accuracy']:.2f} | {teacher['perplexity']:.2f} | 1.00 | "
              f"{_f(teacher_q4)} | 1.00× | 1.00× |")
    for who, minutes, result, card, student_q4 in rows:
        unhealed, healed = card["quality"]["unhealed"], card["quality"]["healed"]
        if minutes == min(args.budgets):
            print(f"| {who}, unhealed | 0 | 0 | {unhealed['qa_accuracy']:.2f} | "
                  f"{unhealed['perplexity']:.2f} | {unhealed['agreement']:.2f} | – | – | – |")
        speed = [_speedup(card["speed"][r]) for r in ("transformers fp32", "llama.cpp q4_0")]
        print(f"| {who}, healed | {result['train_seconds'] / 60:.1f} min | {result['steps']} | "
              f"{healed['qa_accuracy']:.2f} | {healed['perplexity']:.2f} | {healed['agreement']:.2f} | "
              f"{_f(student_q4)} | {speed[0]} | {speed[1]} |")
    print()
    for who, minutes, result, card, student_q4 in rows:
        t, u, h = (card["quality"][w]["qa_accuracy"] for w in ("teacher", "unhealed", "healed"))
        lost = t - u
        recovered = (h - u) / lost if lost > 0 else None
        gap = t - h
        q4_gap = None if teacher_q4 is None or student_q4 is None else teacher_q4 - student_q4
        print(f"- {who}, {minutes:g} min: QA {points(gap)} the teacher (fp32)"
              + (f", {points(q4_gap)} it under q4_0" if q4_gap is not None else "")
              + (f"; recovers {recovered:.0%} of the QA pruning lost" if recovered is not None else "")
              + f"; {curve_note(result['evals'] or [])}")
    print(f"- targets: 20% within {QA_POINTS * 100:.0f} QA points of the teacher in <= 30 min; 30% recovers >= "
          f"{RECOVERY:.0%} of the QA pruning alone lost")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(cards, f, indent=1)
    return 0


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _speedup(speed: dict) -> str:
    return f"not measured ({speed['error'][:40]})" if "error" in speed else f"{speed['speedup']:.2f}×"


if __name__ == "__main__":
    sys.exit(main())
