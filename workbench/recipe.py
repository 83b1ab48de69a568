"""What to build and how to generate: the Recipe (the cache key everywhere), the GenerationSettings, and the
StudentSpec of a distilled student.

Both are frozen dataclasses whose fields hold their defaults once: the command line and the app read their
defaults from here. A bad value raises RecipeError naming the command-line flag that sets it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace
from urllib.parse import urlsplit

DEVICES = ("auto", "cpu", "cuda", "mps")
# What runs the model: PyTorch modules through transformers, GGUF files in llama.cpp, or an OpenAI-compatible server.
RUNTIMES = ("transformers", "llama.cpp", "remote")
REMOTE = "remote"
REMOTE_DTYPE = "shipped"  # a server runs its own weights, as it has them
URL_SCHEMES = ("http://", "https://")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
FLOAT_DTYPES = ("fp32", "fp16", "bf16")
TRANSFORMERS_DTYPES = (*FLOAT_DTYPES, "int8", "int4", "nf4", "fp4")
# llama.cpp's formats, quantized by llama.cpp's own quantizer; "shipped" runs a .gguf source exactly as it is.
LLAMA_CPP_DTYPES = (*FLOAT_DTYPES, "q8_0", "q6_k", "q5_k_m", "q5_0", "q4_k_m", "q4_1", "q4_0", "shipped")
LLAMA_CPP_ALIASES = {"int8": "q8_0", "int4": "q4_0"}  # the generic names, under llama.cpp: one recipe, one key
DTYPES = tuple(dict.fromkeys(TRANSFORMERS_DTYPES + LLAMA_CPP_DTYPES))  # every dtype some runtime runs
PRUNE_METHODS = ("none", "magnitude", "2:4", "channels", "layers")
PRUNE_CRITERIA = ("magnitude", "wanda")  # how unstructured and 2:4 pruning rank weights
MAX_PRUNE_RATIO = 0.9
MAX_BATCH_SIZE = 256  # requests one worker may run together
MAX_NEW_TOKENS = 8192
DEFAULT_STUDENT_STEPS = 100  # training steps of a student when steps are asked for rather than minutes
DEFAULT_STUDENT_MINUTES = 10.0  # training time of a student (summed over runs) when neither is given
EMBEDDED = "embedded"


class RecipeError(ValueError):
    """A recipe field holds a value the workbench does not accept.

    ``field`` names the offending field (the CLI turns it into ``--field``) so the
    message can say exactly which input was wrong and what is allowed.
    """

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class PruneSpec:
    method: str = "none"  # one of PRUNE_METHODS
    ratio: float = 0.0  # share of weights / channels / layers removed; ignored for "none"
    criterion: str = "magnitude"  # |W| or Wanda's |W|*||X||; only for "magnitude" and "2:4"

    def __post_init__(self):
        if self.method not in PRUNE_METHODS:
            raise RecipeError("prune-method", f"unknown pruning method {self.method!r}; allowed: {', '.join(PRUNE_METHODS)}")
        if self.criterion not in PRUNE_CRITERIA:
            raise RecipeError("prune-criterion", f"unknown criterion {self.criterion!r}; allowed: {', '.join(PRUNE_CRITERIA)}")
        if self.method not in ("magnitude", "2:4"):
            object.__setattr__(self, "criterion", "magnitude")  # the others have their own importance measure
        if not isinstance(self.ratio, (int, float)) or not 0.0 <= float(self.ratio) <= MAX_PRUNE_RATIO:
            raise RecipeError("prune-ratio", f"pruning ratio must be between 0 and {MAX_PRUNE_RATIO}, got {self.ratio!r}")
        object.__setattr__(self, "ratio", round(float(self.ratio), 4))
        if self.method == "none":
            object.__setattr__(self, "ratio", 0.0)  # so that every "no pruning" recipe has one key
        elif self.method == "2:4":
            object.__setattr__(self, "ratio", 0.5)  # 2 of every 4 weights, by definition


@dataclass(frozen=True)
class Recipe:
    """What to build: a model source plus the optimizations applied to it, in pipeline order.

    ``device`` should be resolved (see ``devices.resolve_device``) before the key is
    used, so that "auto" on two machines never shares artifacts or metrics rows.
    """

    model: str = EMBEDDED  # "embedded", a hub id, a local directory, a .gguf file or a server's http(s)://…/v1 URL
    runtime: str = "transformers"  # one of RUNTIMES; a URL model means "remote"
    device: str = "auto"
    dtype: str = "fp32"  # float cast or quantized weight format (what each runtime runs: *_DTYPES)
    backend: str = "auto"  # the library that runs dtype; resolved by the runtime's check
    prune: PruneSpec = field(default_factory=PruneSpec)
    variant: str = "none"  # distilled variant: "none", a catalog name or a student built here
    batch_size: int = 1  # how many concurrent requests the worker may run together
    threads: int = 0  # llama.cpp's threads; 0 = one per physical core (resolved before the key)
    remote_model: str = ""  # the server's model name; "" = the first the server lists (resolved before the key)
    # The environment variable holding the server's API key: only its name is ever kept (never in the key).
    api_key_env: str = ""

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model.strip():
            raise RecipeError("model", "model must be 'embedded', a hub id, a local directory, a .gguf file or a "
                                       "server URL http(s)://HOST:PORT/v1")
        object.__setattr__(self, "model", self.model.strip())
        if is_url(self.model) or self.runtime == REMOTE:
            self._check_remote()
            return
        if self.remote_model or self.api_key_env:
            flag = "remote-model" if self.remote_model else "api-key-env"
            raise RecipeError(flag, f"--{flag} is for a server's model (--model http(s)://HOST:PORT/v1); "
                                    f"{model_label(self.model)} runs here")
        if self.device not in DEVICES:
            raise RecipeError("device", f"unknown device {self.device!r}; allowed: {', '.join(DEVICES)}")
        if self.runtime not in RUNTIMES:
            raise RecipeError("runtime", f"unknown runtime {self.runtime!r}; allowed: {', '.join(RUNTIMES)}")
        if self.dtype not in DTYPES:
            raise RecipeError("dtype", f"unknown dtype {self.dtype!r}; allowed: {', '.join(DTYPES)}")
        if not isinstance(self.backend, str) or not self.backend:
            raise RecipeError("backend", "backend must be 'auto' or a backend name")
        if self.runtime == "llama.cpp":
            object.__setattr__(self, "dtype", LLAMA_CPP_ALIASES.get(self.dtype, self.dtype))
            if self.backend == "auto":
                object.__setattr__(self, "backend", "llama.cpp")  # its own kernels: one key for every recipe
        elif self.dtype in FLOAT_DTYPES and self.backend == "auto":
            object.__setattr__(self, "backend", "torch")  # a float cast has one backend: one key for it
        if isinstance(self.prune, dict):
            object.__setattr__(self, "prune", PruneSpec(**self.prune))
        if not isinstance(self.variant, str) or not self.variant.strip():
            raise RecipeError("variant", "variant must be 'none' or a variant name")
        check_batch_size(self.batch_size)
        if isinstance(self.threads, bool) or not isinstance(self.threads, int) or not 0 <= self.threads <= 1024:
            raise RecipeError("threads", f"threads must be an integer from 0 (one per physical core) to 1024, "
                                         f"got {self.threads!r}")

    def _check_remote(self) -> None:
        """A server's recipe: its URL normalized (``/v1`` when it has no path), runtime "remote", and none of the
        fields that build a model here, which a server decides for itself."""
        if self.runtime not in ("transformers", REMOTE):  # transformers: the default, which a URL overrides
            raise RecipeError("runtime", f"a server URL is measured by --runtime {REMOTE} (or no --runtime); "
                                         f"{self.runtime} runs a model here")
        object.__setattr__(self, "runtime", REMOTE)
        object.__setattr__(self, "model", server_url(self.model))
        if self.dtype not in ("fp32", REMOTE_DTYPE):  # fp32: the default
            raise RecipeError("dtype", f"a server runs its own weights; leave --dtype out (a server's recipe is "
                                       f"--dtype {REMOTE_DTYPE}), got {self.dtype!r}")
        object.__setattr__(self, "dtype", REMOTE_DTYPE)
        if self.backend not in ("auto", REMOTE):
            raise RecipeError("backend", f"a server runs its own kernels; leave --backend out, got {self.backend!r}")
        object.__setattr__(self, "backend", REMOTE)
        if self.device != "auto":
            raise RecipeError("device", "a server runs on its own devices; leave --device out (auto)")
        if isinstance(self.prune, dict):
            object.__setattr__(self, "prune", PruneSpec(**self.prune))
        if self.prune.method != "none":
            raise RecipeError("prune-method", "a server's weights cannot be pruned from here; leave --prune-method "
                                              "out (prune a local model and serve it with workbench serve)")
        if self.variant != "none":
            raise RecipeError("variant", "a server serves its own model; leave --variant out (name the model with "
                                         "--remote-model)")
        check_batch_size(self.batch_size)
        if self.threads:
            raise RecipeError("threads", "--threads sets llama.cpp's threads here; a server sets its own")
        if not isinstance(self.remote_model, str):
            raise RecipeError("remote-model", "the server's model name must be text")
        object.__setattr__(self, "remote_model", self.remote_model.strip())
        if not isinstance(self.api_key_env, str) or (self.api_key_env and not ENV_NAME.fullmatch(self.api_key_env)):
            raise RecipeError("api-key-env", "give the name of the environment variable that holds the key (e.g. "
                                             "OPENAI_API_KEY), not the key itself")

    def to_dict(self) -> dict:
        """The fields as plain JSON values; a recipe run here leaves out the server fields (always empty for it), so
        that its dict (recipe.json, history rows) is what it was before servers were recipes."""
        data = asdict(self)
        if self.runtime != REMOTE:
            for name in REMOTE_FIELDS:
                del data[name]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        data = dict(data)
        data["prune"] = PruneSpec(**data.get("prune", {}))
        return cls(**data)

    def key(self) -> str:
        """Short sha256 of the canonical JSON: the name of this recipe's artifacts, cache entries and metrics rows.

        Fields that joined the recipe later (``KEY_DEFAULTS``) are left out while they hold their default, so
        that every artifact, cached answer and history row written before they existed keeps its key.
        """
        data = {k: v for k, v in self.to_dict().items()
                if KEY_DEFAULTS.get(k, object()) != v and k not in NOT_IN_KEY}
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    def baseline(self) -> "Recipe":
        """Same model and device under transformers, no pruning, no variant, in the device's working precision
        (fp16 on CUDA): what every recipe is measured against. A server's recipe is its own baseline (nothing of
        it is built here)."""
        if self.runtime == REMOTE:
            return self
        return replace(self, runtime="transformers", threads=0, dtype=working_precision(self.device),
                       backend="torch", prune=PruneSpec(), variant="none")

    def is_baseline(self) -> bool:
        return self == self.baseline()

    def label(self) -> str:
        """Short human-readable description, e.g. 'embedded · cpu · bf16'."""
        if self.runtime == REMOTE:
            where = urlsplit(self.model)
            parts = [f"{self.remote_model or 'first model'} at {where.netloc}{where.path}", REMOTE]
            return " · ".join(parts + ([f"batch {self.batch_size}"] if self.batch_size != 1 else []))
        parts = [model_label(self.model), self.device, self.dtype]
        if self.backend not in ("auto", "torch"):
            parts.append(self.backend)
        if self.prune.method != "none":
            wanda = " wanda" if self.prune.criterion == "wanda" else ""
            parts.append(f"{self.prune.method}{wanda} {self.prune.ratio:g}")
        if self.variant != "none":
            parts.append(f"variant {self.variant}")
        if self.batch_size != 1:
            parts.append(f"batch {self.batch_size}")
        if self.threads:
            parts.append(f"{self.threads} thread{'s' if self.threads != 1 else ''}")
        return " · ".join(parts)


KEY_DEFAULTS = {"runtime": "transformers", "threads": 0, "remote_model": "", "api_key_env": ""}
REMOTE_FIELDS = ("remote_model", "api_key_env")  # a server's recipe only
# The variable a key is read from does not change an answer: the endpoint and the model name do (cache, history).
NOT_IN_KEY = ("api_key_env",)


def is_url(model: str) -> bool:
    """Whether a model field names a server (``http://`` or ``https://``)."""
    return isinstance(model, str) and model.strip().lower().startswith(URL_SCHEMES)


def server_url(model: str) -> str:
    """A server's base URL as the recipe keeps it: scheme and host lower-case, no trailing slash, ``/v1`` when no
    path is given. RecipeError (``--model``) for what cannot be one; the error never repeats credentials."""
    try:
        parts = urlsplit(model.strip())
        port = parts.port
    except ValueError:
        raise RecipeError("model", "not a server URL: give http(s)://HOST:PORT/v1") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise RecipeError("model", "not a server URL: give http(s)://HOST:PORT/v1")
    if parts.username or parts.password:
        raise RecipeError("model", "a server URL must not hold credentials; put the key in an environment "
                                   "variable and name it with --api-key-env")
    if parts.query or parts.fragment:
        raise RecipeError("model", "a server URL takes no query or fragment: give http(s)://HOST:PORT/v1 "
                                   "(an API key goes in an environment variable named by --api-key-env)")
    host = parts.hostname.lower()
    host = f"[{host}]" if ":" in host else host
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path.rstrip("/") or "/v1"
    return f"{parts.scheme.lower()}://{netloc}{path}"


def working_precision(device: str) -> str:
    """The float dtype a device computes in: a baseline's weights, and what stays in float beside quantized
    weights (norms, embeddings, the compute dtype of dequantized matmuls). fp16 on CUDA, fp32 elsewhere."""
    return "fp16" if device == "cuda" else "fp32"


def check_batch_size(batch_size, flag: str = "batch-size") -> int:
    """Raise RecipeError (naming ``flag``) unless ``batch_size`` is an integer from 1 to MAX_BATCH_SIZE."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise RecipeError(flag, f"batch size must be an integer from 1 to {MAX_BATCH_SIZE}, got {batch_size!r}")
    return batch_size


@dataclass(frozen=True)
class GenerationSettings:
    """How to generate one answer; part of every response-cache key."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0  # nucleus sampling mass; only used when sampling
    seed: int | None = None  # a seeded request gives the same text whatever else is queued
    ignore_eos: bool = False  # benchmarks: generate exactly max_new_tokens

    def __post_init__(self):
        n = self.max_new_tokens
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_NEW_TOKENS:
            raise RecipeError("max-new-tokens", f"max new tokens must be an integer from 1 to {MAX_NEW_TOKENS}, "
                                                f"got {n!r}")
        if not 0.0 <= float(self.temperature) <= 5.0:
            raise RecipeError("temperature",
                              f"temperature must be between 0 and 5 (0 = greedy), got {self.temperature!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise RecipeError("top-p", f"top-p must be in (0, 1], got {self.top_p!r}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise RecipeError("seed", f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return float(self.temperature) == 0.0


def model_label(model: str) -> str:
    if is_url(model):
        return model
    if model == EMBEDDED:
        return "SmolLM2-135M-Instruct (embedded)"
    return model.rstrip("/").rsplit("/", 1)[-1] if model.startswith(("/", ".", "~")) else model


# How a student's layers are chosen: least change from input to output (per-layer cosine similarity), the
# contiguous block of least angular distance (Gromov et al., 2024), or least measured loss when left out.
LAYER_CHOICES = ("similarity", "angular", "loss")
CORPUS_RUNTIMES = ("transformers", "llama.cpp")


@dataclass(frozen=True)
class StudentSpec:
    """How to make and heal a student. Everything but ``steps`` names the student; more steps resume it."""

    layers_ratio: float = 0.3  # share of decoder layers removed from the teacher to initialise the student
    channels_ratio: float = 0.0  # share of MLP channels removed as well
    temperature: float = 2.0  # softens both distributions so the student learns the teacher's runner-ups
    hidden_weight: float = 0.0  # weight of an MSE loss on the final (normed) hidden state (0 = logits only)
    lr: float = 1e-4  # AdamW learning rate (3e-4 measured worse: held-out perplexity 17.1 against 14.4 at 100 steps)
    batch_size: int = 4  # training sequences per step
    seq_len: int = 160  # prompt + teacher answer, tokens
    corpus_new_tokens: int = 112  # length of each teacher answer
    samples_per_prompt: int = 1  # teacher answers per prompt
    seed: int = 0
    # Joined later: left out of the student's name while at their default (optimize/variants.py), so that
    # students built before them keep their names.
    kl_weight: float = 1.0  # weight of the KL loss on the teacher's softened next-token distribution
    # Weight of the relative squared error of each student layer's output against its teacher layer's. Off by
    # default, as measured (embedded model, 30% of the layers removed, 40 steps): weight 1 ended at the same QA
    # and held-out perplexity (22.3 against 22.2) as KL alone, 16% slower per step.
    layers_weight: float = 0.0
    attention_weight: float = 0.0  # weight of the KL of mapped layers' attention distributions (teacher per step)
    teacher_top_k: int = 64  # teacher log-probs kept per token in the cached targets; 0 = run the teacher each step
    layer_choice: str = "similarity"  # which layers go: one of LAYER_CHOICES (optimize/prune.py measures each)
    # Training prompts taken from the top of the prompt file (810 there). 384 as measured (embedded model, 20% of
    # the layers removed, 100 steps): held-out perplexity 14.4 and QA 0.40, against 15.1 and 0.36 with 128 prompts
    # after 124 steps; the text is written once and shared by every student that asks for it.
    prompts: int = 384
    corpus_runtime: str = "transformers"  # what writes the teacher's training text: one of CORPUS_RUNTIMES

    def __post_init__(self):
        if not 0.0 <= self.layers_ratio <= 0.9 or not 0.0 <= self.channels_ratio <= 0.9:
            raise RecipeError("prune-ratio", "student layer and channel ratios must be between 0 and 0.9")
        if self.layers_ratio == 0 and self.channels_ratio == 0:
            raise RecipeError("prune-ratio", "a student must be smaller than its teacher: set a layer or channel ratio")
        if self.temperature <= 0 or self.lr <= 0 or self.batch_size < 1:
            raise RecipeError("steps", "temperature, learning rate and batch size must be positive")
        weights = {"kl-weight": self.kl_weight, "layers-weight": self.layers_weight,
                   "attention-weight": self.attention_weight, "hidden-weight": self.hidden_weight}
        for flag, value in weights.items():
            if not 0.0 <= value < float("inf"):  # NaN fails too
                what = "hidden_weight" if flag == "hidden-weight" else f"--{flag}"  # the library's field alone
                raise RecipeError(flag, f"{what} must be a number of 0 or more, got {value!r}")
        if not any(weights.values()):
            raise RecipeError("kl-weight", "every loss weight is 0, so the student would learn nothing: set "
                                           "--kl-weight or --layers-weight above 0")
        if self.layer_choice not in LAYER_CHOICES:
            raise RecipeError("layer-choice", f"unknown layer choice {self.layer_choice!r}; allowed: "
                                              f"{', '.join(LAYER_CHOICES)}")
        if self.corpus_runtime not in CORPUS_RUNTIMES:
            raise RecipeError("corpus-runtime", f"unknown corpus runtime {self.corpus_runtime!r}; allowed: "
                                                f"{', '.join(CORPUS_RUNTIMES)}")
        if isinstance(self.prompts, bool) or not isinstance(self.prompts, int) or self.prompts < 1:
            raise RecipeError("prompts", f"--prompts must be a whole number of 1 or more, got {self.prompts!r}")
        if isinstance(self.teacher_top_k, bool) or not isinstance(self.teacher_top_k, int) or self.teacher_top_k < 0:
            raise RecipeError("teacher-top-k", f"--teacher-top-k must be an integer of 0 or more (0 = run the "
                                               f"teacher every step), got {self.teacher_top_k!r}")
