# Entry points. Every target first runs tools/setup.sh, a quick no-op once the .venv is set up.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup data test test-fast lint shape demo reproduce

setup:
	bash tools/setup.sh

# The paper's data sets (games, microlens-50k) from the authors' repository, hashes checked.
data: setup
	$(PY) -m dealrec.data.fetch

# The full suite (CI runs it).
test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# Everything but the tests marked slow (those that load the embedded LLM or run a pipeline end to end).
test-fast: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check code tests bench tools

# Function and class lengths, the top level of the package, import directions.
shape: setup
	$(PY) tools/code_shape.py

demo: setup
	bash tools/demo.sh

reproduce: setup
	bash bench/reproduce_cpu.sh
