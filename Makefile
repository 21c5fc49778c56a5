# Set-up and entry points. `make demo` and `make test` each install what they need first.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test lint

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps pycanon==1.3.6  # its pins (typer==0.23.2, numpy==2.0.2, pandas==2.3.3) conflict with flwr 1.42 (typer<0.21); it needs only numpy and pandas
	touch $@

demo: install
	$(BIN)/fedvault simulate

# Two workers, a test file each at a time: most end-to-end tests wait on processes, not on a core.
test: install
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
