# ia-continu — `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

# uv from PATH, else the module that `pip install uv` provides.
UV ?= $(shell command -v uv 2>/dev/null || echo python3 -m uv)
VENV := .venv
export UV_COMPILE_BYTECODE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
PYTEST_ARGS ?=

.PHONY: help install run test test-fast lint format typecheck bench bench-smoke soak clean image image-test

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

install: ## install the locked dependencies into .venv (bytecode compiled)
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 \
		|| python3 -m pip install --quiet uv
	@$(UV) sync --frozen --compile-bytecode --quiet

run: install ## start MLflow (5000), Prefect (4200) and the API (9000); Ctrl-C stops them
	$(VENV)/bin/ia-continu up

test: install ## run the whole test suite (SQLite and PostgreSQL)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: install ## unit tests only
	$(VENV)/bin/python -m pytest tests/unit $(PYTEST_ARGS)

lint: install ## ruff lint + format check, mypy on src/
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
	$(VENV)/bin/mypy

format: install ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix src tests bench
	$(VENV)/bin/ruff format src tests bench

DURATION ?= 600
SOAK_ARGS ?=
soak: install ## load `make run`'s stack for DURATION s (default 600; starts one if none answers): totals, p50/p99, RSS
	$(VENV)/bin/python bench/soak.py --duration $(DURATION) $(SOAK_ARGS)

clean: ## remove local data, MLflow store and caches (keeps .venv)
	rm -rf data mlflow .pytest_cache .ruff_cache .mypy_cache bench/results

bench: install ## the benchmark suite (~6 min): one table, JSON in bench/results/
	$(VENV)/bin/python -m bench

bench-smoke: install ## every benchmark section with tiny sizes (keeps the bench working)
	$(VENV)/bin/python -m bench --smoke

image: ## build the image ia-continu:2.0.0 (docker, else podman; stand-in base when no registry)
	deploy/build-image.sh

image-test: install ## build the image, then run the API, MLflow and Prefect in containers (tests)
	$(VENV)/bin/python -m pytest tests/integration/test_containers.py $(PYTEST_ARGS)
