# sed-trt command index (`make help`). Every target installs what it needs into .venv first: the
# user targets the base package (ONNX Runtime, no torch) plus the extras they need (EXTRAS= adds
# more: torch, openvino, trt, serve, bench), the developer targets the [dev] extra.
PY ?= .venv/bin/python## the virtual environment's Python (made if missing)
EXTRAS ?=## extras to install besides each target's own: torch,openvino,trt,serve,bench
BACKBONE ?= convnext_b## convnext_b | convnext_l | sed_tiny_linear
WEIGHTS ?=## an official SED checkpoint (.pth); empty: random weights (speed only)
IMAGE_SIZE ?=## network input side for engine (default 768)
ENGINE_DIR ?= engines/$(BACKBONE)## where engine writes (and gpu-check/load-test read) the engine directory
BENCH_ARGS ?=## more sed-trt bench flags, e.g. "--classes 150 --topk 8"
LOAD_ARGS ?=## more load-test flags, e.g. "--clients 4 --duration 60"

comma := ,
empty :=
space := $(empty) $(empty)
# EXTRAS plus a target's own extras ($(1)), comma-separated, for pip's ".[a,b]".
with_extras = $(subst $(space),$(comma),$(strip $(1) $(subst $(comma),$(space),$(EXTRAS))))

.PHONY: install install-dev lint test test-all engine bench gpu-bench gpu-check load-test help

help: ## list targets and variables
	@echo "targets:"
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/' | sed 's/^/  /'
	@echo "variables (make TARGET VAR=value):"
	@grep -E '^[A-Z_]+ \?=.*## ' Makefile | sed 's/ ?= *\([^#]*\)## /\t(default: \1) /' | sed 's/(default: )/(default: empty)/' | sed 's/^/  /'

.venv/.dev: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

install: ## create .venv and install sed-trt: the base (ONNX Runtime, no torch) plus EXTRAS
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q -e ".$(if $(EXTRAS),[$(EXTRAS)])"

install-dev: .venv/.dev ## create .venv and install sed-trt with the dev extra (tests, lint)

lint: install-dev ## ruff (lint + format check) and mypy
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

test: install-dev lint ## lint, then the CPU test suite (GPU/TensorRT tests skip with a reason; slow ones: test-all)
	$(PY) -m pytest -q

test-all: install-dev lint ## also run the slow tests (the 200-step training run, DDP, killing a server)
	$(PY) -m pytest -q -m "slow or not slow"

engine: override EXTRAS := $(call with_extras,torch)
engine: install ## export BACKBONE's ONNX graphs + manifest into ENGINE_DIR (and TensorRT engines where TensorRT and a GPU exist)
	$(PY) -m sed_trt export --backbone $(BACKBONE) $(if $(WEIGHTS),--weights $(WEIGHTS)) $(if $(IMAGE_SIZE),--image-size $(IMAGE_SIZE)) --out-dir $(ENGINE_DIR)

bench: override EXTRAS := $(call with_extras,bench)
bench: install ## PyTorch vs ONNX Runtime (vs TensorRT) ms/image, with and without CER; writes results/
	$(PY) -m sed_trt bench --backbone $(BACKBONE) $(if $(WEIGHTS),--weights $(WEIGHTS)) --out-dir results $(BENCH_ARGS)

gpu-bench: override EXTRAS := $(call with_extras,torch)
gpu-bench: install ## on a GPU machine: torch fp32/bf16, CUDA graphs on/off, ADE-150/847, CER off/top-8 (WEIGHTS=ckpt); writes results/gpu/
	$(PY) -m sed_trt.benchmarks.gpu_bench --backbone $(BACKBONE) $(if $(WEIGHTS),--weights $(WEIGHTS)) --out-dir results/gpu

gpu-check: install-dev ## on a GPU machine, one prepared run: doctor, every GPU test (CUDA layer, torch, TensorRT), then gpu-bench; writes results/gpu/ (EXTRAS=trt where TensorRT installs)
	$(if $(EXTRAS),$(PY) -m pip install -q -e ".[$(EXTRAS)]")
	-$(PY) -m sed_trt doctor --gpu $(if $(wildcard $(ENGINE_DIR)/manifest.json),--engine-dir $(ENGINE_DIR))
	$(PY) -m pytest -q -rs -m gpu tests
	$(PY) -m sed_trt.benchmarks.gpu_bench --backbone $(BACKBONE) $(if $(WEIGHTS),--weights $(WEIGHTS)) --out-dir results/gpu

load-test: override EXTRAS := $(call with_extras,serve)
load-test: install ## sed-trt serve under load on loopback (ENGINE_DIR, LOAD_ARGS); writes results/load_test/
	$(PY) -m sed_trt.serve.load_test --engine-dir $(ENGINE_DIR) --out-dir results/load_test $(LOAD_ARGS)
