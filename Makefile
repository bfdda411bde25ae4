# Two commands for a newcomer: `make run` serves the example site, `make test` runs the suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: run test lint install migrate clean bench bench-quick screenshot

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: requirements.txt pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

migrate: install
	$(BIN)/python manage.py migrate --noinput

run: migrate
	$(BIN)/python -m agentapp.server -b $(HOST) -p $(PORT) project.asgi:application

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Refresh the README's screenshot on purpose: the browser test saves artifacts/chat.png (ignored), this copies it.
screenshot: install
	$(BIN)/python -m pytest -q tests/test_browser.py -k test_calculator_run_streams_text_and_a_tool_card
	cp artifacts/chat.png docs/chat.png

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

$(VENV)/.bench-installed: bench/requirements.txt $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -r bench/requirements.txt
	touch $@

# Full run (a few minutes, limit 15; needs PostgreSQL and Redis on 127.0.0.1): rewrites docs/benchmarks.md.
bench: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py --full

# Smoke run (< 2 min): fails if a benchmark cannot run or an answer comes back wrong; never judges speed.
bench-quick: $(VENV)/.bench-installed
	$(BIN)/python bench/run.py --quick

clean:
	rm -rf $(VENV) build dist *.egg-info db.sqlite3
