# The README's two commands: `make demo` and `make test`. Both create .venv first (pinned,
# offline but for the package registries); later runs reuse it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
RUN := PATH="$(BIN):$$PATH" DVC_NO_ANALYTICS=1

.PHONY: demo test setup clean

demo: $(STAMP)
	$(RUN) snakemake --cores all

test: $(STAMP)
	$(RUN) pytest -q

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

clean:
	rm -rf $(VENV) .snakemake
