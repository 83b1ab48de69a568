"""Distilled variants: public teacher -> student pairs, and students built here (``distill``), by name.

Looking a variant up never loads a model: a student built here is an artifact directory named by its recipe key,
trusted only once complete (its ``recipe.json`` is written last); temp, superseded and damaged folders are not
students.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

from .. import catalog, store
from ..recipe import Recipe, RecipeError, StudentSpec


# StudentSpec fields that joined later, with the value every student built before them had: left out of a
# student's name while they hold it, so that those students keep their names (and artifact keys), as Recipe.key()
# does with KEY_DEFAULTS. (Before cached targets, the teacher ran every step: teacher_top_k 0.)
NAME_DEFAULTS = {"kl_weight": 1.0, "layers_weight": 0.0, "attention_weight": 0.0, "teacher_top_k": 0,
                 "layer_choice": "similarity", "prompts": 128, "corpus_runtime": "transformers"}


def student_name(model: str, spec: StudentSpec) -> str:
    """Stable name of the student of ``model`` made by ``spec`` (the value of ``--variant``)."""
    fields = {k: v for k, v in asdict(spec).items() if k not in NAME_DEFAULTS or NAME_DEFAULTS[k] != v}
    digest = hashlib.sha256(json.dumps({"model": model, **fields}, sort_keys=True).encode()).hexdigest()[:8]
    return f"student-{digest}"


def student_key(model: str, name: str) -> str:
    return Recipe(model=model, device="cpu", dtype="fp32", variant=name).key()


def find_student(model: str, name: str) -> Path | None:
    """The artifact directory of a finished student of ``model`` called ``name``, if one was built here."""
    path = store.artifact_path(student_key(model, name))
    store.recover_artifact(path.name)
    return path if store.artifact_ready(path.name) and (path / "config.json").is_file() else None


def list_students(model: str) -> list[dict]:
    """Students built here for ``model``: name, steps, and the quality recorded when they were built."""
    found = []
    for path in store.artifacts():
        try:
            meta = json.loads((path / store.MARKER).read_text())
        except (OSError, ValueError):
            continue
        student = meta.get("student")
        if student and meta.get("recipe", {}).get("model") == model and (path / "config.json").is_file():
            found.append({"name": meta["recipe"]["variant"], **student})
    return sorted(found, key=lambda s: s["name"])


def public_students(model: str) -> list[catalog.CatalogModel]:
    """Public distilled students of ``model`` listed in the catalog."""
    return [catalog.CatalogModel(s, s.rsplit("/", 1)[-1], f"distilled from {t}") for t, s in catalog.DISTILLED_PAIRS if t == model]


def variant_source(model: str, variant: str) -> str:
    """What to load for a recipe's variant: a student's artifact directory or a public student's hub id."""
    built = find_student(model, variant)
    if built is not None:
        return str(built)
    for teacher, student in catalog.DISTILLED_PAIRS:
        if teacher == model and variant in (student, student.rsplit("/", 1)[-1]):
            return student
    names = [s["name"] for s in list_students(model)] + [s.model for s in public_students(model)]
    hint = ", ".join(["none", *names]) if names else "none (build a student with `workbench distill`)"
    raise RecipeError("variant", f"no variant {variant!r} for {model}; available: {hint}")
