# edgefleet: `make demo` runs a simulated fleet end to end, `make test` runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test lint schemas bench clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

TFLITE_STAMP := .venv-tflite/.installed

install: $(STAMP) $(TFLITE_STAMP)  ## build .venv (and .venv-tflite) with pinned dependencies; a no-op when up to date

# The lock pins every package, transitive ones included; torch==2.13.0 is the CPU wheel.
$(STAMP): requirements/lock.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/lock.txt 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | grep -v "^WARNING: Location" || true
	$(PY) -m pip check
	touch $(STAMP)

# litert-torch and ai-edge-quantizer pull jax and protobuf 7, which flwr's stack cannot share:
# the TFLite converter lives in its own venv, called by model_compiler as a subprocess.
$(TFLITE_STAMP): requirements/tflite.txt
	test -x .venv-tflite/bin/python || $(PYTHON) -m venv .venv-tflite
	.venv-tflite/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/tflite.txt 2>&1 | grep -v "^WARNING: Location" || true
	.venv-tflite/bin/python -c "import litert_torch, ai_edge_quantizer"
	touch $(TFLITE_STAMP)

demo: install  ## run the main job: a simulated fleet, end to end
	$(VENV)/bin/fleet-sim run fleet_configs/demo.yaml

lint: install  ## ruff
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check fleet_protocol fleet_learning edge_agent edge_gateway cloud_controller simulators model_compiler tests bench

# Three processes for most tests on this 2-core machine: they wait on brokers, servers and
# subprocesses more than they compute (with three, a run used 157 % of the two cores and took 8.6 min
# where two took 9.9); the whole-fleet tests, whose gates judge latency, run afterwards on a
# machine to themselves. Files go to the workers in collection order, slow files first
# (tests/conftest.py).
test: install lint  ## lint, then the whole test suite
	$(VENV)/bin/pytest -n 3 --dist loadfile --no-loadscope-reorder -m "not solo"
	$(VENV)/bin/pytest -m solo

schemas: install  ## regenerate docs/protocol/*.schema.json from the models
	$(PY) -m fleet_protocol.schemas docs/protocol

bench: install  ## benchmarks, each printing one JSON object
	$(PY) bench/agent.py
	$(PY) bench/compiler.py
	$(PY) bench/controller.py
	$(PY) bench/gateway.py
	$(PY) bench/scale.py

clean:
	rm -rf $(VENV) .pytest_cache
