# Quick start: `make train` and `make test`. Each creates .venv when missing and installs the project.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ARGS    ?=
MODEL   ?= s7

DATA    ?= ../shared/data/cifar10-jpeg.tar.gz

.PHONY: train test install clean readme shipped-results

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip

# Reinstall only when pyproject.toml changes, so a second `make test` starts at once. setuptools' editable build
# warns, every time, that folders named like the package may shadow it; that is how an editable install works, so
# only that one warning is silenced.
$(STAMP): pyproject.toml | $(BIN)/python
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

# One process, as accelerate_config.yaml describes, started by Python itself: `accelerate launch` would run it as a
# child and answer any non-zero exit with a CalledProcessError traceback (or, with -q, exit 1 in place of the
# trainer's 2, 3 or 130). Several processes: torchrun or accelerate launch, as the README shows.
train: $(STAMP)
	$(BIN)/python trainer/main.py --model $(MODEL) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

readme: $(STAMP)
	$(BIN)/python scripts/build_readme.py

# results/explain, results/export and results/robustness for the shipped weights, then the README (slow on a CPU:
# the robustness of three nets on 10,000 test images; rerun whenever models/weights/ changes).
shipped-results: $(STAMP)
	$(BIN)/python benchmarks/shipped_nets.py --data $(DATA) --data-dir data
	$(BIN)/python scripts/build_readme.py
