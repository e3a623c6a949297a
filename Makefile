# Two entry points for a fresh machine with Python 3.11+: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dask]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dw demo

test: $(STAMP)
	$(BIN)/ruff check .
	@# pytest exits 5 when it collected no test: that is a failure here, not a pass.
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) .dw runs
