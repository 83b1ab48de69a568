"""The runtime seam: what the serving layer, the quality measures and the benchmarks ask of a loaded model.

A runtime turns a recipe into a ``LoadedModel`` and runs it. Everything above this seam (serving, the
response cache, quality, benchmarks, the CLI and the app) talks to a model only through ``LoadedModel`` and
to a runtime only through its ``Runtime`` entry, so a second runtime is one new module here and one line in
``runtimes/__init__.py``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from ..conversation import encode_chat
from ..optimize.stats import ModelStats
from ..recipe import GenerationSettings, Recipe

OnToken = Callable[[int, int, float], None]  # (row index, token id, time.perf_counter() when it was produced)


class Row(Protocol):
    """One request's place in a generate call, as a runtime sees it (the serving layer owns it)."""

    prompt_ids: list[int]
    settings: GenerationSettings

    @property
    def open(self) -> bool:
        """Whether the serving layer still takes tokens for this row (False once it has finished it)."""

    @property
    def active(self) -> bool:
        """Whether to go on generating for this row: open and not stopped."""


class ContinuousListener(Protocol):
    """What a continuous batcher reports back to the serving layer, row by row."""

    def admitted(self, row: Row, t: float) -> None:
        """The row left the batcher's queue and joined the running batch at ``t`` (perf_counter)."""

    def token(self, row: Row, token_id: int, t: float) -> None:
        """The row got a token, produced at ``t`` (perf_counter)."""

    def finished(self, row: Row, error: str | None) -> None:
        """The batcher is done with the row: it ended, was stopped, or failed with ``error``."""


class ContinuousBatcher(Protocol):
    """A running batch that requests join at every decode step."""

    failed: str | None  # why the batch stopped serving (its rows were ended with it; later ``add`` refused)
    tokens_per_request: int  # the most prompt + answer tokens one row may take (its reserved KV cache)

    def add(self, row: Row) -> None:
        """Join the running batch; raises if the row cannot be served."""

    def close(self, timeout_s: float) -> None:
        """Let running rows finish (within the timeout), then stop; rows still open are finished with an error."""


@dataclass(frozen=True)
class Backend:
    """A kernel path that can run a dtype: what the app lists beside the dtype."""

    name: str  # the recipe's backend field
    dtype: str
    label: str  # the kernel path, as shown to the user
    why: str = ""  # one line on when this path is fast or slow


class LoadedModel(ABC):
    """A recipe's model, loaded and ready to generate.

    Attributes:
        recipe: the recipe it was built from, device and backend resolved.
        stats: parameters, weight bytes as stored, build time and the kernel path that actually runs.
        notes: what the user should know about this build (one sentence each).
    """

    recipe: Recipe
    stats: ModelStats
    notes: list[str]

    # -- text and tokens

    @abstractmethod
    def encode_chat(self, messages: list[dict]) -> list[int]:
        """Prompt token ids of a conversation, ending where the assistant's answer starts."""

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of plain text, as the model's tokenizer splits it (perplexity is measured on these)."""

    @abstractmethod
    def decode(self, token_ids: list[int]) -> str:
        """The text of generated tokens, special tokens left out."""

    @property
    @abstractmethod
    def eos_ids(self) -> frozenset[int]:
        """Tokens that end an answer."""

    @property
    def context_length(self) -> int | None:
        """The most tokens (prompt and answer) the model attends to; None when it does not say."""
        return None

    # -- generation

    @abstractmethod
    def generate(self, rows: Sequence[Row], settings: GenerationSettings, on_token: OnToken) -> None:
        """Run ``rows`` together as one batch with ``settings`` (the serving layer groups compatible requests).

        For each token chosen for an open row, call ``on_token(row index, token id, time.perf_counter())`` the
        moment it is produced, after the device has finished computing it. Stop generating for a row once it
        is not active; return once no row is active or every row has ``settings.max_new_tokens`` tokens.
        """

    @property
    def max_batch_size(self) -> int:
        """The most rows one ``generate`` call runs together (1: requests run one after another)."""
        return 1

    def scheduler_problem(self, scheduler: str) -> str | None:
        """Why this model cannot be served with ``scheduler`` ("static" or "continuous"), or None if it can."""
        return None if scheduler == "static" else f"this runtime has no {scheduler} batching"

    def continuous(self, max_requests: int, listener: ContinuousListener) -> ContinuousBatcher:
        """Start a continuous batch of at most ``max_requests`` greedy requests (see ``scheduler_problem``)."""
        raise RuntimeError(self.scheduler_problem("continuous") or "continuous batching is not available")

    # -- scoring

    @abstractmethod
    def nll(self, token_ids: list[int], first_target: int) -> float:
        """Summed negative log-likelihood (float32 or better) of ``token_ids[first_target:]``, each token given
        every token before it in ``token_ids``."""

    def close(self) -> None:
        """Free what the model holds outside Python's memory management (nothing, by default)."""


class TokenizerText:
    """Text and tokens through the model source's transformers tokenizer (``self.tokenizer``): a runtime that
    uses it gives the same prompt ids, perplexity text and decoded answers as every other that does."""

    tokenizer: object

    def encode_chat(self, messages: list[dict]) -> list[int]:
        return encode_chat(self.tokenizer, messages)

    def tokenize(self, text: str) -> list[int]:
        return self.tokenizer(text)["input_ids"]

    def decode(self, token_ids: list[int]) -> str:
        return self.tokenizer.decode(token_ids, skip_special_tokens=True)


def complete(model: LoadedModel, prompt_ids: list[int], settings: GenerationSettings) -> list[int]:
    """One answer's token ids, generated outside any queue (quality measures): until EOS or the budget."""
    row = _Solo(prompt_ids, settings, model.eos_ids)
    model.generate([row], settings, lambda i, token_id, t: row.ids.append(token_id))
    return row.ids


def answer_complete(ids: list[int], settings: GenerationSettings, eos_ids: frozenset[int]) -> bool:
    """Whether an answer has what it asked for: its token budget, or EOS (unless EOS is ignored)."""
    return len(ids) >= settings.max_new_tokens or (not settings.ignore_eos and bool(ids) and ids[-1] in eos_ids)


class _Solo:
    """The one row of ``complete``: open until its answer is complete."""

    def __init__(self, prompt_ids: list[int], settings: GenerationSettings, eos_ids: frozenset[int]):
        self.prompt_ids, self.settings, self.eos_ids = prompt_ids, settings, eos_ids
        self.ids: list[int] = []

    @property
    def open(self) -> bool:
        return not answer_complete(self.ids, self.settings, self.eos_ids)

    active = open


@dataclass(frozen=True)
class Runtime:
    """A registered runtime: how to check and build a recipe with it, and what it can run.

    Args:
        name: the runtime's name.
        check: resolves "auto" fields and raises RecipeError for what cannot run here, without loading anything.
        build: ``build(recipe, trust_remote_code=..., on_stage=...) -> LoadedModel``.
        backends: ``backends(dtype, device)`` -> the kernel paths that run ``dtype`` on ``device``, default first.
        problem: why this runtime cannot run on this machine at all (a missing package), or None.
        dtypes: the recipe dtypes it runs.
    """

    name: str
    check: Callable[[Recipe], Recipe]
    build: Callable[..., LoadedModel]
    backends: Callable[[str, str], list[Backend]]
    problem: Callable[[], str | None] = lambda: None
    dtypes: tuple[str, ...] = ()
