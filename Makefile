# Two commands from a fresh clone: `make run` (the quick pipeline on the built-in data)
# and `make test`. Each creates the virtual environment it needs.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install run test bench clean

$(BIN)/glasses: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# uv installs the same versions as pip in a third of the time (50 s against 155 s here); pip
	# does it if uv cannot (no uv wheel for this platform, a registry uv cannot reach). Compiled
	# bytecode as pip writes it: where PYTHONDONTWRITEBYTECODE is set, every process would compile
	# TensorFlow's sources again on import (20 s instead of 8).
	$(BIN)/python -m pip install -q uv && \
	  $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e '.[dev]' \
	  || $(BIN)/python -m pip install -q -e '.[dev]'
	touch $(BIN)/glasses

install: $(BIN)/glasses

run: install
	$(BIN)/glasses run $(ARGS)

test: install
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf work .pytest_cache
