# The two set-up commands of README.md: `make demo` runs the product, `make test` the tests.
# Each creates .venv and installs what it needs on first use.

PYTHON ?= python3
VENV := .venv

.PHONY: demo test test-fast clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/sdk-bridge demo

test: $(VENV)/.installed
	scripts/install-system-packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest

# The quick lane while working: everything but the tests marked slow (bridges or servers
# running end to end); CI runs them all (`make test`).
test-fast: $(VENV)/.installed
	scripts/install-system-packages
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -m "not slow"

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
