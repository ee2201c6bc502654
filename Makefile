# sed-trt command index. Every target installs what it needs into .venv first: the user
# targets the base package (plus EXTRAS=openvino,trt,serve,bench when asked), the developer
# targets the [dev] extra (tests, lint, every backend library that runs on a CPU).
PY ?= .venv/bin/python
EXTRAS ?=
BACKBONE ?= convnext_b
WEIGHTS ?=
IMAGE_SIZE ?=
ENGINE_DIR ?= engines/$(BACKBONE)
BENCH_ARGS ?=
LOAD_ARGS ?=

.PHONY: install install-dev lint test test-all engine bench gpu-bench gpu-check load-test help

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

.venv/.dev: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: ## create .venv and install sed-trt (only what running it needs; EXTRAS=openvino,trt,serve,bench add more)
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -e ".$(if $(EXTRAS),[$(EXTRAS)])"

install-dev: .venv/.dev ## create .venv and install sed-trt with the dev extra (tests, lint)

lint: install-dev ## ruff (lint + format check) and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: install-dev lint ## lint, then the CPU test suite (GPU/TensorRT tests skip with a reason; slow ones: test-all)
	$(PY) -m pytest -q

test-all: install-dev lint ## also run the slow tests (the 200-step training run)
	$(PY) -m pytest -q -m "slow or not slow"

engine: install ## export BACKBONE's ONNX graphs + manifest (and TensorRT engines where TensorRT and a GPU exist); WEIGHTS=ckpt
	$(PY) -m sed_trt export --backbone $(BACKBONE) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE)) --out-dir $(ENGINE_DIR)

bench: EXTRAS = bench
bench: install ## PyTorch vs ONNX Runtime (vs TensorRT) ms/image, with and without CER; writes results/
	$(PY) -m sed_trt bench --backbone $(BACKBONE) $(if $(WEIGHTS),--weights $(WEIGHTS)) --out-dir results $(BENCH_ARGS)

gpu-bench: ## on a GPU machine: torch fp32/bf16, CUDA graphs on/off, ADE-150/847, CER off/top-8 (WEIGHTS=ckpt); writes results/gpu/
	$(PY) -m sed_trt.benchmarks.gpu_bench --backbone $(BACKBONE) $(if $(WEIGHTS),--weights $(WEIGHTS)) --out-dir results/gpu

gpu-check: install-dev ## on a GPU machine (pip install -e ".[trt]"): what can run, then the CUDA-layer and real-TensorRT tests
	$(PY) -m sed_trt doctor --gpu $(if $(wildcard $(ENGINE_DIR)/manifest.json),--engine-dir $(ENGINE_DIR))
	$(PY) -m pytest -q -rs -m gpu tests/runtime/test_cuda.py tests/test_gpu.py

load-test: EXTRAS = serve
load-test: install ## sed-trt serve under load on loopback (ENGINE_DIR, LOAD_ARGS="--clients 4 --duration 60"); writes results/load_test/
	$(PY) -m sed_trt.serve.load_test --engine-dir $(ENGINE_DIR) --out-dir results/load_test $(LOAD_ARGS)
