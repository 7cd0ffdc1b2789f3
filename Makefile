# The README's commands: `make demo`, `make test` (`make test-fast`), and `make gpu` on a CUDA machine. Both create .venv first (pinned,
# offline but for the package registries); later runs reuse it.
PYTHON ?= python3
VENV ?= .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
RUN := PATH="$(BIN):$$PATH" DVC_NO_ANALYTICS=1

.PHONY: demo test test-fast gpu setup lock clean

demo: $(STAMP)
	$(RUN) snakemake --cores all

test: $(STAMP)
	$(RUN) pytest -q

# The edit-run loop: everything but the tests marked slow, property tests at 100 examples each
# (under a minute on two cores).
test-fast: $(STAMP)
	$(RUN) HYPOTHESIS_PROFILE=fast pytest -q -m "not slow"

# One CUDA machine, in order and resumably: fig1's SimuDy (paper, then paper_fast), the
# paper-scale benchmark (bench/gpu.yaml), fig5's SimuDy, then both experiments' baselines;
# summary in results/gpu/$(GPU_PROFILE)/summary.md.
GPU_PROFILE ?= paper
gpu: $(STAMP)
	$(RUN) simudy --log results/gpu/$(GPU_PROFILE)/gpu.log gpu --profile $(GPU_PROFILE)

setup: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

# requirements.lock: pyproject.toml's dependencies and its test extra, the whole tree pinned with sha256 hashes (CPython
# 3.11, Linux x86_64), compiled by pip-tools in a throwaway venv. It keeps the versions the lock already pins unless
# pyproject.toml needs others (`make lock LOCK_FLAGS=--upgrade` re-resolves all). torch resolves to the CPU wheel in
# TORCH_WHEELS (a folder, or a URL listing wheels such as https://download.pytorch.org/whl/cpu/torch/), so no nvidia-*
# package gets in: the lock is only replaced when none did. LOCK_NOTE heads the file.
LOCK_VENV ?= /tmp/simudy-lock-venv
TORCH_WHEELS ?= /opt/wheels
LOCK_FLAGS ?=
define LOCK_NOTE
# Every package that pyproject.toml's dependencies and its test extra need, each pinned with its sha256 hashes, for
# CPython 3.11 on Linux x86_64. Regenerate with `make lock` (see the Makefile); never edit by hand.
# Install (what `make setup` runs):  pip install --require-hashes -r requirements.lock && pip install --no-deps -e .
# torch is the CPU build, torch==2.13.0+cpu, so no nvidia-* CUDA package is in this lock. pip finds that wheel through
# the find-links folder of this project's machines (/opt/wheels); elsewhere take it from PyTorch's CPU index:
#   pip install --require-hashes --extra-index-url https://download.pytorch.org/whl/cpu -r requirements.lock
# CUDA: install as above, then swap in the CUDA build of the same release for your driver (cuXYZ as listed by
# pytorch.org; not hash-checked, and it brings its nvidia-* libraries):
#   pip install torch==2.13.0+cuXYZ --index-url https://download.pytorch.org/whl/cuXYZ
endef
export LOCK_NOTE
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/pip install -q --disable-pip-version-check pip-tools==7.6.2
	cp requirements.lock $(LOCK_VENV)/requirements.lock
	CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet --generate-hashes --allow-unsafe \
	  --strip-extras --extra test --find-links $(TORCH_WHEELS) --no-emit-find-links --no-emit-index-url $(LOCK_FLAGS) \
	  --output-file $(LOCK_VENV)/requirements.lock pyproject.toml
	! grep -n '^nvidia-' $(LOCK_VENV)/requirements.lock
	{ printf '%s\n' "$$LOCK_NOTE"; cat $(LOCK_VENV)/requirements.lock; } > requirements.lock

clean:
	rm -rf $(VENV) .snakemake
