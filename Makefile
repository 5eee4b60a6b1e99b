# fraudflow — every target installs what it needs into .venv first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# The first interpreter that actually runs and is 3.11/3.12 (a pyenv shim can exist without its version).
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do \
	  $$p -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null && { echo $$p; break; }; \
	done)
STAMP := $(VENV)/.installed
# The exact versions CI tested: constraints.txt (every runtime and test package) and, for the
# image, deploy/requirements.lock (the runtime ones), both written by pip-compile (`make lock`).
CONSTRAINTS := constraints.txt
PIP_TOOLS := pip-tools==7.6.2
LOCK_VENV := $(VENV)/pip-tools
PIP_COMPILE_FLAGS ?=

.PHONY: demo test bench broker evaluate-reference install lock clean help

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-20s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml $(CONSTRAINTS)
	@test -n "$(PYTHON)" || { echo "fraudflow needs Python 3.11 or 3.12 (bytewax 0.21 wheels); none found on PATH"; exit 1; }
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; sys.exit(0 if (3, 11) <= v <= (3, 12) else "fraudflow needs Python 3.11 or 3.12 (bytewax 0.21 wheels); found %d.%d" % v)'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(CONSTRAINTS) -e '.[test]'
	@touch $@

install: $(STAMP)  ## create .venv with everything (the test broker included), at the versions in constraints.txt

lock:  ## re-resolve constraints.txt and deploy/requirements.lock (PIP_COMPILE_FLAGS=--upgrade for new releases)
	@test -x $(LOCK_VENV)/bin/pip-compile || { $(PYTHON) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install --quiet '$(PIP_TOOLS)'; }
	$(LOCK_VENV)/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links $(PIP_COMPILE_FLAGS) \
	    --extra test --output-file $(CONSTRAINTS) pyproject.toml
	$(LOCK_VENV)/bin/pip-compile --quiet --strip-extras --no-emit-index-url --no-emit-find-links \
	    --constraint $(CONSTRAINTS) --output-file deploy/requirements.lock pyproject.toml
	@echo "now: make install && make test (the new versions are what CI will run)"

demo: $(STAMP)  ## run the dataflow on the embedded simulator (about a minute)
	$(PY) -m bytewax.run dataflows.fraud:flow

# The suite on TEST_WORKERS processes (pytest-xdist; a test file stays on one worker, so its
# module fixtures are computed once), then the tests marked `serial` alone: multi-process
# clusters whose processes must not compete with another test for the CPU (decision 0047).
TEST_WORKERS ?= 2

test: $(STAMP)  ## run the test suite (starts its own Kafka-compatible broker)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not serial"; parallel=$$?; \
	$(PY) -m pytest -q -m serial; serial=$$?; \
	exit $$(( parallel || serial ))

bench: $(STAMP)  ## throughput / latency / scaling benchmarks, results in benchmarks/results/
	$(PY) -m benchmarks.run

broker: $(STAMP)  ## a local Kafka-compatible broker (tansu, in memory) on 127.0.0.1:9092
	$(PY) -m connectors.broker --port 9092

evaluate-reference: $(STAMP)  ## the published configuration on 3 seeds: the handbook LR and the ceiling on each seed, then the dataflow
	$(PY) -m benchmarks.baseline
	$(PY) -m benchmarks.quality

clean:  ## remove .venv and outputs
	rm -rf $(VENV) fraudflow-output *.egg-info
