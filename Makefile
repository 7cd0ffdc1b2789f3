# The README's commands: `make demo`, `make test`, and `make gpu` on a CUDA machine. Both create .venv first (pinned,
# offline but for the package registries); later runs reuse it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
RUN := PATH="$(BIN):$$PATH" DVC_NO_ANALYTICS=1

.PHONY: demo test gpu setup clean

demo: $(STAMP)
	$(RUN) snakemake --cores all

test: $(STAMP)
	$(RUN) pytest -q

# One CUDA machine, in order and resumably: fig1's SimuDy (paper, then paper_fast), the
# paper-scale benchmark (bench/gpu.yaml), fig5's SimuDy, then both experiments' baselines;
# summary in results/gpu/$(GPU_PROFILE)/summary.md.
GPU_PROFILE ?= paper
gpu: $(STAMP)
	$(RUN) simudy --log results/gpu/$(GPU_PROFILE)/gpu.log gpu --profile $(GPU_PROFILE)

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

clean:
	rm -rf $(VENV) .snakemake
