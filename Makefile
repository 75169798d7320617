# ehrbench: `make run` trains and scores EHRDiff on the built-in data; `make test` runs the test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: run test install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: a small CPU wheel here, the normal PyPI wheel elsewhere
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e ".[dev]"
	touch $@

run: install
	$(PY) run_benchmark.py model=ehrdiff

test: install
	$(PY) -m pytest -q -n auto  # one worker per core (pytest-xdist)

clean:
	rm -rf runs outputs multirun .pytest_cache
