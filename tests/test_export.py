"""Exporting a recipe for the servers people deploy on: the transformers directory reloads with ``from_pretrained``
and answers the recipe's greedy tokens (pruned too); the GGUF file loads in llama.cpp and answers; the Ollama
Modelfile parses as Ollama parses it and its TEMPLATE renders a conversation as the model's chat template does
(with Go's own text/template where ``go`` is installed); the folder is written whole or not at all."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from workbench import catalog, export, runtimes, store
from workbench.recipe import PruneSpec, Recipe, RecipeError
from workbench.runtimes import llamacpp

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]
TWO_TURNS = [{"role": "user", "content": "Hi! Who are you?"}, {"role": "assistant", "content": "A small model."},
             {"role": "user", "content": "What is 2+2?"}]
WITH_SYSTEM = [{"role": "system", "content": "Answer in one word."}, *TWO_TURNS]
# Ollama's Modelfile instructions (parser.isValidCommand) and the options its PARAMETER lines set here.
INSTRUCTIONS = {"FROM", "LICENSE", "TEMPLATE", "SYSTEM", "ADAPTER", "DRAFT", "RENDERER", "PARSER", "PARAMETER",
                "MESSAGE", "REQUIRES"}
PARAMETERS = {"num_ctx", "stop", "temperature", "top_k", "top_p", "min_p", "seed", "num_predict", "repeat_penalty",
              "repeat_last_n", "num_thread"}


def resolved(model_dir, **fields) -> Recipe:
    return runtimes.check(Recipe(model=str(model_dir), device="cpu", **fields))


def greedy_tokens(model, tokenizer, n: int = 12) -> list[int]:
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.inference_mode():
        out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
    return out[0, ids["input_ids"].shape[1]:].tolist()


def reloaded_tokens(folder: Path) -> list[int]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    return greedy_tokens(model, tokenizer)


def recipe_tokens(recipe: Recipe) -> list[int]:
    model = runtimes.build(recipe)
    try:
        return greedy_tokens(model.module, model.tokenizer)
    finally:
        model.close()


# The transformers directory ----------------------------------------------------------------------------------


@pytest.mark.parametrize("prune", [PruneSpec(), PruneSpec("channels", 0.5), PruneSpec("layers", 0.5)],
                         ids=["dense", "channels", "layers"])
def test_transformers_directory_reloads_and_answers_the_recipes_greedy_tokens(tiny_model_dir, tmp_path, prune):
    recipe = resolved(tiny_model_dir, prune=prune)
    result = export.export_recipe(recipe, tmp_path / "out")
    folder = tmp_path / "out"
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "SERVE.md",
            "recipe.json"} <= set(result.files)
    assert result.files == {p.name: p.stat().st_size for p in folder.iterdir()}
    config = json.loads((folder / "config.json").read_text())
    if prune.method == "layers":
        assert config["num_hidden_layers"] == 1  # half of the tiny model's 2 layers
    if prune.method == "channels":
        assert config["intermediate_size"] == 64  # half of its 128 MLP channels
    assert reloaded_tokens(folder) == recipe_tokens(recipe)


def test_recipe_json_holds_the_recipe_its_key_and_the_export(tiny_model_dir, tmp_path):
    recipe = resolved(tiny_model_dir, prune=PruneSpec("channels", 0.25))
    result = export.export_recipe(recipe, tmp_path / "out", name="tiny-test")
    record = json.loads((tmp_path / "out" / "recipe.json").read_text())
    assert record["recipe_key"] == recipe.key() and Recipe.from_dict(record["recipe"]) == recipe
    assert record["export"]["format"] == "transformers" and record["export"]["name"] == "tiny-test"
    assert set(record["export"]["files"]) == set(result.files) - {"recipe.json"}
    stats = record["export"]["stats"]["transformers"]
    assert stats["params"] > 0 and stats["intermediate_size"] == 96 and stats["dtype"] == "fp32"
    commands = result.commands
    assert commands["vllm"].startswith(f"vllm serve {tmp_path / 'out'} --served-model-name tiny-test --dtype float32")
    assert "--host 127.0.0.1" in commands["vllm"] and "-p 127.0.0.1:8080:80" in commands["tgi"]
    assert commands["bench-vllm"] == "workbench bench --model http://127.0.0.1:8000/v1 --remote-model tiny-test"
    guide = (tmp_path / "out" / "SERVE.md").read_text()
    assert commands["vllm"] in guide and commands["tgi"] in guide and commands["bench-tgi"] in guide
    for name in result.files:  # every file is listed with what it is
        assert f"| `{name}` |" in guide and export.file_role(name), name


def test_a_quantized_transformers_recipe_exports_its_float_weights_and_says_so(tiny_model_dir, tmp_path):
    recipe = resolved(tiny_model_dir, dtype="int8")
    result = export.export_recipe(recipe, tmp_path / "out")
    assert result.stats["transformers"]["dtype"] == "fp32"
    assert any("fp32 weights that int8" in note and "--quantization fp8" in note for note in result.notes)
    assert reloaded_tokens(tmp_path / "out") == recipe_tokens(export.float_recipe(recipe))


# The folder ----------------------------------------------------------------------------------------------------


def test_a_non_empty_folder_is_refused_and_force_replaces_only_an_earlier_export(tiny_model_dir, tmp_path):
    recipe = resolved(tiny_model_dir)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    for force in (False, True):
        with pytest.raises(RecipeError) as caught:
            export.export_recipe(recipe, mine, force=force)
        assert caught.value.field == "to"
    assert (mine / "notes.txt").read_text() == "keep me" and sorted(os.listdir(mine)) == ["notes.txt"]

    out = tmp_path / "out"
    export.export_recipe(recipe, out)
    first = json.loads((out / "recipe.json").read_text())["export"]["made"]
    with pytest.raises(RecipeError, match="not empty"):
        export.export_recipe(recipe, out)
    export.export_recipe(recipe, out, force=True, name="again")
    assert json.loads((out / "recipe.json").read_text())["export"]["name"] == "again" and first
    (out / "extra.txt").write_text("mine")
    with pytest.raises(RecipeError, match="extra.txt"):
        export.export_recipe(recipe, out, force=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(RecipeError, match="is a file"):
        export.export_recipe(recipe, tmp_path / "file")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_a_failed_export_leaves_no_folder_and_no_temp_folder(tiny_model_dir, tmp_path, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "finish_dir", full_disk)
    with pytest.raises(store.StoreError, match="free some disk space"):
        export.export_recipe(resolved(tiny_model_dir), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_formats_names_and_hosts_are_checked_before_anything_loads(tiny_model_dir):
    recipe = resolved(tiny_model_dir)
    assert export.formats_for(recipe, None) == (("transformers",), [])
    for fmt, field in [("onnx", "format")]:
        with pytest.raises(RecipeError) as caught:
            export.formats_for(recipe, fmt)
        assert caught.value.field == field
    with pytest.raises(RecipeError, match="llama.cpp has no nf4"):
        export.formats_for(Recipe(model=str(tiny_model_dir), device="cpu", dtype="nf4", backend="bnb-nf4"), "gguf")
    formats, notes = export.formats_for(Recipe(model=str(tiny_model_dir), device="cpu", dtype="nf4",
                                               backend="bnb-nf4"), "all")
    assert formats == ("transformers",) and "no gguf export" in notes[0]
    for bad in ("Upper", "with space", "-dash", "x" * 81):
        with pytest.raises(RecipeError):
            export.check_name(bad)
    for bad in ("", "a b", "host;rm", "$(x)"):
        with pytest.raises(RecipeError):
            export.check_host(bad)
    assert export.check_host("::") == "::" and export.check_host("gpu-1.example") == "gpu-1.example"
    assert export.default_name(Recipe(runtime="llama.cpp", dtype="q4_0", prune=PruneSpec("2:4"))) == \
        "smollm2-135m-instruct-q4_0-2of4-0.5"


# The GGUF file and the Modelfile -------------------------------------------------------------------------------


def parse_modelfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, value) pairs read as Ollama's parser reads them: ``#`` comments on their own line, one
    instruction per line, values bare, in "..." or in triple quotes (which may span lines)."""
    commands, rest = [], text
    while rest:
        line, _, after = rest.partition("\n")
        if not line.strip() or line.lstrip().startswith("#"):
            rest = after
            continue
        word, _, value = line.strip().partition(" ")
        assert word.upper() in INSTRUCTIONS, f"unknown instruction {word!r}"
        value = value.strip()
        if word.upper() == "PARAMETER":
            key, _, value = value.partition(" ")
            word, value = f"PARAMETER {key}", value.strip()
            assert key in PARAMETERS, f"unknown parameter {key!r}"
        if value.startswith('"""'):
            body = rest[rest.index('"""') + 3:]
            end = body.index('"""')  # an unclosed triple quote fails here
            value, rest = body[:end], body[end + 3:].partition("\n")[2]
        else:
            if value.startswith('"'):
                assert value.endswith('"') and len(value) >= 2, line
                value = value[1:-1]
            rest = after
        commands.append((word, value))
    return commands


