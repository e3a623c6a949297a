# Two entry points for a fresh machine with Python 3.11+: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test chaos lint install clean chromium

# Everything: every extra (lab, sandbox, review, dask) and the test tools.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[all,test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/dw demo

# The browser tests drive Debian's Chromium (Playwright's own download cannot be reached here).
chromium:
	@command -v chromium >/dev/null || { \
		echo "installing Debian's chromium for the browser tests (apt-get)"; \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
			--no-install-recommends chromium >/dev/null; }

test: $(STAMP) chromium
	$(BIN)/ruff check .
	$(BIN)/mypy
	@# pytest exits 5 when it collected no test: that is a failure here, not a pass.
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected" >&2; exit 1; fi; exit $$rc

# Not part of `make test`: every setup scenario under a random fault profile, its kernel killed at a
# random step, then run again (tests/chaos.py). A failed round prints the SEED to replay it; narrow
# it with SCENARIOS=a,b and ROWS=N.
chaos: $(STAMP)
	$(BIN)/python tests/chaos.py $(if $(SEED),--seed $(SEED)) $(if $(SCENARIOS),--scenarios $(SCENARIOS)) \
		$(if $(ROWS),--rows $(ROWS))

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .dw runs
