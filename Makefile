PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The engine's RocksDB (8.10.0, through rocksdict 0.3.22) for the test writer in tests/engine/.
ENGINE_VENV := .venv-engine
ENGINE_STAMP := $(ENGINE_VENV)/.installed
DATA_DIR ?= data
DEMO_DB := $(DATA_DIR)/rem-db
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

$(ENGINE_STAMP): tests/engine/requirements.txt
	$(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/pip install --quiet -r tests/engine/requirements.txt
	touch $(ENGINE_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m cli.demo --data-dir $(DATA_DIR)

test: $(STAMP) $(ENGINE_STAMP)
	$(BIN)/python -m tests.parallel

bench: $(STAMP) $(ENGINE_STAMP)
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) $(ENGINE_VENV) $(DATA_DIR) .pytest_cache
