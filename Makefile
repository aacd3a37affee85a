# MAHIA-X Lab. Two commands on a fresh machine: `make dashboard` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test test-fast lint browser dashboard lab bench gpu-check clean hub hub-setup hub-learners

setup: $(STAMP)

# The venv is rebuilt when the pins change. torch==2.13.0 is pinned exactly: a looser
# pin with no torch installed would download a multi-GB CUDA build.
$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

lint: setup
	$(PY) -m ruff check mahiax tests benchmarks dashboard notebooks hub

# The browser tests drive Debian's chromium (never a downloaded browser build).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	} || echo "could not install chromium: the browser tests will be skipped"

# Every test (docs/tests.md), on two workers; the tests that start servers, kernels or
# browsers run in the groups their markers name (tests/conftest.py, GROUPS). The 25 slowest
# tests are listed, to keep them balanced.
test: lint browser hub-setup
	$(PY) -m pytest -n 2 --dist loadgroup --durations=25

# The unit tests: every test but those marked integration (servers, kernels, browsers,
# several processes, whole notebooks, the hub) or slow (long measurements). No browser or
# hub install needed (docs/tests.md).
test-fast: setup
	$(PY) -m pytest -n 2 --dist loadgroup -m "not integration and not slow" --durations=15

# Opens on localhost (.streamlit/config.toml); with an empty store it starts a demo run.
# STREAMLIT_ARGS passes options through, e.g. STREAMLIT_ARGS="--server.port 8600".
dashboard: setup
	$(VENV)/bin/streamlit run dashboard $(STREAMLIT_ARGS)

# The lesson notebooks in JupyterLab, on localhost only; open the URL it prints.
lab: setup
	cd notebooks && ../$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --no-browser \
	  $(if $(filter 0,$(shell id -u)),--allow-root)

# A workshop on one machine (docs/workshop.md), as root: a JupyterHub on 127.0.0.1:8000 where
# the learners of `make hub-learners LEARNERS="alice bob"` sign in with the workshop password:
#   MAHIAX_HUB_PASSWORD='...' make hub
# hub-setup installs what it needs into build/hub: configurable-http-proxy (npm, pinned by
# hub/package-lock.json) and the learners' interpreter (hub/runtime.py; HUB_PYTHON is an
# interpreter every user may run: the venv's own may live in a root-only home).
HUB_DIR := build/hub
HUB_PYTHON ?= /usr/bin/python3
HUB_STAMP := $(HUB_DIR)/.installed

hub-setup: $(HUB_STAMP)

$(HUB_STAMP): $(STAMP) hub/package.json hub/package-lock.json hub/runtime.py
	@command -v npm >/dev/null 2>&1 || { \
	  echo "installing Debian's nodejs and npm for configurable-http-proxy"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	mkdir -p $(HUB_DIR)
	cp hub/package.json hub/package-lock.json $(HUB_DIR)/
	cd $(HUB_DIR) && npm ci --no-audit --no-fund --loglevel=error
	$(PY) hub/runtime.py --python $(HUB_PYTHON) --venv $(HUB_DIR)/venv
	chmod -R a+rX $(HUB_DIR)
	touch $@

hub: hub-setup
	$(VENV)/bin/jupyterhub -f hub/jupyterhub_config.py

hub-learners: setup
	@test -n "$(LEARNERS)" || { echo 'usage: make hub-learners LEARNERS="alice bob"'; exit 2; }
	$(PY) hub/learners.py add $(LEARNERS)

bench: setup browser hub-setup
	$(PY) -m benchmarks.run_all

# The GPU check, on a CUDA machine (under 8 minutes): writes
# benchmarks/results/gpu-latest.md; without CUDA it says so and exits 0. It needs no venv:
# GPU_PYTHON is the venv's interpreter when there is one, else python3.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),$(PYTHON))
gpu-check:
	PYTHONPATH=. $(GPU_PYTHON) -m benchmarks.gpu_check --out test-artifacts/gpu-check

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
