# Entry points. Every target first runs tools/setup.sh, a quick no-op once the .venv is set up.
PY := .venv/bin/python
PYTEST_ARGS ?=

.PHONY: setup test lint demo reproduce

setup:
	bash tools/setup.sh

test: setup
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check code tests bench

demo: setup
	bash tools/demo.sh

reproduce: setup
	bash bench/reproduce_cpu.sh
