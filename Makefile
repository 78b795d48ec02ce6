# hubflow's two set-up commands: `make demo` (offline demo) and `make test` (the test suite). Both install first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install browser sandbox demo test test-all bench gpu-check

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# CPU torch first: a plain `torch` requirement would pull a several-GB CUDA build.
	$(PIP) torch==2.13.0
	$(PIP) -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: install sandbox
	$(VENV)/bin/hubflow demo --workdir ./hubflow-demo

# The browser test drives Debian's chromium (Playwright's own browser download needs the internet).
browser:
	@command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
	  || echo "chromium could not be installed (needs root): the browser test will be skipped"

# localhub runs every Space in a bubblewrap sandbox and refuses to start Spaces without one (docs/reliability.md).
sandbox:
	@command -v bwrap >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap) \
	  || echo "bubblewrap could not be installed (needs root): localhub will refuse to start Spaces"

# The linter first (pyproject.toml's [tool.ruff]): a finding fails the run before the tests spend their minutes.
test: install browser sandbox
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q

test-all: install sandbox
	$(VENV)/bin/pytest -q -m ""

bench: install
	$(PY) -m bench

# On a GPU machine: the CUDA build of torch and the project in .venv-gpu, `pytest -m gpu`, then the GPU figures as
# `name: value` lines (bench/gpu_check.py, docs/benchmarks.md). Without a GPU it stops at once, installing nothing.
gpu-check:
	python3 -m bench.gpu_check $(GPU_CHECK_ARGS)
