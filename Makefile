# Two entry points: `make demo` and `make test`. Both create .venv when missing and install
# the project into it (the test extra for `make test`); re-install only when pyproject changes.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: demo test wheel-check install clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip setuptools wheel

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/splitc demo

# --dist loadfile: a file's tests share one worker, so its module and session fixtures (a trained
# run, an export: 15-40 s each) are built once, not once per worker.
test: $(VENV)/.installed-test
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 -m 'not slow and not ray' $(PYTEST_ARGS)
	$(PY) -m pytest -q -p no:xdist -m 'ray and not slow' $(PYTEST_ARGS)

# The built wheel (python -m build) in a fresh virtual environment outside the checkout, its
# dependencies from the package index: splitc demo --fast and the README's library block (a few minutes).
wheel-check: $(VENV)/.installed-test
	$(PY) -m pytest -q -p no:xdist -m slow tests/test_packaging.py $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
