# melange2 remote builds. `make demo` runs the main job end to end; `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help

UV_VERSION := 0.13.9
UV := .tools/uv/bin/uv
PY := .venv/bin/python
export PATH := $(CURDIR)/.tools/bin:$(PATH)
export UV_PYTHON := python3.11

.PHONY: help setup system-deps tools venv protos lint test test-unit test-e2e test-slow test-differential demo farm-up farm-down farm-status bench clean

help:
	@echo "make demo       install everything, start the local farm, build the examples on it"
	@echo "make test       install what tests need, run lint and every test"
	@echo "make setup      install system packages, .venv, Go tools, gRPC stubs, melange's pipelines"
	@echo "make farm-up    start two buildkitd daemons and the registry (writes .farm/env);"
	@echo "                FARM_TLS=1: the daemons serve TLS and require a client certificate"
	@echo "                FARM_STORE=postgres FARM_REPLICAS=3: PostgreSQL and three server replicas"
	@echo "make farm-down  stop the local farm"
	@echo "make bench      replay wolfi's graph on the local farm (BENCH_FLAGS='--limit 400 --out r.json')"

setup: system-deps tools venv protos

system-deps:
	@scripts/setup-system.sh

tools:
	@scripts/build-tools.sh

$(UV):
	@python3.11 -m venv .tools/uv
	@.tools/uv/bin/pip install -q "uv==$(UV_VERSION)"

venv: $(UV)
	@$(UV) sync --frozen --quiet --compile-bytecode

protos: venv
	@$(PY) scripts/gen_protos.py
	@$(PY) scripts/gen_pipelines.py

lint: setup
	.venv/bin/ruff format --check src tests scripts bench
	.venv/bin/ruff check src tests scripts bench
	.venv/bin/mypy

test: setup lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test-e2e: setup
	$(PY) -m pytest tests/integration $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

test-differential: setup
	$(PY) -m pytest tests/differential $(PYTEST_ARGS)

farm-up: setup
	@$(PY) -m melange2.farm up $(if $(filter 1 yes true,$(FARM_TLS)),--tls) \
		$(if $(FARM_STORE),--store $(FARM_STORE)) $(if $(FARM_REPLICAS),--replicas $(FARM_REPLICAS))

farm-down:
	@if [ -x $(PY) ]; then $(PY) -m melange2.farm down; fi

farm-status:
	@$(PY) -m melange2.farm status

bench: farm-up
	$(PY) bench/replay.py $(BENCH_FLAGS)

demo: farm-up
	@scripts/demo.sh

clean: farm-down
	rm -rf .venv .tools .farm out src/melange2/buildkit/_proto src/melange2/recipe/_melange_pipelines