def ollama_render(template: str, system: str | None, messages: list[dict], tmp_path: Path) -> str:
    """``template`` executed by Go's text/template over ``messages`` as Ollama executes it (SYSTEM put first when
    the conversation has none; consecutive messages of one role merged)."""
    go = shutil.which("go")
    if system is not None and messages[0]["role"] != "system":
        messages = [{"role": "system", "content": system}, *messages]
    (tmp_path / "render.go").write_text(GO_RENDER)
    (tmp_path / "template.txt").write_text(template)
    env = {**os.environ, "GOTOOLCHAIN": "local", "GOFLAGS": "", "GOCACHE": str(tmp_path / "gocache"),
           "GOPATH": str(tmp_path / "gopath")}
    proc = subprocess.run([go, "run", "render.go", "template.txt"], input=json.dumps(messages), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


GO_RENDER = r"""package main

import (
	"encoding/json"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string `json:"role"`
	Content string `json:"content"`
}

func main() {
	src, err := os.ReadFile(os.Args[1])
	if err != nil {
		panic(err)
	}
	var msgs []Message
	if err := json.NewDecoder(os.Stdin).Decode(&msgs); err != nil {
		panic(err)
	}
	var system []string
	var collated []*Message
	for i := range msgs {
		if msgs[i].Role == "system" {
			system = append(system, msgs[i].Content)
		}
		if len(collated) > 0 && collated[len(collated)-1].Role == msgs[i].Role {
			collated[len(collated)-1].Content += "\n\n" + msgs[i].Content
		} else {
			collated = append(collated, &msgs[i])
		}
	}
	t := template.Must(template.New("").Option("missingkey=zero").Parse(string(src)))
	values := map[string]any{"System": strings.Join(system, "\n\n"), "Messages": collated, "Response": ""}
	if err := t.Execute(os.Stdout, values); err != nil {
		panic(err)
	}
}
"""


def smollm2_tokenizer():
    """The tiny tokenizer carrying SmolLM2's own chat template, read from the embedded GGUF file's metadata."""
    import gguf
    from tiny import make_tokenizer

    path = catalog.embedded_gguf()
    if path is None:
        pytest.skip("the embedded model is not installed")
    tokenizer = make_tokenizer()
    tokenizer.chat_template = gguf.GGUFReader(str(path)).fields["tokenizer.chat_template"].contents()
    return tokenizer


def check_modelfile(text: str, tokenizer, tmp_path: Path, gguf_name: str) -> dict:
    commands = parse_modelfile(text)
    assert commands[0] == ("FROM", f"./{gguf_name}")
    values = dict(commands)
    stops = [v for k, v in commands if k == "PARAMETER stop"]
    assert "<|im_end|>" in stops and all(tokenizer.convert_tokens_to_ids(s) is not None for s in stops)
    assert int(values["PARAMETER num_ctx"]) > 0 and values["PARAMETER temperature"] == "0"
    assert values["PARAMETER repeat_penalty"] == "1"
    assert values["TEMPLATE"] == export.CHATML_TEMPLATE  # rendered by Go below (test_..._in_gos_text_template)
    for messages in (TWO_TURNS, WITH_SYSTEM):
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert export.chatml(messages, values.get("SYSTEM")) == expected
    return values


def test_the_modelfile_carries_smollm2s_template_and_default_system_message(tmp_path):
    tokenizer = smollm2_tokenizer()
    text, notes = export.ollama_modelfile("m.gguf", tokenizer, {tokenizer.eos_token_id}, 2048)
    values = check_modelfile(text, tokenizer, tmp_path, "m.gguf")
    assert values["SYSTEM"].startswith("You are a helpful AI assistant named SmolLM") and notes == []


@pytest.mark.skipif(shutil.which("go") is None, reason="Go is not installed (Debian: apt-get install golang-go)")
@pytest.mark.parametrize("which", ["smollm2", "tiny"])
def test_the_modelfile_template_renders_in_gos_text_template_as_the_chat_template_does(tmp_path, which):
    from tiny import make_tokenizer

    tokenizer = smollm2_tokenizer() if which == "smollm2" else make_tokenizer()
    values = dict(parse_modelfile(export.ollama_modelfile("m.gguf", tokenizer, {tokenizer.eos_token_id}, 512)[0]))
    for messages in (TWO_TURNS, WITH_SYSTEM, PROMPT):
        expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert ollama_render(values["TEMPLATE"], values.get("SYSTEM"), messages, tmp_path) == expected


def test_a_template_that_is_not_chatml_gets_no_template_and_a_note():
    from tiny import make_tokenizer

    tokenizer = make_tokenizer()
    tokenizer.chat_template = ("{% for m in messages %}### {{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                               "### assistant:")
    text, notes = export.ollama_modelfile("m.gguf", tokenizer, {tokenizer.eos_token_id}, 512)
    assert "TEMPLATE" not in dict(parse_modelfile(text)) and "not ChatML" in notes[0]


llama_cpp_missing = pytest.mark.skipif(llamacpp.problem() is not None, reason=llamacpp.problem() or "")


@llama_cpp_missing
def test_gguf_export_loads_in_llama_cpp_and_answers(tiny_model_dir, tmp_path):
    from llama_cpp import Llama

    recipe = runtimes.check(Recipe(model=str(tiny_model_dir), runtime="llama.cpp", device="cpu", dtype="q8_0",
                                   prune=PruneSpec("channels", 0.5)))
    result = export.export_recipe(recipe, tmp_path / "out", name="tiny-q8")
    folder = tmp_path / "out"
    assert set(result.files) == {"tiny-q8.gguf", "Modelfile", "SERVE.md", "recipe.json"}
    artifact, _, _ = llamacpp.gguf_file(recipe)
    assert (folder / "tiny-q8.gguf").read_bytes() == artifact.read_bytes()  # the runtime's own file, reused
    assert "Q8_0" in result.stats["gguf"]["tensor_types"]
    llm = Llama(model_path=str(folder / "tiny-q8.gguf"), n_ctx=256, n_threads=1, verbose=False)
    try:
        answer = llm("Hello", max_tokens=6, temperature=0.0)
    finally:
        llm.close()
    assert answer["usage"]["completion_tokens"] >= 1
    check_modelfile((folder / "Modelfile").read_text(), llamacpp_tokenizer(tiny_model_dir), tmp_path, "tiny-q8.gguf")
    commands = result.commands
    assert commands["llama-server"] == (f"llama-server -m {folder / 'tiny-q8.gguf'} --host 127.0.0.1 --port 8081 "
                                        f"-t {recipe.threads} -c 512 --jinja")
    assert commands["ollama-create"] == f"cd {folder} && ollama create tiny-q8 -f Modelfile"
    assert commands["bench-ollama"] == "workbench bench --model http://127.0.0.1:11434/v1 --remote-model tiny-q8"


def llamacpp_tokenizer(model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


@llama_cpp_missing
def test_all_formats_of_a_transformers_recipe(tiny_model_dir, tmp_path):
    recipe = resolved(tiny_model_dir, dtype="int8")
    result = export.export_recipe(recipe, tmp_path / "out", "all", name="tiny-all")
    assert result.formats == ("transformers", "gguf") and result.stats["gguf"]["dtype"] == "q8_0"
    assert {"model.safetensors", "tiny-all.gguf", "Modelfile"} <= set(result.files)
    assert any("llama.cpp's q8_0 of the same float weights" in note for note in result.notes)
    assert {"vllm", "tgi", "llama-server", "ollama-create"} <= set(result.commands)


@llama_cpp_missing
def test_a_llama_cpp_recipes_transformers_export_has_the_widths_of_its_gguf_file(tiny_model_dir, tmp_path):
    import gguf

    recipe = runtimes.check(Recipe(model=str(tiny_model_dir), runtime="llama.cpp", device="cpu", dtype="q4_0",
                                   prune=PruneSpec("channels", 0.3)))
    result = export.export_recipe(recipe, tmp_path / "out", "all", name="tiny-both")
    width = gguf.GGUFReader(str(tmp_path / "out" / "tiny-both.gguf")).fields["llama.feed_forward_length"].contents()
    assert result.stats["transformers"]["intermediate_size"] == width == 96  # 70% of 128, in blocks of 32
    assert result.stats["transformers"]["dtype"] == "fp32"
    assert any("fp32 weights that llama.cpp's q4_0 quantizes" in note for note in result.notes)
    assert reloaded_tokens(tmp_path / "out")  # and it loads with from_pretrained


@llama_cpp_missing
def test_the_printed_llama_cpp_python_command_serves_the_export_with_its_chat_template(tiny_model_dir, tmp_path):
    """The export's own command line (on a free port) starts llama-cpp-python's OpenAI-compatible server, which
    answers the openai client and counts the prompt's tokens as the model's chat template makes them."""
    for module in ("openai", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        pytest.importorskip(module)
    import openai
    from processes import fetch, free_port, stop, wait_for
    from transformers import AutoTokenizer

    recipe = runtimes.check(Recipe(model=str(tiny_model_dir), runtime="llama.cpp", device="cpu", dtype="q8_0"))
    result = export.export_recipe(recipe, tmp_path / "out", name="tiny-served")
    argv = shlex.split(result.commands["llama-cpp-python"])
    port = free_port()
    argv[0], argv[argv.index("--port") + 1] = sys.executable, str(port)
    assert argv[1:3] == ["-m", "llama_cpp.server"] and argv[argv.index("--host") + 1] == "127.0.0.1"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: "data" in fetch(f"http://127.0.0.1:{port}/v1/models"), 120, "the server answers", proc)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=60, max_retries=0)
        answer = client.chat.completions.create(model="tiny-served", messages=TWO_TURNS, max_tokens=6, temperature=0)
    finally:
        stop(proc)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer.apply_chat_template(TWO_TURNS, add_generation_prompt=True, return_dict=True)["input_ids"]
    assert answer.usage.prompt_tokens == len(prompt) and answer.usage.completion_tokens >= 1


@pytest.mark.slow
@llama_cpp_missing
def test_the_embedded_q4_0_export_answers_paris_in_llama_cpp(tmp_path):
    from llama_cpp import Llama

    recipe = runtimes.check(Recipe(runtime="llama.cpp", device="cpu", dtype="q4_0"))
    result = export.export_recipe(recipe, tmp_path / "out")
    gguf_name = next(name for name in result.files if name.endswith(".gguf"))
    values = dict(parse_modelfile((tmp_path / "out" / "Modelfile").read_text()))
    assert values["SYSTEM"].startswith("You are a helpful AI assistant named SmolLM")
    llm = Llama(model_path=str(tmp_path / "out" / gguf_name), n_ctx=1024, verbose=False)
    try:
        answer = llm.create_chat_completion(PROMPT, max_tokens=24, temperature=0.0)
    finally:
        llm.close()
    assert "Paris" in answer["choices"][0]["message"]["content"]
