# Two commands from a fresh clone: `make run` (the quick pipeline on the built-in data)
# and `make test`. Each creates the virtual environment it needs.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install run test bench clean

$(BIN)/glasses: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/glasses

install: $(BIN)/glasses

run: install
	$(BIN)/glasses run $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf work .pytest_cache
